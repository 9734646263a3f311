"""The nearline's two output tables and the two ways to commit to them.

``gold.nearline_recommendations`` holds one row per refreshed user (the list, the event
that triggered it, the micro-batch); ``silver.nearline_batches`` one row per micro-batch.
For tables in a local ``storage.root`` the driver commits with delta-rs (tens of
milliseconds); otherwise (a catalog, an object store) with Spark (``nearline.commit``).
"""

from __future__ import annotations

import datetime as dt

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from core import tables
from core.config import Config

RECOMMENDATIONS = "gold.nearline_recommendations"


BATCHES = "silver.nearline_batches"


ITEM_TYPE = T.StructType(
    [
        T.StructField("position", T.IntegerType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("leaf_category", T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("channel", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("query_kind", T.StringType()),
        T.StructField("query", T.StringType()),
        T.StructField("bought", T.BooleanType()),
        T.StructField("is_new_category", T.BooleanType()),
    ]
)


RECOMMENDATIONS_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("items", T.ArrayType(ITEM_TYPE)),
        T.StructField("trigger_event_id", T.StringType()),
        T.StructField("trigger_type", T.StringType()),
        T.StructField("event_ts", T.TimestampType()),
        T.StructField("batch_id", T.LongType()),
        T.StructField("batch_started_at", T.TimestampType()),
        T.StructField("u2q_status", T.StringType()),
        T.StructField("u2q_model", T.StringType()),
        T.StructField("u2q_error", T.StringType()),
        T.StructField("queries", T.IntegerType()),
    ]
)


BATCHES_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType()),
        T.StructField("events", T.LongType()),
        T.StructField("triggers", T.LongType()),
        T.StructField("users_written", T.LongType()),
        T.StructField("failed", T.LongType()),
        T.StructField("u2q_fallbacks", T.LongType()),
        T.StructField("first_event_id", T.StringType()),
        T.StructField("last_event_id", T.StringType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("committed_at", T.TimestampType()),
        T.StructField("recommendations_version", T.LongType()),
        T.StructField("read_s", T.DoubleType()),
        T.StructField("refresh_s", T.DoubleType()),
        T.StructField("merge_s", T.DoubleType()),
    ]
)


def commit_engine(conf: Config) -> str:
    """``nearline.commit``: "auto" is delta-rs for tables in a local storage.root, else Spark."""
    if conf.nearline.commit == "spark" or tables.local_path(conf, RECOMMENDATIONS) is None:
        return "spark"
    return "delta-rs"


def create_tables(spark: SparkSession, conf: Config) -> None:
    """Create the (empty) output tables, so that either engine can commit to them."""
    for name, schema in ((RECOMMENDATIONS, RECOMMENDATIONS_SCHEMA), (BATCHES, BATCHES_SCHEMA)):
        if not tables.exists(spark, conf, name):
            tables.overwrite(spark.createDataFrame([], schema), conf, name)


def commit_lists(
    spark: SparkSession, conf: Config, records: list[tuple], engine: str
) -> tuple[int, dt.datetime]:
    """MERGE the refreshed lists (rows of ``RECOMMENDATIONS_SCHEMA``) into the table.

    A user's row is replaced only from a later batch (``s.batch_id > t.batch_id``), so a
    replayed batch changes nothing; rows with a negative batch id are never inserted (the
    warm-up). Returns the table's (version, commit time) afterwards.
    """
    update_when, insert_when = "s.batch_id > t.batch_id", "s.batch_id >= 0"
    if engine == "delta-rs":
        names = RECOMMENDATIONS_SCHEMA.fieldNames()
        rows = [dict(zip(names, r, strict=True)) for r in records]
        return tables.rs_merge_upsert(
            tables.local_path(conf, RECOMMENDATIONS), rows, ["user_id"], update_when, insert_when
        )

    loc = tables.location(conf, RECOMMENDATIONS)
    target = DeltaTable.forName(spark, loc) if conf.storage.catalog else DeltaTable.forPath(spark, loc)
    (
        target.alias("t")
        .merge(spark.createDataFrame(records, RECOMMENDATIONS_SCHEMA).alias("s"), "t.user_id = s.user_id")
        .whenMatchedUpdateAll(condition=update_when)
        .whenNotMatchedInsertAll(condition=insert_when)
        .execute()
    )
    last = target.history(1).select("version", "timestamp").collect()[0]
    return int(last["version"]), last["timestamp"]


def log_batch(
    spark: SparkSession, conf: Config, rows: list[tuple], app_id: str, batch_id: int, engine: str
) -> None:
    """Append a micro-batch's row(s) to ``silver.nearline_batches`` once per (app_id, batch_id)."""
    if engine == "delta-rs":
        names = BATCHES_SCHEMA.fieldNames()
        tables.rs_append_once(
            tables.local_path(conf, BATCHES),
            [dict(zip(names, r, strict=True)) for r in rows],
            app_id,
            batch_id,
        )
    else:
        tables.append_once(spark.createDataFrame(rows, BATCHES_SCHEMA), conf, BATCHES, app_id, batch_id)
