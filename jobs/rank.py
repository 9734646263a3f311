"""Rank: the run date's candidates (``gold.candidate_features``) -> ``gold.recommendations``.

Every buyer's candidates, from all channels, are scored by the learned ranker
(``jobs/ranker.py``; the newest model trained for this run date or before), then one list
per buyer is filled by ``udfs/ranking.py``: near-duplicates once, the repeat and discovery
quotas on every prefix, at most ``rank.max_per_category`` per category, ``rank.top_k``
items. The nearline refresh calls the same function, so both paths rank alike.

Each row keeps the channel that brought the item and that channel's reason, whether the
buyer bought it before and whether its category is new to them.
"""

from __future__ import annotations

import logging

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from core.rundate import resolve_run_date
from jobs.candidates import DESCRIPTIVE_COLUMNS, FEATURES
from jobs.ranker import buyer_group, load_model
from udfs.ranking import ListRules, Ranker, rank_users

log = logging.getLogger(__name__)

RECOMMENDATIONS = "gold.recommendations"
# Passed through from the candidates to the list.
PASSED = DESCRIPTIVE_COLUMNS
LIST_SCHEMA = (
    "user_id string, position int, item_id string, title string, leaf_category string, score double, "
    "channel string, reason string, query_kind string, query string, bought boolean, "
    "is_new_category boolean, discovery double"
)


def list_rules(conf: Config, model_row: dict) -> ListRules:
    """The list rules: ``rank`` settings, the quotas chosen at training unless set."""
    rc = conf.rank
    return ListRules(
        top_k=rc.top_k,
        repeat_share=rc.repeat_share if rc.repeat_share is not None else float(model_row["repeat_share"]),
        discovery_share=(
            rc.discovery_share if rc.discovery_share is not None else float(model_row["discovery_share"])
        ),
        max_per_category=rc.max_per_category,
        dedup_titles=rc.dedup_titles,
    )


def as_list_rows(listed: pd.DataFrame) -> pd.DataFrame:
    """The chosen rows of :func:`udfs.ranking.rank_users` in ``LIST_SCHEMA``'s columns."""
    new_cat = listed["is_new_category"] > 0
    return pd.DataFrame(
        {
            "user_id": listed["user_id"],
            "position": listed["position"].astype("int32"),
            "item_id": listed["item_id"],
            "title": listed["title"],
            "leaf_category": listed["leaf_category"],
            "score": listed["score"].round(5),
            "channel": listed["channel"],
            "reason": listed["reason"],
            "query_kind": listed["query_kind"],
            "query": listed["query"],
            "bought": listed["own_purchases"] > 0,
            "is_new_category": new_cat,
            # 1 in a category new to the buyer, 0.5 a new item of a known one, else 0.
            "discovery": (new_cat * 1.0).where(new_cat, (listed["is_new_item"] > 0) * 0.5),
        }
    )


def rank(candidates: DataFrame, ranker: Ranker, rules: ListRules, buckets: int = 64) -> DataFrame:
    """One list per buyer (``LIST_SCHEMA``), in Spark: the candidates grouped into
    ``buckets`` groups of whole buyers (by a hash of the buyer), each group scored and
    listed in one call (a call per buyer costs more than the buyer's own work)."""

    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        return as_list_rows(rank_users(pdf.drop(columns="_bucket"), ranker, rules))

    cols = list(dict.fromkeys([*PASSED, *ranker.features]))
    return (
        candidates.select(*cols, buyer_group(buckets))
        .groupBy("_bucket")
        .applyInPandas(per_bucket, LIST_SCHEMA)
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.recommendations``; returns users and rows."""
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    if not tables.exists(spark, conf, FEATURES):
        raise RuntimeError(f"rank: {FEATURES} is missing: run the candidates stage first")
    candidates = tables.read(spark, conf, FEATURES).filter(F.col("as_of") == F.lit(run_date))
    ranker, row = load_model(spark, conf, run_date)
    rules = list_rules(conf, row)
    log.info("rank: model %s (trained on the candidates of %s); list of %d, repeat share <= %.2f, "
             "discovery share >= %.2f, <= %d per category", row["model_id"], row["train_as_of"], rules.top_k,
             rules.repeat_share, rules.discovery_share, rules.max_per_category)  # fmt: skip
    out = (
        rank(candidates, ranker, rules, buckets=conf.rank.buckets)
        .withColumn("model_id", F.lit(row["model_id"]))
        .withColumn("as_of", F.lit(run_date))
    )
    tables.overwrite(out, conf, RECOMMENDATIONS)
    rows = tables.read(spark, conf, RECOMMENDATIONS)
    stats = rows.agg(
        F.countDistinct("user_id").alias("users"),
        F.count("*").alias("rows"),
        F.sum(F.col("is_new_category").cast("int")).alias("new_cat"),
        F.sum(F.col("bought").cast("int")).alias("bought"),
    ).collect()[0]
    counts = {"users": int(stats["users"]), "rows": int(stats["rows"])}
    by_channel = {r["channel"]: int(r["count"]) for r in rows.groupBy("channel").count().collect()}
    n = max(counts["rows"], 1)
    log.info(
        "rank: %s %s rows for %s users; bought before %.0f%%, in a category new to the buyer %.0f%%; by channel %s",
        RECOMMENDATIONS, f"{counts['rows']:,}", f"{counts['users']:,}", 100 * (stats["bought"] or 0) / n,
        100 * (stats["new_cat"] or 0) / n, ", ".join(f"{c} {v:,}" for c, v in sorted(by_channel.items())),
    )  # fmt: skip
    return counts
