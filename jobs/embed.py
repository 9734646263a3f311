"""Embeddings with a Delta cache: a text is embedded once per model, ever.

``silver.text_vectors`` holds (embedding_model, text_hash, text, vector, embedded_at).
``embed_texts`` looks each distinct text up there, embeds only the missing ones (in
``mapInPandas``, the model loaded once per Python worker: ``udfs.embedding``), appends them
in one commit and returns the input rows with their vectors. A changed model gives a new
``embedding_model`` and so new vectors; vectors of two models are never mixed.

Example
-------
>>> vectors = embed_texts(spark, conf, queries_df, "query")     # + vector, embedding_model
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.categories import UNKNOWN_CATEGORY
from core.config import Config
from udfs.embedding import EmbeddingSpec, embed_column, spec_from_conf

log = logging.getLogger(__name__)

TEXT_VECTORS = "silver.text_vectors"


def text_hash(text: F.Column) -> F.Column:
    """sha256 of the text, the cache key with the model id."""
    return F.sha2(F.coalesce(text, F.lit("")), 256)


def embed_texts(
    spark: SparkSession,
    conf: Config,
    df: DataFrame,
    text_col: str,
    spec: EmbeddingSpec | None = None,
    label: str = "embed",
) -> DataFrame:
    """``df`` + ``vector`` (array<float>, L2-normalised) and ``embedding_model``.

    Texts already in ``silver.text_vectors`` for this model are not embedded again.
    """
    spec = spec or spec_from_conf(conf)
    model_id = spec.model_id
    distinct = df.select(F.col(text_col).alias("text")).filter(F.col("text").isNotNull()).distinct()
    distinct = distinct.withColumn("text_hash", text_hash(F.col("text")))
    cached = None
    if tables.exists(spark, conf, TEXT_VECTORS):
        cached = (
            tables.read(spark, conf, TEXT_VECTORS)
            .filter(F.col("embedding_model") == model_id)
            .select("text_hash", "vector")
        )
        missing = distinct.join(cached, "text_hash", "left_anti")
    else:
        missing = distinct
    # Cheap to count (text hashes only); it decides whether a model is loaded at all.
    missing = missing.persist()
    n_missing, n_total = missing.count(), distinct.count()
    log.info(
        f"{label}: {n_total:,} distinct texts, {n_total - n_missing:,} cached, {n_missing:,} to embed "
        f"({model_id})",
    )
    if n_missing:
        started = time.perf_counter()
        # Spread the work over the cores: a few big partitions keep model batches full.
        parts = max(1, min(spark.sparkContext.defaultParallelism, n_missing // 256 + 1))
        new = (
            missing.repartition(parts, "text_hash")
            .transform(embed_column("text", spec))
            .select(
                "embedding_model", "text_hash", "text", "vector", F.current_timestamp().alias("embedded_at")
            )
        )
        tables.append(new, conf, TEXT_VECTORS)
        seconds = time.perf_counter() - started
        log.info(
            f"{label}: embedded {n_missing:,} texts in {seconds:.1f}s ({n_missing / seconds:,.0f}/s)",
        )
    missing.unpersist()
    if not tables.exists(spark, conf, TEXT_VECTORS):  # nothing to embed, nothing cached yet
        return df.withColumn("vector", F.lit(None).cast("array<float>")).withColumn(
            "embedding_model", F.lit(model_id)
        )
    vectors = (
        tables.read(spark, conf, TEXT_VECTORS)
        .filter(F.col("embedding_model") == model_id)
        .select("text_hash", "vector")
        # A crash between two appends of the same text could leave two rows: keep one.
        .dropDuplicates(["text_hash"])
    )
    return (
        df.withColumn("_text_hash", text_hash(F.col(text_col)))
        .join(vectors.withColumnRenamed("text_hash", "_text_hash"), "_text_hash", "left")
        .drop("_text_hash")
        .withColumn("embedding_model", F.lit(model_id))
    )


# --- the stage: item vectors ------------------------------------------------------------

ITEM_VECTORS = "silver.item_vectors"


def item_texts(profiles: DataFrame) -> DataFrame:
    """item_id, vector_id, leaf_category, price_band, text: what an item is, for the model.

    ``text`` = short title, category and factor values (``"Jumbo Bag Red Retrospot. bags.
    jumbo, red, retrospot"``), so a query naming a category or a factor finds the item.
    An item without a title (a catalog that only has ids, such as Taobao UserBehavior)
    is embedded by its category alone, so that queries naming the category still find it;
    items with neither are left out. ``vector_id`` = xxhash64 of the item id without its
    sign bit: the non-negative int64 id FAISS stores (-1 means "no result" there).
    """
    factors = F.array_join(F.transform("decision_factors", lambda f: f["value"]), ", ")
    title = F.coalesce("short_title", "title")
    known_category = F.col("leaf_category").isNotNull() & (F.col("leaf_category") != UNKNOWN_CATEGORY)
    return profiles.filter(title.isNotNull() | known_category).select(
        "item_id",
        F.xxhash64("item_id").bitwiseAND(F.lit(0x7FFFFFFFFFFFFFFF)).alias("vector_id"),
        "leaf_category",
        "price_band",
        F.concat_ws(". ", title, "leaf_category", F.when(F.length(factors) > 0, factors)).alias("text"),
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``silver.item_vectors`` (every profiled item with a title or a category); only texts new to
    the cache are embedded. User query vectors are embedded by ``jobs.q2i`` the same way."""
    profiles = tables.read(spark, conf, "silver.item_profiles")
    items = item_texts(profiles)
    vectors = embed_texts(spark, conf, items, "text", label="embed: items")
    tables.overwrite(vectors, conf, ITEM_VECTORS)
    out = tables.read(spark, conf, ITEM_VECTORS)
    n, missing = out.count(), out.filter(F.col("vector").isNull()).count()
    log.info(f"embed: {ITEM_VECTORS} {n:,} items, without a vector {missing:,}")
    return {"items": n, "without_vector": missing}
