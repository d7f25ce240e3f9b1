"""Every place this project reaches into another library's internals, in one adapter module.

Each item names the library version it was written for (:data:`WRITTEN_FOR`); ``pyproject.toml`` caps
those libraries below their next release, and ``tests/test_internals.py`` fails loudly, naming the item,
when an installed release moved one. Nothing else in :mod:`helpers` may import a private name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Any

#: library -> the release these adapters were written and tested against
WRITTEN_FOR: dict[str, str] = {"ase": "3.29.0", "torchani": "2.9.0", "ase-db-backends": "0.11.0",
                               "nglview": "3.1.4", "gfnff": "0.3.1", "aimnet": "0.2.6",
                               "sevenn": "0.13.0"}


def moved(library: str, what: str) -> AttributeError:
    """The error an adapter raises when an installed release moved ``what``: names the installed release of
    ``library``, the one the adapter was written for, and this module."""
    return AttributeError(f"{library} {version(library)}: {what} (written for {library} {WRITTEN_FOR[library]}); "
                          "see helpers/internals.py")


# --- ASE --------------------------------------------------------------------------------------------------

def bfgs_method_class() -> type:
    """ASE's BFGS step object (``ase._4.optimize.bfgs.BFGSMethod``): the fast path overrides its
    ``compute_step`` with a Cholesky solve. There is no public hook for the step."""
    from ase._4.optimize.bfgs import BFGSMethod

    return BFGSMethod


def set_cell_filter_algebra(cell_filter: Any, logm: Any, expm_frechet: Any) -> None:
    """Give a FrechetCellFilter faster, equally exact matrix functions (its ``_utility`` object holds
    them; ASE exposes no parameter for this)."""
    utility = cell_filter._utility
    for name in ("logm", "expm_frechet"):
        if not hasattr(utility, name):
            raise moved("ase", f"FrechetCellFilter._utility has no {name!r}")
    utility.logm = logm
    utility.expm_frechet = expm_frechet


def capture_optimizer_state(optimizer: Any) -> Callable[[], Any]:
    """Keep an ASE optimizer's state in memory after each step; returns a getter (None before step 1).

    ASE optimizers hand their whole state to ``dump`` after every step (BFGS: Hessian, last positions,
    forces, maxstep; LBFGS, FIRE: their own), for a JSON ``restart`` file written every step. A JSON
    Hessian of a 1000-atom crystal is ~250 MB, so we take the state here and save it when we choose.
    """
    last: dict[str, Any] = {}
    if not callable(getattr(optimizer, "dump", None)) or not callable(getattr(optimizer, "read", None)):
        raise moved("ase", f"{type(optimizer).__name__} has no dump/read restart protocol")
    optimizer.dump = lambda data: last.__setitem__("state", data)
    return lambda: last.get("state")


def restore_optimizer_state(optimizer: Any, state: Any) -> None:
    """Give an optimizer a state taken by :func:`capture_optimizer_state`, through its own ``read``
    (what its ``restart`` file would do): it then steps exactly as the optimizer that saved it."""
    optimizer.load = lambda: state
    try:
        optimizer.read()
    finally:
        del optimizer.load


def initialize_ase_db(db: Any, connection: Any) -> None:
    """Create an ASE database's tables on ``connection`` (``Database._initialize``): called inside a
    transaction of ours so a kill cannot leave half a schema, and under a lock for PostgreSQL."""
    db._initialize(connection)


def patch_postgres_backend() -> None:
    """Make ase-db-backends 0.11's PostgreSQL backend safe for concurrent writers.

    As shipped, the id of a new row is read from the sequence's global ``last_value`` (another process's
    insert in between attaches species/keys to the wrong row), and its connection wrapper has no
    ``rollback`` (any error inside ``with db:`` is masked by an AttributeError).
    """
    from ase_db_backends import postgresql as pg

    if not hasattr(pg.Connection, "rollback"):
        pg.Connection.rollback = lambda self: self.con.rollback()
    pg.PostgreSQLDatabase.get_last_id = _session_last_id


def _session_last_id(self, cur) -> int:
    """Id of the row this session inserted last (``currval`` is per session, ``last_value`` is not)."""
    cur.execute("SELECT currval('systems_id_seq')")
    return int(cur.fetchone()[0])


def delete_rows(db: Any, ids: list[int]) -> None:
    """Delete rows inside the caller's open transaction (``Database._delete``): ASE's public ``delete``
    commits and VACUUMs the whole file on every call, which breaks a transaction and costs seconds."""
    from ase.db.sqlite import all_tables

    if not ids:
        return
    with db.managed_connection() as con:
        db._delete(con.cursor(), ids, tables=db._get_external_table_names() + all_tables[::-1])


# --- torchani ---------------------------------------------------------------------------------------------

def torchani_neighborlist(name: str) -> Any:
    """torchani's neighbour list by name (``"all_pairs"``, ``"cell_list"``, ``"adaptive"``), as its model
    factories build it (``torchani.neighbors._parse_neighborlist``)."""
    from torchani.neighbors import _parse_neighborlist

    return _parse_neighborlist(name)


# --- nglview ----------------------------------------------------------------------------------------------

def ngl_component_ids(view: Any) -> list[str]:
    """Ids of the components an nglview widget shows (``NGLWidget._ngl_component_ids``), to clear it."""
    return list(view._ngl_component_ids)


# --- gfnff ------------------------------------------------------------------------------------------------

def gfnff_topology_per_structure() -> type:
    """gfnff's ASE calculator (``gfnff.ase_calculator.GFNFF``) that sets up its bond topology again for every
    new Atoms object, overriding its private ``_needs_reinit`` (which rebuilds only when the atomic numbers,
    PBC or parameters change). Why: see ``helpers.relax.potentials.factories``."""
    import weakref

    from ase.calculators.calculator import all_changes
    from gfnff.ase_calculator import GFNFF

    if not callable(getattr(GFNFF, "_needs_reinit", None)):
        raise moved("gfnff", "GFNFF._needs_reinit is gone")

    class TopologyPerStructureGFNFF(GFNFF):
        _owner = None
        _new_structure = True
        n_calls = 0  # the relax engine's force_calls

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            self.n_calls += 1
            if atoms is not None and (self._owner is None or self._owner() is not atoms):
                self._owner = weakref.ref(atoms)
                self._new_structure = True
            super().calculate(atoms, properties, system_changes)

        def _needs_reinit(self, atoms, system_changes) -> bool:
            if self._new_structure:
                self._new_structure = False
                return True
            return super()._needs_reinit(atoms, system_changes)

    return TopologyPerStructureGFNFF


# --- sevenn -----------------------------------------------------------------------------------------------

#: the layers of a SevenNet model that run compiled whole: the linear and gate layers and the edge embedding;
#: the scaling, the energy sum and the force/stress output (``torch.autograd.grad`` of the energy) stay eager,
#: so the gradients are autograd's through the compiled layers' own compiled backward
SEVENNET_COMPILED_LAYERS = ("EdgeEmbedding", "IrrepsLinear", "SelfConnectionLinearIntro", "SelfConnectionOutro",
                            "EquivariantGate")
#: of each ``IrrepsConvolution``, these parts run compiled: the per-edge tensor product (e3nn) and the radial
#: network of its weights. Its gather and scatter of the messages stay eager: compiled whole (torch 2.13,
#: inductor, CPU) the layer corrupted the heap on dry ice (COD 1010060; "free(): invalid next size")
SEVENNET_CONVOLUTION_PARTS = ("convolution", "weight_nn")
#: torch.compile keeps this many compiled versions per layer type (dynamo's default, 8, is fewer than a SevenNet
#: model's IrrepsLinear layers of different widths: the ninth would run eager)
SEVENNET_RECOMPILE_LIMIT = 64


def sevennet_compile_layers(calculator: Any) -> int:
    """Run the network of a SevenNet calculator's model through ``torch.compile`` (inductor, dynamic shapes: a new
    crystal or a changed neighbour list does not recompile): the layers named in :data:`SEVENNET_COMPILED_LAYERS`
    and the :data:`SEVENNET_CONVOLUTION_PARTS` of each convolution; returns how many modules were compiled. The
    model (``calculator.model``, an ``AtomGraphSequential``: an ``nn.Sequential`` of named layers run in order)
    has no option for this; its layer classes are sevenn's own (``sevenn.nn``)."""
    import torch
    import torch._dynamo
    from sevenn.nn.sequential import AtomGraphSequential

    model = getattr(calculator, "model", None)
    if not isinstance(model, AtomGraphSequential):
        raise moved("sevenn", f"SevenNetCalculator.model is {type(model).__name__}, not an AtomGraphSequential")
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), SEVENNET_RECOMPILE_LIMIT))
    compiled = 0
    for name, layer in list(model.named_children()):
        kind = type(layer).__name__
        if kind in SEVENNET_COMPILED_LAYERS:
            setattr(model, name, torch.compile(layer, dynamic=True))
            compiled += 1
        elif kind == "IrrepsConvolution":
            for part in SEVENNET_CONVOLUTION_PARTS:
                if not isinstance(getattr(layer, part, None), torch.nn.Module):
                    raise moved("sevenn", f"IrrepsConvolution has no module {part!r}")
                setattr(layer, part, torch.compile(getattr(layer, part), dynamic=True))
                compiled += 1
    if not compiled:
        raise moved("sevenn", f"no layer of {', '.join(SEVENNET_COMPILED_LAYERS)} in the model")
    return compiled


