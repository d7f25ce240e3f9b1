"""Command line: ``python -m helpers.cli demo | campaign | merge | potentials | results`` (also installed as
``codani``)."""

from __future__ import annotations

import argparse
import json
import sys

from helpers.run.notebooks import DEMO_COD_IDS, JOB_RETRIES, STUDY_POTENTIALS


def _ids(text: str | None):
    if text is None:
        return DEMO_COD_IDS
    if text in ("all", ""):
        return None
    return [int(x) for x in text.split(",")]


def _max_atoms(text: str | None) -> dict[str, int | None]:
    """'gfn-ff=48,chgnet-d3=none' -> {'gfn-ff': 48, 'chgnet-d3': None}; a clear error for anything else."""
    limits: dict[str, int | None] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--max-atoms wants potential=N or potential=none, got {item!r}")
        value = value.strip().lower()
        if value == "none":
            limits[name.strip()] = None
        elif value.isdigit() and int(value) > 0:
            limits[name.strip()] = int(value)
        else:
            raise ValueError(f"--max-atoms {name.strip()}: {value!r} is not a positive number of atoms or 'none'")
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codani", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fetch -> filter -> relax (ANI-1x, ANI-1ccx) -> analysis via papermill")
    demo.add_argument("--run-dir", default="data")
    demo.add_argument("--cod-ids", default=None, help="comma-separated COD ids, or 'all' (default: demo set)")
    demo.add_argument("--source", default=None, help="URL or directory (default: $COD_SOURCE or COD)")
    demo.add_argument("--potentials", default=",".join(STUDY_POTENTIALS))
    demo.add_argument("--n-batches", type=int, default=1)
    demo.add_argument("--limit", type=int, default=None)

    camp = sub.add_parser("campaign", help="run 03_relax for every (potential x batch) and merge the shards")
    camp.add_argument("--clean-db", default="data/clean.db")
    camp.add_argument("--out-db", default="data/relaxed_{potential}.db")
    camp.add_argument("--potentials", default=",".join(STUDY_POTENTIALS))
    camp.add_argument("--n-batches", type=int, default=1)
    camp.add_argument("--max-parallel", type=int, default=None,
                      help="relax jobs at once on this machine (default: one per core)")
    camp.add_argument("--log-dir", default="data/executed")
    camp.add_argument("--scheduler", default=None,
                      help="run on Dask: local, tcp://host:port, a scheduler file, slurm or pbs (default: no Dask)")
    camp.add_argument("--n-workers", type=int, default=None, help="Dask workers (local) or batch jobs (slurm/pbs)")
    camp.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per Dask worker")
    camp.add_argument("--retries", type=int, default=JOB_RETRIES, help="extra attempts for a failed job (it resumes)")
    camp.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                      help="extra 03_relax parameter, e.g. --set fmax=0.001 --set optimizer='\"LBFGS\"'")

    merge = sub.add_parser("merge", help="merge per-batch shards into one database per potential")
    merge.add_argument("--out-db", default="data/relaxed_{potential}.db")
    merge.add_argument("--potentials", default=",".join(STUDY_POTENTIALS))

    pots = sub.add_parser("potentials", help="list the registered potentials (built in and from entry points): "
                          "source, licence, cost, step cap x, elements, what, citation")
    pots.add_argument("--markdown", action="store_true", help="print the built-in cards' table of docs/potentials.md")
    pots.add_argument("--update-docs", metavar="FILE", default=None,
                      help="rewrite the generated potentials table in FILE (docs/potentials.md)")

    res = sub.add_parser("results", help="fetch -> filter -> relax (every potential) -> analysis -> docs/results.md")
    res.add_argument("--data-dir", default=None,
                     help="folder holding cod/ and cod-sample/ (default: $CODANI_DATA or ../shared/data)")
    res.add_argument("--work-dir", default="data/results", help="databases, executed notebooks, analysis")
    res.add_argument("--docs-dir", default="docs", help="where results.md and figures/ go")
    res.add_argument("--potentials", default=None, help="comma-separated (default: every registered potential)")
    res.add_argument("--stages", default="fetch,filter,relax,analysis,lattice,report")
    res.add_argument("--wait", action="store_true",
                     help="another results run holds --work-dir: wait for it to end (default: say who, exit)")
    res.add_argument("--max-parallel", type=int, default=None, help="relax jobs at once (default: one per core)")
    res.add_argument("--max-atoms", default=None,
                     help="per-potential subset overrides, e.g. 'gfn-ff=48,ani1x-d3=100,chgnet-d3=none' "
                          "(most atoms evaluated per structure — a Γ-point code's supercell; none = every structure)")

    args = parser.parse_args(argv)
    if args.command in ("demo", "campaign", "results"):  # long runs: kill = Ctrl-C, nothing left running
        from helpers.process.guard import stop_on_sigterm

        stop_on_sigterm()
    if args.command == "demo":
        from helpers.run.notebooks import run_pipeline

        result = run_pipeline(run_dir=args.run_dir, cod_ids=_ids(args.cod_ids), source=args.source,
                              potentials=args.potentials.split(","), n_batches=args.n_batches,
                              limit=args.limit)
        print(json.dumps(result, indent=2))
    elif args.command == "campaign":
        from helpers.run.notebooks import CampaignPlan, run_campaign
        from helpers.store.paths import resolve

        extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        plan = CampaignPlan(args.potentials.split(","), args.n_batches, resolve(args.clean_db),
                            resolve(args.out_db), extra)
        if args.scheduler is None:
            print(json.dumps(run_campaign(plan, args.log_dir, max_parallel=args.max_parallel,
                                                retries=args.retries), indent=2))
        else:
            from helpers.run.distributed import make_client, run_campaign_dask

            client = make_client(args.scheduler, n_workers=args.n_workers,
                                 threads_per_worker=args.threads_per_worker)
            with client:
                result = run_campaign_dask(plan, resolve(args.log_dir), client, retries=args.retries,
                                           n_threads=args.threads_per_worker)
            print(json.dumps(result, indent=2))
            return 1 if result["failed"] else 0
    elif args.command == "merge":
        from helpers.relax.stage import merge_shards
        from helpers.store.paths import resolve

        for potential in args.potentials.split(","):
            print(potential, merge_shards(resolve(args.out_db), potential))
    elif args.command == "results":
        import os
        from pathlib import Path

        from helpers.run.results import run_results
        from helpers.store.paths import project_root, resolve
        from helpers.vocabulary import DATA_ENV

        data_dir = args.data_dir or os.environ.get(DATA_ENV) or str(project_root().parent / "shared" / "data")
        if not Path(data_dir).is_dir():
            parser.error(f"data folder {data_dir} not found: give --data-dir (the folder holding cod/, cod-sample/)")
        try:
            limits = _max_atoms(args.max_atoms)
        except ValueError as err:
            parser.error(str(err))
        from helpers.run.lock import WorkDirBusy

        try:
            result = run_results(data_dir, resolve(args.work_dir), resolve(args.docs_dir),
                                 potentials=args.potentials.split(",") if args.potentials else None,
                                 stages=args.stages.split(","), max_parallel=args.max_parallel, max_atoms=limits,
                                 wait=args.wait)
        except WorkDirBusy as err:
            print(f"results: {err}", file=sys.stderr)
            return 3
        print(json.dumps(result, indent=2))
    elif args.command == "potentials" and (args.markdown or args.update_docs):
        from helpers.relax.potentials.docs_table import markdown_table, update_docs

        if args.update_docs:
            print(f"{args.update_docs}: {'updated' if update_docs(args.update_docs) else 'already up to date'}")
        else:
            print(markdown_table())
    elif args.command == "potentials":
        import pandas as pd

        from helpers.relax.potentials.registry import potentials_table

        table = pd.DataFrame(potentials_table())
        short = ["name", "source", "licence", "cost", "steps_per_atom", "installed"]
        with pd.option_context("display.max_colwidth", 80, "display.width", 250):
            print(table[short].to_string(index=False))
        print()
        for row in table.itertuples():
            print(f"{row.name}: {row.description}\n    elements: {row.elements}\n    cite: {row.citation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
