"""The nearline's interim scoring of its query candidates: named components in 0..1 and
their weights (``nearline.weights``), as the batch ranking scored them before the learned
ranker. The batch ``rank`` stage now scores every channel with the learned model
(``udfs/ranking.py``); the nearline path still refreshes only the query channel with this.

- ``relevance``: cosine similarity of the item to the query that found it;
- ``personalisation``: ``0.7 x cfv_match + 0.3 x price_match``;
- ``discovery``: 1 in a category new to the user, 0.5 a new item of a known one, else 0;
- ``trend``: 1 when the query that found it is a trend query;
- ``popularity``: ``log(1 + buyers) / log(1 + buyers of the most-bought item)``.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import tables
from jobs.config import Config

COMPONENTS = ("relevance", "personalisation", "discovery", "trend", "popularity")
DISCOVERY_NEW_CATEGORY, DISCOVERY_NEW_ITEM = 1.0, 0.5


def personalisation(cfv_match, price_match):
    """The personalisation component from q2i's matches."""
    return 0.7 * cfv_match + 0.3 * price_match


def weighted_total(values, weights):
    """``sum(weights[c] x values[c])`` over :data:`COMPONENTS`."""
    total = 0.0
    for c in COMPONENTS:
        total = total + float(getattr(weights, c)) * values[c]
    return total


def item_popularity(bought: DataFrame) -> DataFrame:
    """(item_id, popularity in 0..1) from distinct (user_id, item_id) purchases."""
    buyers = bought.groupBy("item_id").agg(F.countDistinct("user_id").alias("_n"))
    top = buyers.agg(F.max("_n")).collect()[0][0] or 1
    return buyers.select("item_id", (F.log1p("_n") / math.log1p(top)).alias("popularity"))


def history(spark: SparkSession, conf: Config, run_date) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(known categories, touched items, bought items) per user, up to the run date."""
    known = (
        tables.read(spark, conf, "silver.user_windows")
        .filter((F.col("window") == "long_term") & (F.col("n_events") > 0))
        .select("user_id", "leaf_category")
        .distinct()
    )
    events = tables.read(spark, conf, "bronze.events").filter(
        (F.col("dt") <= F.lit(run_date)) & F.col("item_id").isNotNull()
    )
    touched = events.select("user_id", "item_id").distinct()
    bought = events.filter(F.col("event_type") == "purchase").select("user_id", "item_id").distinct()
    return known, touched, bought
