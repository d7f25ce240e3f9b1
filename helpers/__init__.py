"""codani: how well machine-learned potentials reproduce experimental molecular crystals (COD).

The package follows the four notebooks, one subpackage per stage, plus what they share:

- :mod:`helpers.fetch` — CIFs from COD (web or a folder) into the raw ASE database   (01_fetch)
- :mod:`helpers.filter` — named checks; clean and rejects databases, reject viewer  (02_filter)
- :mod:`helpers.relax` — potentials and relaxations, one batch of structures per job (03_relax)
- :mod:`helpers.analysis` — errors against experiment, statistics, figures          (04_analysis)
- :mod:`helpers.lattice` — lattice energies against the benchmark sets               (05_lattice_energy)
- :mod:`helpers.run` — orchestration only: notebooks as jobs (papermill), campaigns, Dask
- :mod:`helpers.process` — process tools below the stages: time guards, process pools, atomic writes
- :mod:`helpers.store` — ASE databases (SQLite/PostgreSQL), project paths, shard names
- :mod:`helpers.vocabulary` — statuses, study defaults and units every stage shares
- :mod:`helpers.internals` — the few places that reach into other libraries' internals
"""