# --- aimnet -----------------------------------------------------------------------------------------------

def aimnet_convert_v1_member(member: Any, config: str, output: str) -> None:
    """Write one member of an old AIMNet2 TorchScript ensemble as an aimnet v2 ``.pt`` file with aimnet's own
    ``load_v1_model``. That function reads the file itself and expects a ``cutoff`` attribute, which the old
    ensembles' members lack: the member (``Forces.module``, an ``AIMNet2``) is handed over in memory
    (``torch.jit.load`` patched for the call) with the cutoff of its AEV (``aev.rc_s``)."""
    from unittest import mock

    import torch
    from aimnet.models.utils import load_v1_model

    core = member.module
    core.cutoff = float(core.aev.rc_s)
    with mock.patch.object(torch.jit, "load", lambda *a, **k: core):
        load_v1_model("in-memory", config, output_path=output, verbose=False)


def aimnet_charges_per_fragment(model: Any) -> None:
    """Make an AIMNet2 model's charge equilibration (NQE) conserve the charge of each fragment, not of the whole
    structure: afterwards ``model.codani_fragments = (index, charges)`` (atom -> fragment as a long tensor;
    each fragment's total charge) applies to every call until set back to None (the model's own behaviour).

    AIMNet2 redistributes the charge deficit ``Q - sum(q)`` over the atoms of each *system* (``mol_idx``); a
    whole crystal cell is one system, so charge may flow between molecules. ``mol_idx`` cannot simply be set
    per molecule: it also separates systems for the neighbour lists (no interaction between molecules).
    The model's private ``_update_q`` (which calls ``ops.nse`` with ``data``) is wrapped: during the call
    ``data``'s ``mol_idx``/``_num_mol``/``charge`` name the fragments, then the originals return. Works on
    the packed layout (one structure, the padding atom last; what aimnet uses on CPU).
    """
    import types

    import torch

    original = getattr(type(model), "_update_q", None)
    if original is None:
        raise moved("aimnet", f"{type(model).__name__} has no _update_q")

    def _update_q(self, data, x, delta_q=True):
        fragments = getattr(self, "codani_fragments", None)
        if fragments is None:
            return original(self, data, x, delta_q)
        index, charges = fragments
        mol_idx = data["mol_idx"]
        if int(data["_nb_mode"]) != 1 or mol_idx.shape[0] != index.shape[0] + 1 or int(mol_idx.max()) != 0:
            raise ValueError("per-fragment charges need one structure on aimnet's packed layout "
                             f"({index.shape[0]} atoms + padding; got mol_idx of {mol_idx.shape[0]})")
        saved = {k: data[k] for k in ("mol_idx", "_num_mol", "charge")}
        data["mol_idx"] = torch.cat([index, index[-1:]]).to(mol_idx.device, mol_idx.dtype)
        data["_num_mol"] = torch.tensor(int(charges.shape[0]))
        data["charge"] = charges.to(saved["charge"].device, saved["charge"].dtype).reshape(-1, 1)
        try:
            return original(self, data, x, delta_q)
        finally:
            delta = data.get("_delta_Q")
            data.update(saved)
            if delta is not None:  # a training-loss term, per fragment here: keep it per structure
                data["_delta_Q"] = delta.sum(0, keepdim=True)

    model.codani_fragments = None
    model._update_q = types.MethodType(_update_q, model)
