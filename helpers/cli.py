"""Command line: ``python -m helpers.cli demo | campaign | results | config | merge | potentials`` (also installed
as ``codani``). ``demo``, ``campaign`` and ``results`` are presets of one campaign
(:mod:`helpers.run.config`); ``--config FILE.yaml`` starts from a file instead (``config --preset NAME`` prints
one), and the flags given override it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from helpers.run.config import DEMO_COD_IDS, JOB_RETRIES, OPT_IN_STAGES, STAGES, STUDY_POTENTIALS
from helpers.vocabulary import SAMPLE_SETS


def _ids(text: str | None) -> list[int] | None:
    if text is None:
        return list(DEMO_COD_IDS)
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


def _changes(given: dict[str, Any]) -> dict[str, Any]:
    """The config fields the flags given on the command line set (the rest come from the preset or the file)."""
    from pathlib import Path

    from helpers.run.config import RESULT_FOLDERS

    renamed = {"run_dir": "work_dir", "set": "relax_parameters", "data_dir": "sources", "source": "sources"}
    convert = {"potentials": lambda v: v.split(","), "stages": lambda v: v.split(","), "cod_ids": _ids,
               "source": lambda v: [v], "max_atoms": _max_atoms, "sample_first": lambda v: None if v == "none" else v,
               "set": lambda items: {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)},
               "data_dir": lambda v: [str(Path(v) / folder) for folder in RESULT_FOLDERS]}
    return {renamed.get(k, k): convert.get(k, lambda v: v)(v) for k, v in given.items()}


def _campaign_config(command: str, args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The preset of ``command`` (or the ``--config`` file), changed by the flags given."""
    from pathlib import Path

    from helpers.run.config import PRESETS, CampaignConfig, default_data_dir

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "status")}
    if command == "results" and (args.config is None or "data_dir" in given):
        data_dir = given.get("data_dir") or default_data_dir()
        if not Path(data_dir).is_dir():
            parser.error(f"data folder {data_dir} not found: give --data-dir (the folder holding cod/, cod-sample/)")
        given["data_dir"] = data_dir
    try:
        changes = _changes(given)
        if args.config is not None:
            return CampaignConfig.from_yaml(args.config).with_changes(**changes)
        return PRESETS[command](**changes)
    except (KeyError, ValueError, OSError) as err:
        parser.error(str(err.args[0] if isinstance(err, KeyError) else err))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codani", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    # demo, campaign, results: a flag not given leaves the preset's (or the --config file's) value
    config_help = "start from this YAML campaign config instead of the preset (codani config --preset NAME)"
    demo = sub.add_parser("demo", help="fetch -> filter -> relax (ANI-1x, ANI-1ccx) -> analysis via papermill",
                          argument_default=argparse.SUPPRESS)
    demo.add_argument("--config", default=None, help=config_help)
    demo.add_argument("--run-dir", help="the work folder (default: data)")
    demo.add_argument("--cod-ids", help="comma-separated COD ids, or 'all' (default: demo set)")
    demo.add_argument("--source", help="URL or directory (default: $COD_SOURCE or COD)")
    demo.add_argument("--potentials", help=f"default: {','.join(STUDY_POTENTIALS)}")
    demo.add_argument("--n-batches", type=int, help="default: 1")
    demo.add_argument("--limit", type=int, help="default: every entry")

    camp = sub.add_parser("campaign", help="run 03_relax for every (potential x batch) and merge the shards",
                          argument_default=argparse.SUPPRESS)
    camp.add_argument("--config", default=None, help=config_help)
    camp.add_argument("--work-dir", help="holds the lock, stage_times.csv and the default databases (default: data)")
    camp.add_argument("--clean-db", help="default: data/clean.db")
    camp.add_argument("--out-db", help="default: data/relaxed_{potential}.db")
    camp.add_argument("--potentials", help=f"default: {','.join(STUDY_POTENTIALS)}")
    camp.add_argument("--n-batches", type=int, help="default: 1")
    camp.add_argument("--max-parallel", type=int, help="relax jobs at once on this machine (default: one per core)")
    camp.add_argument("--log-dir", help="default: data/executed")
    camp.add_argument("--scheduler",
                      help="run on Dask: local, tcp://host:port, a scheduler file, slurm or pbs (default: no Dask)")
    camp.add_argument("--n-workers", type=int, help="Dask workers (local) or batch jobs (slurm/pbs)")
    camp.add_argument("--threads-per-worker", type=int, help="torch threads per Dask worker (default: 1)")
    camp.add_argument("--retries", type=int,
                      help=f"extra attempts for a failed job (it resumes; default {JOB_RETRIES})")
    camp.add_argument("--set", action="append", metavar="KEY=JSON",
                      help="extra 03_relax parameter, e.g. --set fmax=0.001 --set optimizer='\"LBFGS\"'")
    camp.add_argument("--wait", action="store_true", help="another run holds the work dir: wait for it")
    sample_help = ("only this sample set of the clean structures: science (the unaltered COD entries of cod-sample/), "
                   "altered (the COD tool suite's test inputs), ice (default: every one)")
    first_help = "relax this sample set with every potential first, then the rest (default: {})"
    camp.add_argument("--sample", choices=SAMPLE_SETS, help=sample_help)
    camp.add_argument("--sample-first", choices=SAMPLE_SETS, help=first_help.format("one pass"))

    merge = sub.add_parser("merge", help="merge per-batch shards into one database per potential")
    merge.add_argument("--out-db", default="data/relaxed_{potential}.db")
    merge.add_argument("--potentials", default=",".join(STUDY_POTENTIALS))

    pots = sub.add_parser("potentials", help="list the registered potentials (built in and from entry points): "
                          "source, licence, cost, step cap x, elements, what, citation")
    pots.add_argument("--markdown", action="store_true", help="print the built-in cards' table of docs/potentials.md")
    pots.add_argument("--update-docs", metavar="FILE", default=None,
                      help="rewrite the generated potentials table in FILE (docs/potentials.md)")

    res = sub.add_parser("results", help="fetch -> filter -> relax (every potential) -> analysis -> docs/results.md",
                         argument_default=argparse.SUPPRESS)
    res.add_argument("--config", default=None, help=config_help)
    res.add_argument("--data-dir",
                     help="folder holding cod/ and cod-sample/ (default: $CODANI_DATA or ../shared/data)")
    res.add_argument("--work-dir", help="databases, executed notebooks, analysis (default: data/results)")
    res.add_argument("--docs-dir", help="where results.md and figures/ go (default: docs)")
    res.add_argument("--potentials", help="comma-separated (default: every registered potential)")
    res.add_argument("--stages", help=f"of {','.join(STAGES)}; default: all but {','.join(OPT_IN_STAGES)} (the "
                                      "minimum check: the rattle test on every converged crystal, opt-in)")
    res.add_argument("--wait", action="store_true",
                     help="another run holds --work-dir: wait for it to end (default: say who, exit)")
    res.add_argument("--max-parallel", type=int, help="relax jobs at once (default: one per core)")
    res.add_argument("--sample", choices=SAMPLE_SETS, help=sample_help)
    res.add_argument("--sample-first", choices=(*SAMPLE_SETS, "none"), help=first_help.format("science"))
    res.add_argument("--max-atoms",
                     help="per-potential subset overrides, e.g. 'gfn-ff=48,ani1x-d3=100,chgnet-d3=none' "
                          "(most atoms evaluated per structure — a Γ-point code's supercell; none = every structure)")

    status_help = ("print where this campaign stands (per potential: finished, not converged, in flight, core-hours "
                   "spent and left) from its databases, and exit: runs nothing, safe beside a running campaign")
    for command in (demo, camp, res):
        command.add_argument("--status", action="store_true", help=status_help)

    conf = sub.add_parser("config", help="print a preset's campaign config as YAML: a starting file for --config")
    conf.add_argument("--preset", choices=("demo", "campaign", "results"), default="results")

    args = parser.parse_args(argv)
    if args.command in ("demo", "campaign", "results") and getattr(args, "status", False):
        import os

        from helpers.run.status import status_text

        config = _campaign_config(args.command, args, parser)
        try:
            print(status_text(config, config.max_parallel or os.cpu_count() or 1))
        except FileNotFoundError as err:  # no clean database: the campaign has not got past 02_filter here
            print(f"{args.command} --status: nothing relaxed yet in {config.work_dir}: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command in ("demo", "campaign", "results"):  # long runs: kill = Ctrl-C, nothing left running
        from helpers.process.guard import stop_on_sigterm

        stop_on_sigterm()
        from helpers.run.campaign import run_campaign
        from helpers.run.lock import WorkDirBusy

        config = _campaign_config(args.command, args, parser)
        try:
            result = run_campaign(config)
        except WorkDirBusy as err:
            print(f"{args.command}: {err}", file=sys.stderr)
            return 3
        print(json.dumps(result, indent=2))
        # a failed job is listed (and retried by the next run); results' product is the report, written anyway
        return 1 if result["failed"] and args.command != "results" else 0
    elif args.command == "config":
        from helpers.run.config import PRESETS

        print(PRESETS[args.preset]().to_yaml(), end="")
    elif args.command == "merge":
        from helpers.relax.stage import merge_shards
        from helpers.store.paths import resolve

        for potential in args.potentials.split(","):
            print(potential, merge_shards(resolve(args.out_db), potential))
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
