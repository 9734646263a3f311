"""The staged-row contract every source adapter produces, and the validation on it.

An adapter turns one raw source into *staged rows*: one row per input record, with the
raw record kept as text, every field already mapped to the bronze vocabulary, and
``adapter_reason`` set where the adapter itself knows the record is unusable (a
malformed line, a postage line). ``validate`` then applies the rules every source
shares; ``to_events`` / ``to_quarantine`` / ``to_items`` split the result.

Nothing is dropped silently: every staged row ends as an event, a quarantine row or an
exact duplicate, and the ingest summary reconciles the three against the input.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

EVENT_TYPES = ("search", "view", "click", "favorite", "cart", "inquiry", "purchase", "cancel")

# Largest |amount| and |quantity| we believe a single wholesale event can carry.
MAX_ABS_AMOUNT = 1e8
MAX_ABS_QUANTITY = 1e7
EARLIEST_TS = dt.datetime(2000, 1, 1)

STAGED_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), False),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("raw", T.StringType(), False),
        T.StructField("event_key", T.StringType(), True),
        T.StructField("user_id", T.StringType(), True),
        T.StructField("item_id", T.StringType(), True),
        T.StructField("event_type", T.StringType(), True),
        T.StructField("ts_raw", T.StringType(), True),
        T.StructField("ts", T.TimestampType(), True),
        T.StructField("dt", T.DateType(), True),
        T.StructField("query", T.StringType(), True),
        T.StructField("quantity", T.LongType(), True),
        T.StructField("amount", T.DoubleType(), True),
        T.StructField("order_id", T.StringType(), True),
        T.StructField("extras", T.MapType(T.StringType(), T.StringType()), True),
        T.StructField("title", T.StringType(), True),
        T.StructField("category_path", T.StringType(), True),
        T.StructField("leaf_category", T.StringType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("image_url", T.StringType(), True),
        T.StructField("adapter_reason", T.StringType(), True),
    ]
)

EVENT_COLUMNS = [
    "event_id", "user_id", "item_id", "event_type", "ts", "dt", "query", "quantity",
    "amount", "order_id", "source", "extras",
]  # fmt: skip

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("quarantine_id", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("raw", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("detail", T.StringType(), True),
        T.StructField("run_id", T.StringType(), False),
    ]
)


def conform(df: DataFrame) -> DataFrame:
    """Select the staged columns in order, with their types; missing ones become null."""
    cols = []
    for f in STAGED_SCHEMA.fields:
        c = F.col(f.name) if f.name in df.columns else F.lit(None)
        cols.append(c.cast(f.dataType).alias(f.name))
    return df.select(*cols)


def blank_to_null(c: Column) -> Column:
    """Trimmed string, or null where it is empty."""
    t = F.trim(c)
    return F.when(t == "", None).otherwise(t)


def local_time_to_utc(local: Column, timezone: str) -> tuple[Column, Column]:
    """(UTC instant, local calendar day) of a wall-clock timestamp in ``timezone``.

    The session time zone is UTC, so a parsed wall-clock value is shifted once here.
    """
    return F.to_utc_timestamp(local, timezone), F.to_date(local)


def utc_to_local_day(ts: Column, timezone: str) -> Column:
    return F.to_date(F.from_utc_timestamp(ts, timezone))


def _reason_rules(now: dt.datetime) -> list[tuple[str, Column, Column]]:
    """(reason, condition, detail) in order; the first rule that holds names the reason."""
    q, a, et = F.col("quantity"), F.col("amount"), F.col("event_type")
    uid, iid = F.col("user_id"), F.col("item_id")
    return [
        ("adapter", F.col("adapter_reason").isNotNull(), F.lit(None)),
        (
            "missing_timestamp",
            F.col("ts").isNull() & blank_to_null(F.col("ts_raw")).isNull(),
            F.lit(None),
        ),
        ("unparseable_timestamp", F.col("ts").isNull(), F.col("ts_raw")),
        (
            "timestamp_out_of_range",
            (F.col("ts") < F.lit(EARLIEST_TS)) | (F.col("ts") > F.lit(now + dt.timedelta(days=1))),
            F.col("ts").cast("string"),
        ),
        ("missing_event_type", et.isNull(), F.lit(None)),
        ("unknown_event_type", ~et.isin(*EVENT_TYPES), et),
        ("missing_user_id", blank_to_null(uid).isNull(), F.lit(None)),
        ("missing_item_id", (et != "search") & blank_to_null(iid).isNull(), et),
        (
            "missing_query",
            (et == "search") & blank_to_null(iid).isNull() & blank_to_null(F.col("query")).isNull(),
            F.lit(None),
        ),
        (
            "impossible_quantity",
            (F.abs(q) > MAX_ABS_QUANTITY)
            | ((et == "purchase") & (q <= 0))
            | ((et == "cancel") & (q > 0))
            | (~et.isin("purchase", "cancel") & (q < 0)),
            F.concat_ws(" ", et, q.cast("string")),
        ),
        (
            "impossible_amount",
            F.isnan(a)
            | (F.abs(a) > MAX_ABS_AMOUNT)
            | (F.col("price") < 0)
            | F.isnan(F.col("price"))
            | ((et == "cancel") & (a > 0))
            | ((et != "cancel") & (a < 0)),
            F.concat_ws(" ", et, a.cast("string"), F.col("price").cast("string")),
        ),
    ]


def validate(df: DataFrame, now: dt.datetime | None = None) -> DataFrame:
    """Add ``reason`` (null for a good row) and ``detail`` from the shared rules.

    Quantities and amounts are signed: purchases positive, cancellations negative
    (they reduce the buyer's net GMV), other events non-negative or null.
    """
    now = now or dt.datetime.utcnow()
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for name, cond, det in reversed(_reason_rules(now)):
        # coalesce: a null comparison (e.g. a null quantity) means the rule does not hold.
        hit = F.coalesce(cond, F.lit(False))
        if name == "adapter":
            reason = F.when(hit, F.col("adapter_reason")).otherwise(reason)
            detail = F.when(hit, F.lit(None).cast("string")).otherwise(detail)
        else:
            reason = F.when(hit, F.lit(name)).otherwise(reason)
            detail = F.when(hit, det.cast("string")).otherwise(detail)
    return df.withColumn("reason", reason).withColumn("detail", detail)


def _hash_id(*cols: Column) -> Column:
    return F.substring(F.sha2(F.concat_ws("\u0001", *cols), 256), 1, 32)


def with_event_ids(validated: DataFrame) -> DataFrame:
    """Add a deterministic ``event_id``; quarantine accepted rows that reuse one.

    ``event_id`` hashes the source's own event key where it has one, else the whole raw
    record, so re-ingesting the same files yields the same ids. Two different records
    with one source event id can't both be the event: the first (by raw text) is kept
    and the others get the reason ``conflicting_event_id``.
    """
    key = F.coalesce(F.col("event_key"), F.col("raw"))
    df = validated.withColumn("event_id", _hash_id(F.col("source"), key))
    accepted = F.col("reason").isNull()
    rank = F.row_number().over(Window.partitionBy("event_id", accepted).orderBy("raw"))
    conflict = accepted & (rank > 1)
    return df.withColumn(
        "detail", F.when(conflict, F.col("event_key")).otherwise(F.col("detail"))
    ).withColumn("reason", F.when(conflict, F.lit("conflicting_event_id")).otherwise(F.col("reason")))


def to_events(validated: DataFrame) -> DataFrame:
    """Accepted rows (after ``with_event_ids``) as bronze events."""
    return validated.filter(F.col("reason").isNull()).select(
        "event_id",
        F.trim("user_id").alias("user_id"),
        blank_to_null(F.col("item_id")).alias("item_id"),
        "event_type",
        "ts",
        "dt",
        blank_to_null(F.col("query")).alias("query"),
        "quantity",
        "amount",
        "order_id",
        "source",
        "extras",
    )


def to_quarantine(validated: DataFrame, run_id: str) -> DataFrame:
    """Rejected rows with the raw record, the reason and the run that saw them first."""
    return validated.filter(F.col("reason").isNotNull()).select(
        _hash_id(F.col("source"), F.col("raw")).alias("quarantine_id"),
        "source",
        "source_file",
        "raw",
        "reason",
        "detail",
        F.lit(run_id).alias("run_id"),
    )


def to_items(validated: DataFrame) -> DataFrame:
    """Catalog facts seen in this batch: one row per item, latest observation wins.

    Rows rejected only for event-level reasons (e.g. a guest purchase with no user id)
    still tell us a product's title and price, so they count here.
    """
    item_ok = (
        blank_to_null(F.col("item_id")).isNotNull()
        & F.col("ts").isNotNull()
        & (F.col("reason").isNull() | F.col("reason").isin("missing_user_id"))
    )
    rows = validated.filter(item_ok).withColumn("item_id", F.trim("item_id"))

    def latest(c: str) -> Column:
        return F.max_by(F.col(c), F.when(F.col(c).isNotNull(), F.struct("ts", c))).alias(c)

    priced = F.when(F.col("price") > 0, F.col("price"))
    return (
        rows.withColumn("price", priced)
        .groupBy("item_id")
        .agg(
            latest("title"),
            latest("category_path"),
            latest("leaf_category"),
            latest("price"),
            latest("image_url"),
            F.min("source").alias("source"),
            F.min("ts").alias("first_seen"),
            F.max("ts").alias("last_seen"),
        )
    )
