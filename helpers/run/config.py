"""What one campaign runs and where it writes: one :class:`CampaignConfig`, loadable from a YAML file.

``demo``, ``campaign`` and ``results`` are presets of it (:func:`demo_config`, :func:`campaign_config`,
:func:`results_config`); :func:`helpers.run.campaign.run_campaign` runs any of them. The work folder's
layout (``raw.db``, ``clean.db``, ``rejects.db``, ``relaxed_<potential>.db`` and its per-batch shards,
``executed/``, ``analysis/``: :data:`helpers.store.paths.WORK_LAYOUT`) is applied here, with the config's
overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.process.parallel import worker_count
from helpers.store.paths import project_root, resolve, work_layout
from helpers.vocabulary import DATA_ENV, SAMPLE_SETS

#: small, clean CHNO COD entries (29-48 atoms per cell) that relax in seconds: the demo input
DEMO_COD_IDS = (2000642, 2007300, 4021477, 2100348)
STUDY_POTENTIALS = ("ani1x", "ani1ccx")
#: extra attempts for a failed relax job by default (``campaign --retries``, the results campaign)
JOB_RETRIES = 2
#: the stages of a campaign, in the order they run
STAGES = ("fetch", "filter", "relax", "minima", "analysis", "lattice", "report")
#: stages a preset runs only when asked (``--stages``): the minimum check relaxes every converged crystal again
OPT_IN_STAGES = ("minima",)
#: folders of ../shared/data the results are computed on (real COD entries; cod/ has broken ones too)
RESULT_FOLDERS = ("cod", "cod-sample")
#: the largest crystal a non-xTB potential relaxes in the results campaign (issue 35: every one of them on every
#: clean crystal of up to 150 atoms, so the fair table rests on the sample, not on its smallest cells); measured
#: here at the study's fmax, one core: SevenNet-0 + D3 ~0.3-0.4 s per call at 24 atoms, 2 s at 84 (300-600 steps
#: per crystal), CHGNet + D3 about the same, SevenNet-l3i5 ~3x, AIMNet2 and GFN-FF a few s per crystal of 7-20.
GRAPH_MAX_ATOMS = 150
#: the largest crystal (atoms it evaluates: a Γ-point code's supercell) each potential relaxes in the results
#: campaign. GFN1-/GFN2-xTB evaluate every crystal on its ≥ 8 Å supercell (78-96 atoms for the 8 cheapest;
#: helpers.relax.potentials.supercell): GFN1-xTB 1-2 s per call there (8 crystals of ≤ 100), GFN2-xTB ~12 s
#: idle, ~1 core-hour per relaxation (the 3 of ≤ 84): their crystal benchmark is the lattice energy. GFN-FF
#: evaluates its ≥ 8 Å supercell too (its card says why): ≤ 500 atoms there holds every clean cell of ≤ 150
#: atoms (the largest: 496) and some larger ones. Unlisted potentials (ANI and ANI + D3) relax every clean
#: structure. Override per run: ``--max-atoms name=N``.
GFNFF_MAX_ATOMS = 500
RESULTS_MAX_ATOMS: dict[str, int] = {"gfn2-xtb": 84, "gfn1-xtb": 100, "gfn-ff": GFNFF_MAX_ATOMS, **{
    name: GRAPH_MAX_ATOMS for name in ("sevennet0-d3", "sevennet-l3i5-d3", "sevennet-mf0-r2scan-d3", "chgnet-d3",
                                       "aimnet2")}}


def registered_potentials(names: Sequence[str] | None = None) -> list[str]:
    """``names`` checked against the potential registry (None or empty: every registered potential)."""
    from helpers.relax.potentials.registry import REGISTRY

    if not names:
        return list(REGISTRY)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown potentials {unknown}; registered: {', '.join(sorted(REGISTRY))}")
    return list(names)


@dataclass
class CampaignConfig:
    """One campaign: its inputs, its (potential x batch) relax jobs, how they run, which stages run."""

    #: the campaign's folder: databases, executed notebooks, analysis, stage times, the lock
    work_dir: str = "data"
    stages: list[str] = field(default_factory=lambda: ["relax"])
    #: fetch: folders or URLs of CIFs (empty: $COD_SOURCE or the COD web service), which entries, how many
    sources: list[str] = field(default_factory=list)
    cod_ids: list[int] | None = None
    limit: int | None = None
    potentials: list[str] = field(default_factory=lambda: list(STUDY_POTENTIALS))
    #: potential -> largest structure (atoms) it relaxes; absent: the notebook's default (every structure)
    max_atoms: dict[str, int | None] = field(default_factory=dict)
    #: only this sample set of the clean structures ("science": the unaltered COD entries; "altered", "ice");
    #: None: every one
    sample: str | None = None
    #: relax this sample set with every potential first, then the rest (the results campaign: "science", so an
    #: interrupted campaign has its verdict's crystals first); None: one pass
    sample_first: str | None = None
    #: batches per potential (0: one per core)
    n_batches: int = 1
    #: extra 03_relax parameters of every job (``fmax``, ``n_threads``, ...); ``n_threads`` unset: the executor's
    relax_parameters: dict[str, Any] = field(default_factory=dict)
    #: extra 05_lattice_energy parameters of the ``lattice`` stage (e.g. ``crystals``, ``fmax`` for a trial)
    lattice_parameters: dict[str, Any] = field(default_factory=dict)
    docs_dir: str = "docs"
    #: None: a pool of processes here; else Dask at local, tcp://host:port, a scheduler file, slurm or pbs
    scheduler: str | None = None
    n_workers: int | None = None  # Dask workers (local) or batch jobs (slurm/pbs)
    threads_per_worker: int = 1  # Dask: cores (torch threads) per worker
    retries: int = JOB_RETRIES  # extra attempts for a failed relax job (it resumes)
    max_parallel: int | None = None  # relax jobs at once here (default: one per core)
    wait: bool = False  # another run holds the work dir: wait for it (default: say who, stop)
    #: the layout's databases and log folder elsewhere than in ``work_dir`` (paths or database URLs)
    clean_db: str | None = None
    out_db: str | None = None
    log_dir: str | None = None

    def __post_init__(self) -> None:
        self.potentials = registered_potentials(self.potentials)
        self.stages, self.sources = list(self.stages), [str(s) for s in self.sources]  # lists: plain YAML
        self.cod_ids = None if self.cod_ids is None else [int(i) for i in self.cod_ids]
        self.work_dir, self.docs_dir = str(self.work_dir), str(self.docs_dir)
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
        extra = sorted(set(self.max_atoms) - set(self.potentials))
        if extra:
            raise KeyError(f"max_atoms names potentials not in this run: {extra}")
        for name in ("sample", "sample_first"):
            if getattr(self, name) not in (None, *SAMPLE_SETS):
                raise ValueError(f"{name} must be one of {', '.join(SAMPLE_SETS)} or none, got {getattr(self, name)!r}")

    # -- the one layout ------------------------------------------------------------------------------------
    @property
    def work_path(self) -> str:
        """``work_dir`` made absolute (relative paths are taken from the project root)."""
        return resolve(self.work_dir)

    @property
    def dbs(self) -> dict[str, str]:
        """raw_db, clean_db, rejects_db and out_db (``relaxed_{potential}.db``; per-batch shards beside it)."""
        layout = work_layout(self.work_path)
        return {"raw_db": layout["raw_db"], "clean_db": resolve(self.clean_db or layout["clean_db"]),
                "rejects_db": layout["rejects_db"], "out_db": resolve(self.out_db or layout["out_db"])}

    @property
    def executed_dir(self) -> str:
        """Where every executed notebook is kept (the log of its run)."""
        return resolve(self.log_dir or work_layout(self.work_path)["executed"])

    @property
    def analysis_dir(self) -> str:
        return work_layout(self.work_path)["analysis"]

    # -- the jobs -------------------------------------------------------------------------------------------
    def batches(self) -> int:
        return self.n_batches or worker_count()

    def jobs(self) -> list[dict[str, Any]]:
        """The (potential x batch) 03_relax jobs: each one's notebook parameters."""
        n, dbs = self.batches(), self.dbs
        return [{**self.relax_parameters, "potential": p, "batch": b, "n_batches": n,
                 "clean_db": dbs["clean_db"], "out_db": dbs["out_db"],
                 **({"max_atoms": self.max_atoms[p]} if p in self.max_atoms else {}),
                 **({"sample": self.sample} if self.sample else {})}
                for p in self.potentials for b in range(n)]

    def passes(self) -> list[CampaignConfig]:
        """The relax stage's passes, in order: ``sample_first`` alone with every potential, then everything (one
        pass without it, or when ``sample`` already restricts the run)."""
        if self.sample_first and not self.sample:
            return [self.with_changes(sample=self.sample_first, sample_first=None), self]
        return [self]

    # -- changes and files ----------------------------------------------------------------------------------
    def with_changes(self, **changes: Any) -> CampaignConfig:
        """A copy with ``changes``. ``max_atoms`` and ``relax_parameters`` add to the current ones; new
        ``potentials`` keep only their own ``max_atoms`` entries."""
        if "potentials" in changes:
            keep = registered_potentials(changes["potentials"])
            changes["potentials"] = keep
            changes["max_atoms"] = {**{p: n for p, n in self.max_atoms.items() if p in keep},
                                    **(changes.get("max_atoms") or {})}
        elif "max_atoms" in changes:
            changes["max_atoms"] = {**self.max_atoms, **(changes["max_atoms"] or {})}
        if "relax_parameters" in changes:
            changes["relax_parameters"] = {**self.relax_parameters, **(changes["relax_parameters"] or {})}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CampaignConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown campaign setting(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML (written to ``path`` when given): a starting file for ``--config``."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> CampaignConfig:
        import yaml

        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a campaign config is a mapping of settings, got {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (KeyError, ValueError) as err:
            raise type(err)(f"{path}: {err.args[0]}") from None


# -- presets ------------------------------------------------------------------------------------------------
def demo_config(**changes: Any) -> CampaignConfig:
    """``make demo``: fetch the demo entries -> filter -> relax (ANI-1x, ANI-1ccx) -> analysis, in ``data/``."""
    base = CampaignConfig(stages=["fetch", "filter", "relax", "analysis"], cod_ids=list(DEMO_COD_IDS))
    return base.with_changes(**changes)


def campaign_config(**changes: Any) -> CampaignConfig:
    """``campaign``: the relax jobs alone, on ``data/clean.db`` (or the given databases)."""
    return CampaignConfig().with_changes(**changes)


def default_data_dir() -> str:
    """The folder holding cod/ and cod-sample/: $CODANI_DATA, else ../shared/data beside the project."""
    return os.environ.get(DATA_ENV) or str(project_root().parent / "shared" / "data")


def results_config(data_dir: str | Path | None = None, **changes: Any) -> CampaignConfig:
    """``make results``: both result folders of ``data_dir``, every registered potential (each on the subset its
    cost allows: :data:`RESULTS_MAX_ATOMS`, ``max_atoms`` overrides it per potential, None = every structure),
    one batch per core and one torch thread per job, every stage, in ``data/results``; the science sample
    first with every potential (issue 35), then the rest of the clean set."""
    potentials = registered_potentials(changes.pop("potentials", None))
    overrides = changes.pop("max_atoms", None) or {}
    extra = sorted(set(overrides) - set(potentials))
    if extra:
        raise KeyError(f"--max-atoms names potentials not in this run: {extra}")
    data = Path(data_dir or default_data_dir())
    base = CampaignConfig(work_dir="data/results", stages=[s for s in STAGES if s not in OPT_IN_STAGES],
                          sources=[str(data / folder) for folder in RESULT_FOLDERS], potentials=potentials,
                          max_atoms={p: overrides.get(p, RESULTS_MAX_ATOMS.get(p)) for p in potentials},
                          n_batches=0, relax_parameters={"n_threads": 1}, sample_first="science")
    return base.with_changes(**changes)


PRESETS = {"demo": demo_config, "campaign": campaign_config, "results": results_config}
