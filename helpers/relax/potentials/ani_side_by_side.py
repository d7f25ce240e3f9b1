"""Energies, forces and stresses of many crystals in one torchani forward + backward pass.

One crystal of 30 atoms keeps a CPU core busy with Python and small-matrix overhead more than
with arithmetic (measured: 24 ms per call at 30 atoms, 50 ms at 116). Here the crystals of a
batch are laid side by side as one set of atoms that never see each other: each crystal has its
own Verlet pair list (ASE's neighbour search with a skin, rebuilt only when atoms or the cell
moved enough to matter) and its own strain tensor, so one pass gives every crystal's energy,
forces and virial. The 8 ensemble members run as one batched matrix product (torchani's
``BmmEnsemble``). Same model, same float64 numbers as :class:`OnePassANICalculator` (tested to
1e-8 eV).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import ase.units
import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import primitive_neighbor_list
from ase.stress import full_3x3_to_voigt_6_stress
from torchani.neighbors import Neighbors

#: extra distance kept in each pair list; a list is reused until something moved by half of it
DEFAULT_SKIN = 1.0


@dataclass
class PairList:
    """Candidate pairs of one crystal within cutoff + skin, and the geometry they were built at."""

    first: np.ndarray  # (P,) atom index i
    second: np.ndarray  # (P,) atom index j
    shifts: np.ndarray  # (P, 3) integer image of j
    positions: np.ndarray
    cell: np.ndarray


def build_pairs(atoms: Atoms, cutoff: float, skin: float) -> PairList:
    """Each pair once (i < j, or i == j with the image on one side), any cell shape or size."""
    pos = atoms.get_positions()
    cell = np.asarray(atoms.cell)
    i, j, shift = primitive_neighbor_list("ijS", atoms.pbc, cell, pos, cutoff + skin, self_interaction=False)
    sx, sy, sz = shift.T
    first_image = (sx > 0) | ((sx == 0) & ((sy > 0) | ((sy == 0) & (sz > 0))))
    keep = (i < j) | ((i == j) & first_image)
    return PairList(i[keep], j[keep], shift[keep], pos.copy(), cell.copy())


def pairs_still_valid(pairs: PairList, atoms: Atoms, cutoff: float, skin: float) -> bool:
    """True while no pair outside the list can have come within ``cutoff``.

    Writing the current geometry as the reference one deformed by ``F`` (cell = cell_ref · F)
    plus a non-affine displacement ``u`` per atom, a pair's distance shrinks at most to
    ``σ_min(F) · d_ref − 2 max|u|``; pairs were listed up to ``cutoff + skin``.
    """
    cell = np.asarray(atoms.cell)
    deformation = np.linalg.solve(pairs.cell, cell) if atoms.pbc.all() else np.eye(3)
    u = atoms.get_positions() - pairs.positions @ deformation
    shrink = np.linalg.svd(deformation, compute_uv=False).min()
    worst = np.sqrt((u**2).sum(axis=1).max()) if len(u) else 0.0
    return bool(shrink * (cutoff + skin) - 2 * worst > cutoff)


class SideBySideANI:
    """Evaluate a torchani ANI model on a list of crystals at once (eV, eV/Å, eV/Å³ Voigt).

    Call :meth:`compute` with the same ``keys`` across steps so each crystal's pair list is
    reused; :meth:`forget` drops a finished crystal's list.
    """

    def __init__(self, model, skin: float = DEFAULT_SKIN, bmm: bool = True, dtype: torch.dtype | None = None) -> None:
        model = copy.deepcopy(model)
        if dtype is not None:
            model = model.to(dtype=dtype)
        if bmm:
            model = _bmm_ensemble(model)
        self.model = model
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.cutoff = float(model.cutoff)
        self.skin = skin
        self._pairs: dict[object, PairList] = {}
        self.n_calls = 0
        self.n_rebuilds = 0
        self.time_pairs = 0.0  # s spent building and checking pair lists
        self.time_model = 0.0  # s spent in the model's forward and backward pass

    def forget(self, key) -> None:
        self._pairs.pop(key, None)

    def pairs(self, key, atoms: Atoms) -> PairList:
        cached = self._pairs.get(key)
        if cached is None or len(cached.positions) != len(atoms) or not pairs_still_valid(
                cached, atoms, self.cutoff, self.skin):
            cached = self._pairs[key] = build_pairs(atoms, self.cutoff, self.skin)
            self.n_rebuilds += 1
        return cached

    def compute(self, atoms_list: list[Atoms], keys: list | None = None) -> list[dict]:
        """One dict per crystal: ``energy``, ``free_energy``, ``forces``, ``stress``, ``closest_pair`` (Å)."""
        keys = list(range(len(atoms_list))) if keys is None else keys
        for atoms in atoms_list:
            if not atoms.pbc.all():
                raise ValueError("SideBySideANI handles fully periodic crystals only")
        dtype, device = self.dtype, self.device
        counts = [len(a) for a in atoms_list]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        start = time.perf_counter()
        lists = [self.pairs(k, a) for k, a in zip(keys, atoms_list)]
        self.time_pairs += time.perf_counter() - start
        first = np.concatenate([pl.first + off for pl, off in zip(lists, offsets)])
        second = np.concatenate([pl.second + off for pl, off in zip(lists, offsets)])
        pair_crystal = np.concatenate([np.full(len(pl.first), k) for k, pl in enumerate(lists)])
        image = np.concatenate([pl.shifts @ np.asarray(a.cell) for pl, a in zip(lists, atoms_list)])

        positions = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dtype, device=device)
        positions.requires_grad_(True)
        strain = torch.zeros((len(atoms_list), 3, 3), dtype=dtype, device=device, requires_grad=True)
        deformation = torch.eye(3, dtype=dtype, device=device) + 0.5 * (strain + strain.transpose(1, 2))
        idx = torch.as_tensor(np.stack([first, second]), dtype=torch.long, device=device)
        crystal_of_pair = torch.as_tensor(pair_crystal, dtype=torch.long, device=device)
        # torchani's convention: diff = r_first - (r_second + image)
        diff0 = positions.index_select(0, idx[0]) - positions.index_select(0, idx[1]) - torch.as_tensor(
            image, dtype=dtype, device=device)
        diff = torch.bmm(diff0.unsqueeze(1), deformation.index_select(0, crystal_of_pair)).squeeze(1)
        neighbors = Neighbors(idx, diff.norm(dim=1), diff)

        start = time.perf_counter()
        numbers = torch.as_tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.long, device=device)
        elem_idxs = self.model.species_converter(numbers.unsqueeze(0))
        atomic = self.model.compute_from_neighbors(elem_idxs, positions.unsqueeze(0), neighbors, atomic=True).energies
        crystal_of_atom = torch.as_tensor(np.repeat(np.arange(len(atoms_list)), counts), device=device)
        energies = torch.zeros(len(atoms_list), dtype=dtype, device=device).index_add(
            0, crystal_of_atom, atomic.view(-1)) * ase.units.Hartree
        grad_pos, grad_strain = torch.autograd.grad(energies.sum(), [positions, strain])
        self.n_calls += 1
        self.time_model += time.perf_counter() - start

        with torch.no_grad():  # the closest pair per crystal, for the fused-atom guard, at no extra cost
            closest = torch.full((len(atoms_list),), float("inf"), dtype=dtype, device=device).scatter_reduce(
                0, crystal_of_pair, neighbors.distances, reduce="amin").cpu().numpy()
        forces = -grad_pos.detach().cpu().numpy()
        virials = grad_strain.detach().cpu().numpy()
        results = []
        for k, atoms in enumerate(atoms_list):
            e = float(energies[k].detach())
            results.append({"energy": e, "free_energy": e, "forces": forces[offsets[k]:offsets[k + 1]],
                            "stress": full_3x3_to_voigt_6_stress(virials[k] / atoms.get_volume()),
                            "closest_pair": float(closest[k])})
        return results


def _bmm_ensemble(model):
    """Fuse the ensemble's members into batched matrix products (same numbers, fewer ops).

    torchani's ``to_infer_model`` wraps its calls in CUDA profiling markers unless scripted,
    so the fused networks are TorchScript-compiled (works on a CPU-only torch).
    """
    from torchani.nn import Ensemble

    networks = model.potentials["nnp"].neural_networks
    if not isinstance(networks, Ensemble):  # a single member: nothing to fuse
        return model
    model.to_infer_model()
    nnp = model.potentials["nnp"]
    nnp.neural_networks = torch.jit.script(nnp.neural_networks)
    return model
