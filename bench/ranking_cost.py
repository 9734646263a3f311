"""Benchmark: the cost of the candidate channels + learned ranking against the query-only
path they replaced, side by side on one warehouse in one run.

Target: the ``candidates`` and ``rank`` stages together take at most 2x the seconds of the
former path, ``q2i`` + the former weighted ``rank`` (training is a weekly task of its own
and is not counted; ``ranker.max_age_days`` makes the daily ``train`` stage a no-op).

What is measured, on an existing warehouse (``discovery pipeline`` first; a trained model
must be there):

1. ``q2i``: the stage itself (U2Q queries -> FAISS -> gold.q2i_candidates), both paths
   need it;
2. *former rank*: the weighted scoring the project used before the learned ranker
   (relevance + 0.5 personalisation + 0.3 discovery + 0.2 trend + popularity, bought
   items demoted, one row per item, at most 5 per category, top 20), reproduced here as
   the reference and written to a scratch table;
3. ``candidates``: every channel + features -> gold.candidate_features (this run date);
4. ``rank``: the learned ranker's lists -> gold.recommendations.

Each step runs ``--repeats`` times in turn (a, b, c, d, a, b, ...); the medians and the
ratio ``(candidates + rank) / (q2i + former rank)`` are printed. The machine's load
average is printed too: on a shared machine only ratios within one run compare.

    python bench/ranking_cost.py                 # conf/local.yaml, ./warehouse
    python bench/ranking_cost.py --repeats 3 --conf conf/taobao.yaml
    python bench/ranking_cost.py --set storage.root=warehouse/evaluation/asof_20111112  # a cut's warehouse
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

log = logging.getLogger("bench.ranking_cost")


def former_rank(spark: SparkSession, conf) -> int:
    """The pre-channel weighted ranking of the Q2I candidates (the reference); rows written."""
    from core import tables
    from core.rundate import resolve_run_date

    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    events = tables.read(spark, conf, "bronze.events").filter(
        (F.col("dt") <= F.lit(run_date)) & F.col("item_id").isNotNull()
    )
    known = (
        tables.read(spark, conf, "silver.user_windows")
        .filter((F.col("window") == "long_term") & (F.col("n_events") > 0))
        .select("user_id", "leaf_category", F.lit(True).alias("_known"))
        .distinct()
    )
    touched = events.select("user_id", "item_id", F.lit(True).alias("_seen")).distinct()
    bought = events.filter(F.col("event_type") == "purchase").select("user_id", "item_id").distinct()
    buyers = bought.groupBy("item_id").agg(F.countDistinct("user_id").alias("_n"))
    top = buyers.agg(F.max("_n")).collect()[0][0] or 1
    popularity = buyers.select("item_id", (F.log1p("_n") / math.log1p(top)).alias("popularity"))
    c: DataFrame = (
        tables.read(spark, conf, "gold.q2i_candidates")
        .join(popularity, "item_id", "left")
        .join(known, ["user_id", "leaf_category"], "left")
        .join(touched, ["user_id", "item_id"], "left")
        .join(bought.withColumn("bought", F.lit(True)), ["user_id", "item_id"], "left")
    )
    discovery = F.when(F.col("_known").isNull(), 1.0).when(F.col("_seen").isNull(), 0.5).otherwise(0.0)
    score = (
        F.col("relevance")
        + 0.5 * (0.7 * F.col("cfv_match") + 0.3 * F.col("price_match"))
        + 0.3 * discovery
        + 0.2 * (F.col("kind") == "trend").cast("double")
        + F.coalesce("popularity", F.lit(0.0))
    )
    c = c.withColumn("score", F.when(F.col("bought"), score * 0.5).otherwise(score))
    best = Window.partitionBy("user_id", "item_id").orderBy(F.desc("score"), "query_id")
    per_cat = Window.partitionBy("user_id", "leaf_category").orderBy(F.desc("score"), "item_id")
    per_user = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    out = (
        c.withColumn("_q", F.row_number().over(best))
        .filter("_q = 1")
        .withColumn("_c", F.row_number().over(per_cat))
        .filter("_c <= 5")
        .withColumn("position", F.row_number().over(per_user))
        .filter("position <= 20")
        .select("user_id", "position", "item_id", "score", "reason")
    )
    tables.overwrite(out, conf, "gold.bench_former_recommendations")
    return tables.read(spark, conf, "gold.bench_former_recommendations").count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a configuration override, e.g. storage.root=warehouse/evaluation/asof_20111112")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    from core import tables
    from core.config import load_config
    from core.session import get_spark
    from jobs import candidates, q2i, rank

    conf = load_config(args.conf, ["tracking.enabled=false", *args.set])
    spark = get_spark(conf)
    for needed in ("gold.user_queries", "gold.index_manifest", "gold.ranker_models"):
        if not tables.exists(spark, conf, needed):
            raise SystemExit(f"{needed} is missing in {conf.storage.root}: run `discovery pipeline` first")
    steps = {
        "q2i": lambda: q2i.run(spark, conf),
        "former rank": lambda: former_rank(spark, conf),
        "candidates": lambda: candidates.run(spark, conf),
        "rank": lambda: rank.run(spark, conf),
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - t0)
            log.info("repeat %d/%d: %s %.1fs", i + 1, args.repeats, name, seconds[name][-1])
    med = {name: statistics.median(v) for name, v in seconds.items()}
    former = med["q2i"] + med["former rank"]
    new = med["candidates"] + med["rank"]
    lines = [
        f"warehouse {conf.storage.root}, {args.repeats} repeat(s), load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores",
        "| step | median s |",
        "|---|--:|",
        *[f"| {name} | {med[name]:.1f} |" for name in steps],
        f"former path (q2i + former rank): {former:.1f} s; new stages (candidates + rank): {new:.1f} s; "
        f"ratio {new / former:.2f} (target <= 2.00: {'met' if new <= 2 * former else 'NOT met'})",
    ]
    print("\n".join(lines), flush=True)  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
