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

if __name__ == "__main__" and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    # Run as a file (spark-submit's application): Python put jobs/ itself on the path,
    # where core/tables.py or core/config.py would shadow top-level modules of that name.
    sys.path.pop(0)

from core.config import Config, ConfigError, load_config
from core.session import get_spark
from jobs import nearline
from jobs.explain import explain
from jobs.ingest import IngestError, synthetic
from jobs.ranker import RankerError
from jobs.stages import STAGES, daily_stages, run_stages
from jobs.tracking import Tracker, tracked

log = logging.getLogger(__name__)


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
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=f"run the {stage.name} stage")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        conf = _conf(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    spark = get_spark(conf)
    try:
        if args.command == "generate":
            events, items = synthetic.generate(spark, args.users, args.days, seed=args.seed)
            events.write.mode("overwrite").parquet(f"{args.out}/events")
            items.write.mode("overwrite").parquet(f"{args.out}/items")
            log.info(f"generate: wrote {args.out}/events and {args.out}/items")
        elif args.command == "explain":
            print(explain(spark, conf, args.user), flush=True)
        elif args.command == "nearline":
            result = nearline.run(spark, conf, args.stop_after_idle, args.max_seconds)
            log.info(
                f"nearline: stopped after {result['batches']:,} batches, {result['triggers']:,} triggers"
            )
        elif args.command == "pipeline":
            tracker = Tracker(conf)
            names = args.only or daily_stages()
            if (args.with_evaluation or conf.evaluate.in_pipeline) and not args.only:
                names = names + [s.name for s in STAGES if not s.daily]
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
