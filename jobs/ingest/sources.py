"""Source adapters: raw files -> staged rows (see ``staging.py`` for the contract).

- ``online_retail``: UCI Online Retail invoice lines (CSV, header, optionally gzipped).
- ``taobao_userbehavior``: Tianchi UserBehavior (CSV, no header: user, item, category,
  behaviour, epoch seconds).
- ``generic``: our documented format (docs/ingest.md) as CSV, JSON lines or Parquet.
- ``synthetic``: generated on the fly, see ``synthetic.py``.

Every adapter reads all fields as text first, so that the raw record can be kept
verbatim for the quarantine and the parsing rules are ours, not the reader's.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.config import SourceConf, source_path
from jobs.ingest.staging import blank_to_null, conform, local_time_to_utc, utc_to_local_day

CORRUPT = "_corrupt_record"

# StockCodes that are not products: postage, fees, manual adjustments, samples.
ONLINE_RETAIL_NON_PRODUCT = (
    "POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS",
)  # fmt: skip
ONLINE_RETAIL_COLUMNS = [
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
    "CustomerID", "Country",
]  # fmt: skip
TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
TAOBAO_EVENT_TYPES = {"pv": "view", "fav": "favorite", "cart": "cart", "buy": "purchase"}

GENERIC_REQUIRED = ["user_id", "event_type", "ts"]
GENERIC_KNOWN = [
    "event_id", "user_id", "item_id", "event_type", "ts", "query", "quantity", "amount",
    "order_id", "title", "category_path", "leaf_category", "price", "image_url",
]  # fmt: skip


class IngestError(RuntimeError):
    """A source cannot be read at all (as opposed to bad rows, which are quarantined)."""


def list_input_files(path: str) -> list[str]:
    """Files a source path stands for (a file, a folder or a glob), each checked readable.

    Remote paths (``s3://``, ``dbfs:/`` ...) are left to Spark.
    """
    if "://" in path or path.startswith("dbfs:"):
        return [path]
    p = Path(source_path(path))
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_")))
    else:
        files = sorted(glob.glob(str(p)))
    if not files:
        raise IngestError(f"no input files at {path}")
    for f in files:
        _check_readable(f)
    return files


def _check_readable(f: str) -> None:
    if not os.access(f, os.R_OK):
        raise IngestError(f"cannot read input file {f}: permission denied")
    try:
        if f.endswith(".gz"):
            with gzip.open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        else:
            with open(f, "rb") as fh:
                fh.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise IngestError(f"cannot read input file {f}: {e}") from None


def read_text_table(spark: SparkSession, files: list[str], columns: list[str], header: bool) -> DataFrame:
    """CSV files as all-string columns, keeping malformed lines in ``_corrupt_record``."""
    schema = T.StructType([T.StructField(c, T.StringType()) for c in columns + [CORRUPT]])
    return (
        spark.read.option("header", header)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("enforceSchema", True)
        .schema(schema)
        .csv(files)
        .withColumn("source_file", F.input_file_name())
    )


def _origin(src: SourceConf, columns: list[str]) -> list[Column]:
    """The staged columns saying where a record came from: ``source``, ``source_file`` and
    ``raw``, the record as text (the line itself when malformed, else its fields as JSON)."""
    raw = F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*columns)))
    return [F.lit(src.name).alias("source"), F.col("source_file"), raw.alias("raw")]


def _number(c: Column, kind: str) -> Column:
    return blank_to_null(c).try_cast(kind)


def _unparseable(*pairs: tuple[Column, Column]) -> Column:
    """True where a text field is present but its parsed value is null."""
    cond = F.lit(False)
    for text, parsed in pairs:
        cond = cond | (blank_to_null(text).isNotNull() & parsed.isNull())
    return cond


def online_retail(spark: SparkSession, src: SourceConf, files: list[str]) -> DataFrame:
    """Invoice lines -> purchase / cancel events; Description -> item title."""
    raw = read_text_table(spark, files, ONLINE_RETAIL_COLUMNS, header=True)
    qty = _number(F.col("Quantity"), "long")
    price = _number(F.col("UnitPrice"), "double")
    local = F.try_to_timestamp(F.trim("InvoiceDate"), F.lit("yyyy-MM-dd HH:mm:ss"))
    ts, day = local_time_to_utc(local, src.timezone)
    stock = F.upper(F.trim("StockCode"))
    invoice = F.trim("InvoiceNo")
    # Bookkeeping notes ("damaged", "check", "?") stand where a title should; real titles
    # are upper case. A note is kept in extras, never used as the item's title.
    description = blank_to_null(F.col("Description"))
    is_note = ~description.rlike("[A-Z]{2}")
    adapter_reason = (
        F.when(F.col(CORRUPT).isNotNull(), "malformed_line")
        .when(stock.isin(*ONLINE_RETAIL_NON_PRODUCT), "non_product_line")
        .when(_unparseable((F.col("Quantity"), qty), (F.col("UnitPrice"), price)), "unparseable_number")
    )
    staged = raw.select(
        *_origin(src, ONLINE_RETAIL_COLUMNS),
        # CustomerID is written as a float ("17850.0").
        F.regexp_replace(blank_to_null(F.col("CustomerID")), r"\.0+$", "").alias("user_id"),
        stock.alias("item_id"),
        F.when(invoice.startswith("C"), "cancel").when(invoice.isNotNull(), "purchase").alias("event_type"),
        F.col("InvoiceDate").alias("ts_raw"),
        ts.alias("ts"),
        day.alias("dt"),
        qty.alias("quantity"),
        F.round(qty * price, 2).alias("amount"),
        invoice.alias("order_id"),
        F.map_filter(
            F.create_map(
                F.lit("country"),
                F.trim("Country"),
                F.lit("unit_price"),
                F.trim("UnitPrice"),
                F.lit("note"),
                F.when(is_note, description),
            ),
            lambda k, v: v.isNotNull(),
        ).alias("extras"),  # fmt: skip
        F.when(~is_note, description).alias("title"),
        price.alias("price"),
        adapter_reason.alias("adapter_reason"),
    )
    return conform(staged)


def taobao_userbehavior(spark: SparkSession, src: SourceConf, files: list[str]) -> DataFrame:
    """pv -> view, fav -> favorite, cart -> cart, buy -> purchase; category ids as leaves."""
    raw = read_text_table(spark, files, TAOBAO_COLUMNS, header=False)
    epoch = _number(F.col("timestamp"), "long")
    ts = F.when(epoch.isNotNull(), F.timestamp_seconds(epoch))
    behavior = F.lower(F.trim("behavior_type"))
    mapping = F.create_map(*[F.lit(x) for kv in TAOBAO_EVENT_TYPES.items() for x in kv])
    category = blank_to_null(F.col("category_id"))
    staged = raw.select(
        *_origin(src, TAOBAO_COLUMNS),
        blank_to_null(F.col("user_id")).alias("user_id"),
        blank_to_null(F.col("item_id")).alias("item_id"),
        F.coalesce(mapping[behavior], behavior).alias("event_type"),
        F.col("timestamp").alias("ts_raw"),
        ts.alias("ts"),
        utc_to_local_day(ts, src.timezone).alias("dt"),
        F.when(behavior == "buy", F.lit(1)).alias("quantity"),
        category.alias("category_path"),
        category.alias("leaf_category"),
        F.when(F.col(CORRUPT).isNotNull(), "malformed_line").alias("adapter_reason"),
    )
    return conform(staged)


def _read_generic_raw(spark: SparkSession, src: SourceConf, files: list[str]) -> DataFrame:
    suffixes = Path(files[0]).suffixes
    fmt = src.file_format or (suffixes[0].lstrip(".") if suffixes else None)
    fmt = {"jsonl": "json", "ndjson": "json"}.get(fmt, fmt)
    if fmt == "csv":
        header = spark.read.option("header", True).csv(files[0]).columns
        df = read_text_table(spark, files, header, header=True)
    elif fmt == "json":
        df = (
            spark.read.option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("primitivesAsString", True)
            .json(files)
        )
        if CORRUPT not in df.columns:
            df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
        df = df.withColumn("source_file", F.input_file_name())
    elif fmt == "parquet":
        df = spark.read.parquet(*files).withColumn(CORRUPT, F.lit(None).cast("string"))
        df = df.withColumn("source_file", F.input_file_name())
    else:
        raise IngestError(
            f"source {src.name}: cannot tell the file format of {files[0]}; set file_format to csv, json or parquet"
        )
    return df


def generic(spark: SparkSession, src: SourceConf, files: list[str]) -> DataFrame:
    """Our documented format: one event per record, item facts optional on the same record."""
    df = _read_generic_raw(spark, src, files)
    data_cols = [c for c in df.columns if c not in (CORRUPT, "source_file")]
    return generic_frame(
        df.select(*[F.col(c).cast("string") for c in data_cols], CORRUPT, "source_file"), src
    )


def generic_frame(df: DataFrame, src: SourceConf) -> DataFrame:
    """Staged rows from a DataFrame of generic-format columns (all strings)."""
    if CORRUPT not in df.columns:
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    if "source_file" not in df.columns:
        df = df.withColumn("source_file", F.lit(None).cast("string"))
    data_cols = [c for c in df.columns if c not in (CORRUPT, "source_file")]
    missing = [c for c in GENERIC_REQUIRED if c not in data_cols]
    if missing:
        raise IngestError(
            f"source {src.name}: required columns missing: {', '.join(missing)} (have: {', '.join(data_cols)})"
        )
    for c in GENERIC_KNOWN:
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("string"))
    extra_cols = sorted(c for c in data_cols if c not in GENERIC_KNOWN)
    extras = (
        F.map_filter(
            F.create_map(*[x for c in extra_cols for x in (F.lit(c), F.col(c))]),
            lambda k, v: v.isNotNull(),
        )
        if extra_cols
        else F.lit(None)
    )
    ts_text = blank_to_null(F.col("ts"))
    # ISO-8601 text, or epoch seconds.
    local = F.coalesce(
        F.try_to_timestamp(ts_text),
        F.when(ts_text.rlike(r"^\d{9,10}$"), F.timestamp_seconds(ts_text.cast("long"))),
    )
    ts, day = local_time_to_utc(local, src.timezone)
    qty = _number(F.col("quantity"), "long")
    amount = _number(F.col("amount"), "double")
    price = _number(F.col("price"), "double")
    staged = df.select(
        *_origin(src, data_cols),
        blank_to_null(F.col("event_id")).alias("event_key"),
        blank_to_null(F.col("user_id")).alias("user_id"),
        blank_to_null(F.col("item_id")).alias("item_id"),
        F.lower(blank_to_null(F.col("event_type"))).alias("event_type"),
        F.col("ts").alias("ts_raw"),
        ts.alias("ts"),
        day.alias("dt"),
        blank_to_null(F.col("query")).alias("query"),
        qty.alias("quantity"),
        amount.alias("amount"),
        blank_to_null(F.col("order_id")).alias("order_id"),
        extras.alias("extras"),
        blank_to_null(F.col("title")).alias("title"),
        blank_to_null(F.col("category_path")).alias("category_path"),
        F.coalesce(
            blank_to_null(F.col("leaf_category")),
            F.trim(F.element_at(F.split(blank_to_null(F.col("category_path")), ">"), -1)),
        ).alias("leaf_category"),
        price.alias("price"),
        blank_to_null(F.col("image_url")).alias("image_url"),
        F.when(F.col(CORRUPT).isNotNull(), "malformed_line")
        .when(
            _unparseable((F.col("quantity"), qty), (F.col("amount"), amount), (F.col("price"), price)),
            "unparseable_number",
        )
        .alias("adapter_reason"),
    )
    return conform(staged)


ADAPTERS = {
    "online_retail": online_retail,
    "taobao_userbehavior": taobao_userbehavior,
    "generic": generic,
}
