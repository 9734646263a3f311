"""The DataFrame sources: ``delta`` (a Delta table by path or a storage table) and
``derived`` (a DataFrame the caller computed)."""

from __future__ import annotations

import logging

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core import tables
from core.config import Config, TrendSourceConf, source_path
from jobs.trends.documents.records import (
    MAX_RAW_CHARS,
)

log = logging.getLogger(__name__)


def staged_from_frame(df: DataFrame, source: str, origin: str) -> DataFrame:
    """Staged rows of a DataFrame with a ``text`` column and optionally the other fields.

    ``doc_id`` (kept as it is) or ``id`` (the document's own id), title, url, lang,
    seed_query: any type, read as text; ``published_at``: timestamp, date or ISO text;
    ``categories``: array of strings or one ``|``-separated string. A column of another
    type is a configuration error (``ValueError``), not a row problem.
    """
    types = {f.name: f.dataType for f in df.schema.fields}
    if "text" not in types:
        raise ValueError(f"trends source {source!r}: {origin} has no text column (columns: {sorted(types)})")

    def text_col(name: str) -> Column:
        return F.col(name).cast("string") if name in types else F.lit(None).cast("string")

    published = types.get("published_at")
    if published is not None and not isinstance(
        published, (T.TimestampType, T.TimestampNTZType, T.DateType, T.StringType)
    ):
        raise ValueError(f"trends source {source!r}: published_at is {published.simpleString()}, not a time")
    cats = types.get("categories")
    if cats is None:
        categories = F.lit(None).cast("array<string>")
    elif isinstance(cats, T.StringType):
        categories = F.split(F.col("categories"), r"\|")
    elif isinstance(cats, T.ArrayType) and isinstance(cats.elementType, T.StringType):
        categories = F.col("categories")
    else:
        raise ValueError(
            f"trends source {source!r}: categories is {cats.simpleString()}, not array<string> or string"
        )
    fetched = types.get("fetched_at")
    fetched_at = (
        F.col("fetched_at").cast("timestamp")
        if isinstance(fetched, (T.TimestampType, T.TimestampNTZType))
        else F.lit(None).cast("timestamp")
    )
    return df.select(
        F.lit(source).alias("source"),
        F.lit(origin).alias("origin"),
        F.lit(None).cast("long").alias("row_number"),
        F.substring(F.to_json(F.struct(*[F.col(c) for c in df.columns])), 1, MAX_RAW_CHARS).alias("raw"),
        text_col("doc_id").alias("doc_id"),
        text_col("id").alias("id"),
        text_col("title").alias("title"),
        text_col("text").alias("text"),
        text_col("url").alias("url"),
        text_col("published_at").alias("published_at"),
        categories.alias("categories"),
        text_col("lang").alias("lang"),
        text_col("seed_query").alias("seed_query"),
        fetched_at.alias("fetched_at"),
        F.lit(None).cast("string").alias("reason"),
        F.lit(None).cast("string").alias("detail"),
    )


def read_delta(spark: SparkSession, conf: Config, src: TrendSourceConf) -> tuple[DataFrame, str]:
    if src.table:
        if not tables.exists(spark, conf, src.table):
            raise ValueError(f"trends source {src.name!r}: table {src.table} does not exist")
        return tables.read(spark, conf, src.table), f"table {src.table}"
    assert src.path is not None
    path = source_path(src.path)

    if not DeltaTable.isDeltaTable(spark, path):
        raise ValueError(f"trends source {src.name!r}: {src.path} is not a Delta table")
    return spark.read.format("delta").load(path), src.path
