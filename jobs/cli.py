"""The ``discovery`` command: one subcommand per pipeline stage, and ``pipeline``.

Examples
--------
    discovery pipeline                               # whole DAG, conf/local.yaml
    discovery ingest --set run.run_id=backfill-01
    discovery aggregate --conf conf/cluster.yaml --set aggregate.horizon_days=180
    discovery generate --users 10000 --days 365 --out /tmp/synthetic

Also runs as ``python -m jobs ...`` and as the application file of spark-submit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

if __name__ == "__main__" and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    # Run as a file (spark-submit's application): Python put jobs/ itself on the path,
    # where jobs/tables.py or jobs/config.py would shadow top-level modules of that name.
    sys.path.pop(0)

from jobs.config import Config, ConfigError, load_config

# The pipeline DAG in execution order: (stage name, module path). Each module has
# ``run(spark, conf)``. Later stages are appended here as they are built.
STAGES: list[tuple[str, str]] = [
    ("ingest", "jobs.ingest"),
    ("items", "jobs.items"),
    ("aggregate", "jobs.aggregate"),
    ("compress", "jobs.compress"),
    ("cfv", "jobs.cfv"),
    ("portrait", "jobs.portrait"),
    ("trends", "jobs.trends"),
    ("u2q", "jobs.u2q"),
    ("embed", "jobs.embed"),
    ("index", "jobs.index"),
    ("q2i", "jobs.q2i"),
    ("candidates", "jobs.candidates"),
    ("train", "jobs.ranker"),
    ("rank", "jobs.rank"),
    ("evaluate", "jobs.evaluate"),
]
# Stages of their own schedule: `discovery pipeline` (the daily run) leaves them out unless
# asked (--with-evaluation, or evaluate.in_pipeline in the profile).
NOT_DAILY = ("evaluate",)


def daily_stages() -> list[str]:
    """The stages of the daily run, in DAG order."""
    return [s for s, _ in STAGES if s not in NOT_DAILY]


def _stage_runner(module: str) -> Callable:
    import importlib

    return importlib.import_module(module).run


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--conf", default=None, help="YAML profile: a path, or a name in conf/ (default: local.yaml)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set aggregate.horizon_days=180 (repeatable)",
    )  # fmt: skip
    p.add_argument("--run-date", default=None, help="run date YYYY-MM-DD (default: run.date, 'latest')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discovery", description="Inference-driven discovery recommender on Spark."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="run the daily stages in order: " + " -> ".join(daily_stages()))
    _add_common(p)
    p.add_argument("--only", nargs="+", default=None, help="run only these stages (in DAG order)")
    p.add_argument(
        "--with-evaluation",
        action="store_true",
        help="also run the evaluation (several as-of reruns; its own weekly job otherwise)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="run every stage; by default the stages already complete for the run date are skipped",
    )
    for name, _module in STAGES:
        p = sub.add_parser(name, help=f"run the {name} stage")
        _add_common(p)
    n = sub.add_parser(
        "nearline",
        help="stream bronze.events: refresh the recommendations of triggered users (Ctrl-C stops)",
    )
    _add_common(n)
    n.add_argument("--stop-after-idle", type=float, default=None, metavar="SECONDS",
                   help="stop when no new events arrived for this long (default: run until stopped)")  # fmt: skip
    n.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    x = sub.add_parser(
        "explain",
        help="one buyer: digest, portrait, CFV, demand queries and the list with channels and drivers",
    )
    _add_common(x)
    x.add_argument("--user", required=True, help="the buyer's user_id")
    g = sub.add_parser("generate", help="write synthetic events and items (generic format, Parquet)")
    g.add_argument("--users", type=int, required=True)
    g.add_argument("--days", type=int, required=True)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--out", required=True, help="output folder: <out>/events and <out>/items")
    _add_common(g)
    return parser


def _conf(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.run_date:
        overrides.append(f"run.date={args.run_date}")
    return load_config(args.conf, overrides)


def run_stages(
    spark,
    conf: Config,
    names: list[str],
    tracker=None,
    parent_id: str | None = None,
    label: str = "",
    resume: bool = False,
) -> None:
    """Run the named stages in DAG order with a progress line per stage (rows in / out, time).

    With a ``tracker`` (:class:`jobs.tracking.Tracker`) every stage is an MLflow run,
    nested under ``parent_id`` when given. ``resume``: skip the leading stages already
    complete for the run date (:mod:`jobs.progress`; ingest always runs).
    """
    from jobs import dag, progress
    from jobs.tracking import Tracker, tracked

    tracker = tracker or Tracker(conf)
    unknown = set(names) - {s for s, _ in STAGES}
    if unknown:
        raise ConfigError(
            f"unknown stage(s): {', '.join(sorted(unknown))}; known: {', '.join(s for s, _ in STAGES)}"
        )
    modules = dict(STAGES)
    todo = [s for s, _ in STAGES if s in names]
    prefix = f"{label} " if label else ""

    def run_one(name: str) -> None:
        i = todo.index(name) + 1
        reads, writes = dag.stage_tables(name)
        rows_in = progress.count_rows(spark, conf, reads)
        print(f"{prefix}[{i}/{len(todo)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        with tracked(tracker, conf, name, parent_id) as run:
            run["result"] = _stage_runner(modules[name])(spark, conf)
        seconds = time.perf_counter() - t0
        rows_out = progress.count_rows(spark, conf, writes)
        progress.record(spark, conf, name, rows_in, rows_out, seconds)
        print(
            f"{prefix}[{i}/{len(todo)}] {name} done: rows in {rows_in:,}, out {rows_out:,}, {seconds:.1f}s",
            flush=True,
        )

    if not resume:
        for name in todo:
            run_one(name)
        return
    for name in [s for s in todo if s == "ingest"]:
        run_one(name)
    rest = [s for s in todo if s != "ingest"]
    remaining = progress.to_resume(rest, progress.completed(spark, conf), always=())
    skipped = rest[: len(rest) - len(remaining)]
    if skipped:
        start = remaining[0] if remaining else "nothing left to run"
        print(
            f"{prefix}resume: {', '.join(skipped)} already complete for run date "
            f"{progress.run_date(spark, conf)}; starting at {start} (--restart runs every stage)",
            flush=True,
        )
    for name in remaining:
        run_one(name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        conf = _conf(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from jobs.ingest import IngestError
    from jobs.ranker import RankerError
    from jobs.session import get_spark

    spark = get_spark(conf)
    try:
        if args.command == "generate":
            from jobs.ingest import synthetic

            events, items = synthetic.generate(spark, args.users, args.days, seed=args.seed)
            events.write.mode("overwrite").parquet(f"{args.out}/events")
            items.write.mode("overwrite").parquet(f"{args.out}/items")
            print(f"generate: wrote {args.out}/events and {args.out}/items", flush=True)
        elif args.command == "explain":
            from jobs.explain import explain

            print(explain(spark, conf, args.user), flush=True)
        elif args.command == "nearline":
            from jobs import nearline

            result = nearline.run(spark, conf, args.stop_after_idle, args.max_seconds)
            print(
                f"nearline: stopped after {result['batches']:,} batches, {result['triggers']:,} triggers",
                flush=True,
            )
        elif args.command == "pipeline":
            from jobs.tracking import Tracker, tracked

            tracker = Tracker(conf)
            names = args.only or daily_stages()
            if (args.with_evaluation or conf.evaluate.in_pipeline) and not args.only:
                names = names + list(NOT_DAILY)
            with tracked(tracker, conf, "pipeline") as parent:
                run_stages(
                    spark,
                    conf,
                    names,
                    tracker,
                    parent["run_id"],
                    resume=not args.restart,
                )
        else:
            run_stages(spark, conf, [args.command])
    except (IngestError, ConfigError, RankerError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
