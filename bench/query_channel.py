"""Benchmark: does a change to the queries (U2Q, trend queries) help or hurt the lists they retrieve?

The query channels alone, without the other candidate channels and the ranker, at the
evaluation's cuts: for each cut an as-of warehouse is built from the main one (events
before the cut, the catalog known then; ``jobs.asof``) and the stages up to ``q2i`` run
in it. Each buyer's lists are then read from ``gold.q2i_candidates`` exactly as the
candidates stage reads them (``jobs.candidates.query_channels``: an item once, by its best
score, the ``K`` best):

- ``query``: personal and exploration queries; ``trend``: the trend queries;
- per kind (``personal``, ``trend``, ``exploration``): the queries of that kind only.

and scored like the evaluation (``jobs.evaluate.metrics.per_user``) against the purchases
of the ``evaluate.test_days`` after the cut, for the buyers active on both sides.

Two versions of the code are compared by running ``run`` once with each (e.g. the
checkout before a change in a ``git worktree``, with this script copied in) and then
``compare``, a paired bootstrap over buyers (``jobs.evaluate.bootstrap``) of every
metric's difference, per list, over the cuts together:

    .venv/bin/python bench/query_channel.py run --label before --root /tmp/qc  # old code
    .venv/bin/python bench/query_channel.py run --label after --root /tmp/qc \\
        --reuse /tmp/qc/before --from-stage trends                                # new code
    .venv/bin/python bench/query_channel.py compare /tmp/qc/before.csv /tmp/qc/after.csv

``--reuse`` copies a finished run's as-of warehouses and reruns only the stages from
``--from-stage`` on (the stages before it must be unchanged by the change compared).
The main warehouse is ``storage.root`` of the profile (``discovery ingest`` first); the
cuts are the profile's ``evaluate.cuts`` (``auto``: the last ``n_cuts`` windows).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/query_channel.py` without an installed project
    sys.path.insert(0, str(ROOT))

from pyspark.sql import functions as F  # noqa: E402

from core import tables  # noqa: E402
from core.config import derive, load_config  # noqa: E402
from core.session import get_spark  # noqa: E402
from jobs.asof import asof_stages, build_asof_warehouse  # noqa: E402
from jobs.candidates import query_channels  # noqa: E402
from jobs.evaluate import asof_conf, bootstrap, data_days, evaluation_users, resolve_windows, split  # noqa: E402
from jobs.evaluate import metrics as em  # noqa: E402
from jobs.stages import run_stages  # noqa: E402

log = logging.getLogger("bench.query_channel")

KINDS = ("personal", "trend", "exploration")
METRICS = ("recall", "hit", "new_item_hit", "new_category_hit", "recall_new_category", "category_width")


def lists(q2i, users, k: int):
    """method, user_id, item_id, position, has_reason: the channel lists and one per kind."""
    channels = query_channels(q2i, users, k).select(
        F.col("channel").alias("method"), "user_id", "item_id", F.col("channel_rank").alias("position")
    )
    out = channels
    for kind in KINDS:
        one = query_channels(q2i.filter(F.col("kind") == kind), users, k).select(
            F.lit(kind).alias("method"), "user_id", "item_id", F.col("channel_rank").alias("position")
        )
        out = out.unionByName(one)
    return out.withColumn("has_reason", F.lit(True))


def run(args: argparse.Namespace) -> None:
    conf = load_config(args.conf, args.set)
    spark = get_spark(conf)
    ec = conf.evaluate
    events = tables.read(spark, conf, "bronze.events")
    windows = resolve_windows(ec, *data_days(events))
    root = Path(args.root).resolve()
    stages = asof_stages("q2i")
    frames = []
    for window in windows:
        started = time.perf_counter()
        where = root / args.label / f"asof_{window.cut:%Y%m%d}"
        asof = derive(asof_conf(conf, window.cut), [f"storage.root={where}"])
        train, test = split(events, window.cut, window.end)
        users = evaluation_users(train, test, None, ec.seed).localCheckpoint()
        if args.reuse:
            shutil.rmtree(where, ignore_errors=True)
            shutil.copytree(Path(args.reuse).resolve() / f"asof_{window.cut:%Y%m%d}", where)
            todo = stages[stages.index(args.from_stage) :]
        else:
            build_asof_warehouse(spark, conf, asof, window.cut, None)
            todo = stages
        log.info("%s: %s: stages %s in %s", args.label, window, ", ".join(todo), where)
        run_stages(spark, asof, todo, label=f"query channel {args.label}")
        q2i = tables.read(spark, asof, "gold.q2i_candidates")
        recs = lists(q2i, users, ec.k)
        test = test.join(users, "user_id", "left_semi")
        train_asof = tables.read(spark, asof, "bronze.events")
        history = train_asof.filter(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
        purchases = (
            train_asof.filter((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
            .select("user_id", "item_id")
            .distinct()
        )
        categories = tables.read(spark, asof, "silver.item_profiles").select("item_id", "leaf_category")
        vectors = tables.read(spark, asof, "silver.item_vectors").select("item_id", "vector")
        per_user = em.per_user(recs, test, history, categories, vectors, purchases, [ec.k]).toPandas()
        per_user["cut"] = str(window.cut)
        frames.append(per_user)
        log.info("%s: %s: %d buyers, %.0f s", args.label, window, per_user["user_id"].nunique(),
                 time.perf_counter() - started)  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    path = root / f"{args.label}.csv"
    out.to_csv(path, index=False)
    summary = out.groupby(["method"])[list(METRICS)].mean().round(4)
    log.info("%s: written %s\n%s", args.label, path, summary.to_string())


def compare(args: argparse.Namespace) -> pd.DataFrame:
    """after - before per list and metric, mean over the cuts, paired 95 % intervals."""
    before, after = (pd.read_csv(p, dtype={"user_id": str}) for p in (args.before, args.after))
    rows = []
    for method in sorted(set(after["method"])):
        a = after[after["method"] == method].assign(method="after")
        b = before[before["method"] == method].assign(method="before")
        summary = bootstrap.summarize(
            pd.concat([a, b]), list(METRICS), "after", n_resamples=args.resamples,
            higher_is_better=[m for m in METRICS if m != "category_width"],
        )  # fmt: skip
        mean = summary[(summary["cut"] == bootstrap.MEAN) & (summary["method"] == "before")]
        values = summary[(summary["cut"] == bootstrap.MEAN) & (summary["method"] == "after")].set_index(
            "metric"
        )
        for r in mean.itertuples():
            rows.append({
                "list": method, "metric": r.metric, "before": r.value, "after": values.loc[r.metric, "value"],
                "after - before": f"{r.diff:+.4f} [{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]", "verdict": r.verdict,
            })  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".4f"))  # the result is the script's output
    return table


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="build the as-of warehouses, run the stages, score the query lists")
    r.add_argument("--label", required=True, help="the version's name: its folder and CSV under --root")
    r.add_argument("--root", required=True, help="a folder for the as-of warehouses and the CSVs")
    r.add_argument("--conf", default=None, help="profile (default conf/local.yaml)")
    r.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    r.add_argument("--reuse", default=None, help="a finished run's folder to copy the warehouses from")
    r.add_argument("--from-stage", default="trends", help="with --reuse: the first stage to rerun")
    c = sub.add_parser("compare", help="paired bootstrap of after - before")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
