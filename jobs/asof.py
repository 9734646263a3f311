"""As-of warehouses: what was known before a date, copied into a warehouse of its own, in
which the stages then run with that day as their run date.

Used by the evaluation (one per cut) and by the ranker's training (the candidates of an
earlier day when the warehouse holds none). A stage can only read what the as-of
warehouse holds, so nothing after the date can leak in; the one outside input, trend
documents, is filtered by publication date by the trends stage itself.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from jobs.stages import run_stages, stage_names

log = logging.getLogger(__name__)

# Caches that are pure functions of their inputs: copied into each as-of warehouse.
SHARED_CACHES = ("silver.text_vectors", "silver.llm_responses")
# Kept per run date: an as-of warehouse takes the days before its date from the warehouse
# it is seeded from (the ranker trains on an earlier day's candidates).
HISTORY = ("gold.candidate_features",)


def asof_stages(last: str | None = None) -> list[str]:
    """The stages an as-of run reruns: all but ingest and evaluate (up to ``last``)."""
    names = [s for s in stage_names() if s not in ("ingest", "evaluate")]
    return names if last is None else names[: names.index(last) + 1]


def asof_items(spark: SparkSession, conf: Config, cut: dt.date) -> DataFrame:
    """The catalog as known before ``cut``: items first seen before it (or never dated)."""
    cut_ts = dt.datetime.combine(cut, dt.time())
    return tables.read(spark, conf, "bronze.items").filter(
        F.col("first_seen").isNull() | (F.col("first_seen") < F.lit(cut_ts))
    )


def build_asof_warehouse(
    spark: SparkSession,
    conf: Config,
    asof: Config,
    cut: dt.date,
    users: DataFrame | None,
    caches_from: Config | None = None,
) -> dict[str, int]:
    """Copy what was known before the cut into the as-of warehouse; returns row counts.

    ``users``: restrict the training events to these users (``evaluate.max_users``).
    ``caches_from``: the warehouse whose caches (``SHARED_CACHES``) seed this one when it
    has none yet (default: ``conf``'s; the evaluation passes the previous cut's, which
    holds the main one's entries and what that cut added). The ``HISTORY`` tables' rows
    dated before the cut are copied from ``caches_from`` only (never from ``conf``, whose
    history may have been computed with later data).
    """
    events = tables.read(spark, conf, "bronze.events").filter(F.col("dt") < F.lit(cut))
    if users is not None:
        events = events.join(users.select("user_id"), "user_id", "left_semi")
    items = asof_items(spark, conf, cut)
    tables.overwrite(tables.by_partition(events, ["dt"]), asof, "bronze.events", partition_by=["dt"])
    tables.overwrite(items, asof, "bronze.items")
    source = caches_from or conf
    for cache in SHARED_CACHES:
        if tables.exists(spark, source, cache) and not tables.exists(spark, asof, cache):
            tables.overwrite(tables.read(spark, source, cache), asof, cache)
    if caches_from is not None:
        for name in HISTORY:
            if tables.exists(spark, caches_from, name) and not tables.exists(spark, asof, name):
                rows = tables.read(spark, caches_from, name).filter(F.col("as_of") < F.lit(cut))
                tables.overwrite(rows, asof, name, partition_by=["as_of"])
    return {
        "train_events": tables.read(spark, asof, "bronze.events").count(),
        "catalog_items": tables.read(spark, asof, "bronze.items").count(),
    }


def run_asof_pipeline(
    spark: SparkSession,
    asof: Config,
    tracker=None,
    parent_id: str | None = None,
    last: str | None = None,
    label: str = "as of",
) -> None:
    """The stages after ingest (up to ``last``), in DAG order, in the as-of warehouse."""

    run_stages(spark, asof, asof_stages(last), tracker=tracker, parent_id=parent_id, label=label)
