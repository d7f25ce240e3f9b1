"""Load ANI models: offline from NeuroChem files (``ANI_MODEL_DIR``) or torchani's download.

torchani 2.9 fetches state dicts from a model hub on first use, which fails offline.
The original NeuroChem files (``ani-1x_8x.info`` + ``ani-1x_8x/`` ...) hold the same
weights; when ``ANI_MODEL_DIR`` points at a folder of them we build the models from there.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path

import torch
import torchani
from torchani import neurochem
from torchani.neighbors import AllPairs, CellList, Neighborlist

from helpers.vocabulary import ANI_MODEL_DIR_ENV

MODEL_DIR_ENV = ANI_MODEL_DIR_ENV

#: model name -> (NeuroChem info file stem, torchani factory name)
ANI_MODELS: dict[str, tuple[str, str]] = {
    "ani1x": ("ani-1x_8x", "ANI1x"),
    "ani1ccx": ("ani-1ccx_8x", "ANI1ccx"),
    "ani2x": ("ani-2x_8x", "ANI2x"),
}


class ModelFilesError(FileNotFoundError):
    """The model directory does not hold the NeuroChem files a model needs."""


class PerCellNeighborlist(Neighborlist):
    """Cell list when every cell width exceeds the cutoff and the cell is large, else all pairs.

    torchani's ``cell_list`` raises for cells thinner than the cutoff and ``adaptive`` picks
    by atom count only, so thin cells with many atoms fail. This chooses per call: exact
    for every cell, linear-scaling where it is safe.
    """

    def __init__(self, min_atoms: int = 100) -> None:
        super().__init__()
        self._all_pairs = AllPairs()
        self._cell_list = CellList()
        self.min_atoms = min_atoms

    def forward(self, cutoff, species, coords, cell=None, pbc=None):  # noqa: D102
        if cell is not None and pbc is not None and bool(pbc.all()) and coords.shape[1] >= self.min_atoms:
            if bool((cell_widths(cell.detach()) > 2 * cutoff).all()):
                return self._cell_list(cutoff, species, coords, cell, pbc)
        return self._all_pairs(cutoff, species, coords, cell, pbc)


def cell_widths(cell: torch.Tensor) -> torch.Tensor:
    """Perpendicular widths of a cell (rows are lattice vectors), in the cell's units."""
    volume = torch.linalg.det(cell).abs()
    cross = torch.stack(
        [torch.linalg.cross(cell[1], cell[2]), torch.linalg.cross(cell[2], cell[0]),
         torch.linalg.cross(cell[0], cell[1])]
    )
    return volume / cross.norm(dim=1)


def model_dir() -> Path | None:
    """The NeuroChem model folder from ``ANI_MODEL_DIR``, or None to use torchani's download."""
    value = os.environ.get(MODEL_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _neurochem_info(directory: Path, stem: str) -> neurochem.NeurochemInfo:
    """Parse a NeuroChem ``.info`` file, resolving paths against its own folder.

    ``NeurochemInfo.from_info_file`` resolves them against ``$TORCHANI_DATA_DIR`` instead.
    """
    info_file = directory / f"{stem}.info"
    if not directory.is_dir():
        raise ModelFilesError(f"{MODEL_DIR_ENV}={directory} does not exist; {_fix_hint(stem)}")
    if not info_file.is_file():
        raise ModelFilesError(
            f"{MODEL_DIR_ENV}={directory} has no {info_file.name}; expected the NeuroChem "
            f"files of torchani's model zoo ({stem}.info and {stem}/); {_fix_hint(stem)}"
        )
    const, sae, prefix, size = [line.strip() for line in info_file.read_text().splitlines()[:4]]
    info = neurochem.NeurochemInfo(
        sae=directory / sae, const=directory / const,
        ensemble_prefix=directory / prefix, ensemble_size=int(size),
    )
    missing = [p for p in (info.sae, info.const) if not p.is_file()]
    missing += [p for i in range(info.ensemble_size)
                if not (p := neurochem.model_dir_from_prefix(info.ensemble_prefix, i)).is_dir()]
    if missing:
        raise ModelFilesError(f"NeuroChem files missing under {directory}: "
                              + ", ".join(str(m) for m in missing) + f"; {_fix_hint(stem)}")
    empty = [p for i in range(info.ensemble_size)
             if not any((p := neurochem.model_dir_from_prefix(info.ensemble_prefix, i)).glob("ANN-*.nnf"))]
    if empty:
        raise ModelFilesError("no network weights (ANN-<element>.nnf and *.wparam files) in "
                              + ", ".join(str(p) for p in empty) + f"; {_fix_hint(stem)}")
    return info


def _fix_hint(stem: str) -> str:
    return (f"point {MODEL_DIR_ENV} at the folder holding {stem}.info and {stem}/ with its weights "
            f"(e.g. ../shared/models/ani-neurochem), or unset it to let torchani download them")


@lru_cache(maxsize=8)
def _load_cached(name: str, directory: str | None, model_index: int | None) -> torchani.arch.ANI:
    stem, factory = ANI_MODELS[name]
    if directory is None:
        return getattr(torchani.models, factory)(model_index=model_index)
    info = _neurochem_info(Path(directory), stem)
    try:
        aev, networks, sae, symbols = neurochem.modules_from_info(info, model_index)
    except FileNotFoundError as exc:  # a weight file of one element/member is missing
        raise ModelFilesError(f"model weights incomplete in {directory}: {exc.filename} is missing; "
                              f"{_fix_hint(stem)}") from exc
    model = torchani.arch.ANI(symbols, aev, networks, sae, periodic_table_index=True)
    model.requires_grad_(False)
    return model


def load_ani(
    name: str,
    dtype: torch.dtype = torch.float64,
    neighborlist: str | Neighborlist = "per_cell",
    model_index: int | None = None,
) -> torchani.arch.ANI:
    """Return the ANI model ``name`` (``ani1x``, ``ani1ccx``, ``ani2x``) in ``dtype``.

    ``model_index`` picks one ensemble member (None: the full 8-member ensemble).
    ``neighborlist``: ``"per_cell"`` (default, see :class:`PerCellNeighborlist`),
    ``"all_pairs"``, ``"cell_list"``, or a torchani Neighborlist.
    """
    if name not in ANI_MODELS:
        raise KeyError(f"unknown ANI model {name!r}; known: {', '.join(ANI_MODELS)}")
    directory = model_dir()
    base = _load_cached(name, str(directory) if directory else None, model_index)
    model = copy.deepcopy(base).to(dtype=dtype)  # the cached model stays untouched
    set_neighborlist(model, neighborlist)
    return model


def set_neighborlist(model: torchani.arch.ANI, neighborlist: str | Neighborlist) -> None:
    """Swap the neighbour list of ``model`` in place."""
    if isinstance(neighborlist, str):
        if neighborlist == "per_cell":
            neighborlist = PerCellNeighborlist()
        else:
            from helpers.internals import torchani_neighborlist

            neighborlist = torchani_neighborlist(neighborlist)
    model.neighborlist = neighborlist
    model.potentials["nnp"].aev_computer.neighborlist = neighborlist
