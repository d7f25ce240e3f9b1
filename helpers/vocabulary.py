"""The project's shared vocabulary: how a relaxation can end, the study's defaults, units.

Every stage imports these instead of repeating strings and numbers (in the spirit of
matbench-discovery's ``enums.py``). The string values are stored in the databases and CSVs:
never change one.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """How one relaxation ended (the ``status`` key of a relaxed row)."""

    converged = "converged"  # forces (and cell forces) below fmax
    step_cap = "step_cap"  # the study's cap 300 + x * n_atoms reached first
    exploded = "exploded"  # non-finite energy/forces, volume x2 or /2, atoms fused: stopped early
    timeout = "timeout"  # the per-structure time limit (max_wall_time) reached
    error = "error"  # an exception; the message is kept
    skipped = "skipped"  # an element the potential does not cover
    crashed = "crashed"  # the job's process died on this structure, twice (native crash): not retried


#: a rerun does not redo these; ``error`` and ``timeout`` rows are retried
FINAL_STATUSES: tuple[Status, ...] = (Status.converged, Status.step_cap, Status.exploded, Status.skipped,
                                      Status.crashed)
#: ended on a physical verdict worth counting in the statistics' denominators
RELAXATION_OUTCOMES: tuple[Status, ...] = (Status.converged, Status.step_cap, Status.exploded, Status.error,
                                           Status.timeout, Status.skipped, Status.crashed)
#: outcomes that say the run failed, not the potential's minimum (a batch with many of them is alarming)
FAILURES: tuple[Status, ...] = (Status.exploded, Status.error, Status.timeout, Status.crashed)


# --- the study's settings (the thesis this project reproduces): the defaults of every stage -----------
STUDY_ELEMENTS: tuple[str, ...] = ("C", "H", "N", "O")
STUDY_MIN_DISTANCE = 0.8  # Å: any two atoms closer than this means misplaced or duplicated atoms
STUDY_FMAX = 0.0005  # eV/Å, atoms and cell
STUDY_MAX_STEPS_BASE = 300  # step cap = 300 + x * n_atoms (x per potential: 6 ANI-1x, 10 ANI-1ccx)

# --- the analysis' defaults -------------------------------------------------------------------------------
THERMAL_EXPANSION_V = 1.65e-4  # 1/K, mean volumetric expansion of organic crystals (CSD surveys)
T_REF = 0.0  # K, the temperature experimental volumes are corrected to (a relaxation is at 0 K)
TEMPERATURE_EDGES: tuple[float, ...] = (150, 250)  # K, bands < 150, 150-250, >= 250
OUTLIER_THRESHOLD_PCT = 20.0  # |ΔV| above this is listed as an outlier
REPORT_NAME = "results.md"  # the report in the docs folder (helpers.analysis.report; the lattice stage's section)
GLOSSARY_HEADING = "## Glossary"  # the report's last section but the appendix: a new section goes before it

# --- units ------------------------------------------------------------------------------------------------
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660  # density: mass in amu / volume in Å^3 -> g/cm^3


def density_g_cm3(total_mass_amu: float, volume_a3: float) -> float | None:
    """Density in g/cm³ of ``total_mass_amu`` in ``volume_a3``; None for a non-positive volume."""
    return float(total_mass_amu * AMU_PER_A3_TO_G_PER_CM3 / volume_a3) if volume_a3 > 0 else None


# --- processes --------------------------------------------------------------------------------------------
#: environment of every worker process and notebook job: one BLAS thread each (numpy and torch fighting
#: over the cores made a 192-atom relaxation 3x slower), no torchani extension warnings
#: glibc's malloc keeps 32 MiB blocks in its heap and 256 MiB of freed memory before trimming: with its defaults
#: 15-20 % of a SevenNet call was page faults from freshly mapped tensors (issue 35, lever b;
#: benchmarks/relax_throughput.py --potential sevennet0-d3); other C libraries ignore the variable
JOB_ENV: dict[str, str] = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCHANI_NO_WARN_EXTENSIONS": "1",
                           "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:"
                                             "glibc.malloc.trim_threshold=268435456:glibc.malloc.top_pad=67108864"}
#: torch threads of a relax job when its ``n_threads`` is None (set per Dask worker); unset: every core
THREADS_ENV = "CODANI_THREADS"
#: where a process finds its inputs and keeps its caches: the project's environment variables, one place.
#: :data:`FORWARDED_ENV` lists them all; every job and Dask/SLURM/PBS worker gets them (set ones only)
ANI_MODEL_DIR_ENV = "ANI_MODEL_DIR"  #: the NeuroChem ANI files (helpers.relax.potentials.ani)
TORCHANI_DATA_ENV = "TORCHANI_DATA_DIR"  #: torchani's own data folder (downloaded weights)
COD_SOURCE_ENV = "COD_SOURCE"  #: where 01_fetch reads CIFs (a URL or a folder)
ROOT_ENV = "CODANI_ROOT"  #: the project folder relative paths resolve against
MODEL_DIR_ENV = "CODANI_MODEL_DIR"  #: user-downloaded weights of model-file potentials (plugins)
CACHE_ENV = "CODANI_CACHE"  #: converted model files (AIMNet2 members)
DATA_ENV = "CODANI_DATA"  #: the shared data folder of ``make results``
SHARED_ENV = "CODANI_SHARED"  #: the shared folder (lattice-energy references; default ../shared beside the repo)
FORWARDED_ENV: tuple[str, ...] = (ANI_MODEL_DIR_ENV, TORCHANI_DATA_ENV, COD_SOURCE_ENV, ROOT_ENV, MODEL_DIR_ENV,
                                  CACHE_ENV, DATA_ENV, SHARED_ENV)
#: the campaign run a relax job's kernel belongs to (set by ``helpers.run`` for the kernels it starts): a
#: structure's in-flight death counts only within the run that saw it (``helpers.relax.inflight``)
RUN_ENV = "CODANI_RUN_ID"


# --- notebook switches -------------------------------------------------------------------------------------
#: how a yes/no parameter may arrive as text (papermill's command line passes strings)
TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y", "t"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "n", "f"})
#: 03_relax's ``hessian_seed`` value that turns a potential's default seed off (the study's BFGS start)
NO_HESSIAN_SEED = "off"


#: potentials not fit for molecular crystals (registered name -> why): the ranking lists them with their numbers and
#: never ranks them, and they are no evidence about a CIF (the consensus checks leave them out)
UNFIT_FOR_CRYSTALS = {"aimnet2": "unfit for crystals: trained on molecules, it expands them by a many-body error of "
                                 "the model that no set-up of the aimnet package fixes (docs/aimnet2.md)"}
#: the two classes of crystals the report splits the ranking by (helpers.analysis.bonding): one of the molecules
#: has an N–H or O–H (a conventional hydrogen-bond donor), or none has
DONORS = "N–H/O–H donors"
NO_DONORS = "no N–H/O–H donors"
BONDING_CLASSES = (DONORS, NO_DONORS)
#: the sample sets of the clean entries (helpers.analysis.sample_sets) a relax run can be restricted to or relax
#: first: the unaltered COD entries, the COD tool suite's test inputs, ice
SAMPLE_SETS = ("science", "altered", "ice")
