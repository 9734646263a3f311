"""Q2I: user queries -> item candidates from the FAISS shards -> ``gold.q2i_candidates``.

1. Q2Vec: the queries of ``gold.user_queries`` are embedded (``jobs.embed.embed_texts``:
   the model once per Python worker, each text once per model, ever).
2. Search: every distinct query text goes to every shard of ``gold.index_manifest``
   (buyers share texts: each is searched once, its hits given to every query that asks
   it); the pairs are partitioned by shard, so each task loads its shard file once (a
   Python worker keeps the newest build's shards) and searches its texts in one batch for
   the top ``q2i.k``. Per text the shards' results are merged to the global top ``q2i.k``
   (score, then smaller id; flat and HNSW shards score their hits in float64 from the
   stored vectors, and scores are kept at ``udfs.vector_index.SCORE_DECIMALS`` places,
   so that items the embedding's float noise alone sets apart are ordered the same way
   by every process).
3. Candidates, the source's two paths: *non-personalised high relevance* (cosine at
   least ``q2i.high_relevance``) and *personalised dynamic weighting*: ``score =
   relevance x kind weight + cfv_match x q2i.cfv_match + price_match x q2i.price_band``,
   where ``cfv_match`` is the weight (0..1) of the strongest factor of the item in the
   user's long-term or recent CFV for the item's category and ``price_match`` says the
   user bought that price band in that category. Per query the top ``q2i.per_query`` by
   score are kept, plus every high-relevance one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.config import Config
from core.rundate import resolve_run_date
from jobs.embed import embed_texts
from udfs.features import dynamic_score
from udfs.vector_index import load_shard
from udfs.vector_index import search as shard_search

log = logging.getLogger(__name__)

CANDIDATES = "gold.q2i_candidates"
HITS_SCHEMA = "query_id string, vector_id long, relevance float"


def search_shards(pairs: DataFrame, k: int, nprobe: int, ef_search: int) -> DataFrame:
    """(query_id, vector, path) pairs -> query_id, vector_id, relevance: each shard's top k."""

    def search(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import numpy as np

        for pdf in batches:
            for path, group in pdf.groupby("path", sort=False):
                queries = np.asarray(group["vector"].tolist(), dtype=np.float32)
                scores, ids = shard_search(load_shard(path), queries, k, nprobe=nprobe, ef_search=ef_search)
                qids = np.repeat(group["query_id"].to_numpy(), ids.shape[1])
                flat_ids, flat_scores = ids.reshape(-1), scores.reshape(-1)
                keep = flat_ids >= 0
                yield pd.DataFrame(
                    {"query_id": qids[keep], "vector_id": flat_ids[keep], "relevance": flat_scores[keep]}
                )

    return pairs.mapInPandas(search, HITS_SCHEMA)


def merge_top_k(hits: DataFrame, k: int) -> DataFrame:
    """Per search key (``query_id``: a query text in ``run``) the best ``k`` hits over all
    shards (an item once, its best score)."""
    best = Window.partitionBy("query_id").orderBy(F.desc("relevance"), "vector_id")
    return (
        hits.groupBy("query_id", "vector_id")
        .agg(F.max("relevance").alias("relevance"))
        .withColumn("rank_in_query", F.row_number().over(best))
        .filter(F.col("rank_in_query") <= k)
    )


def user_preferences(spark: SparkSession, conf: Config) -> tuple[DataFrame, DataFrame]:
    """(user_id, leaf_category, factor, weight 0..1) from long-term and recent CFV, and
    (user_id, leaf_category, price_band) of the user's purchases."""
    cfv = (
        tables.read(spark, conf, "gold.cfv")
        .filter(F.col("horizon").isin("long_term", "recent"))
        .select("user_id", "leaf_category", F.explode("factors").alias("f"))
        .groupBy("user_id", "leaf_category", F.col("f.factor").alias("factor"))
        .agg((F.max("f.weight") / 10.0).alias("weight"))
    )
    bands = (
        tables.read(spark, conf, "bronze.events")
        .filter(F.col("event_type") == "purchase")
        .select("user_id", "item_id")
        .join(
            tables.read(spark, conf, "silver.item_profiles").select("item_id", "leaf_category", "price_band"),
            "item_id",
        )
        .filter(F.col("price_band").isNotNull())
        .select("user_id", "leaf_category", "price_band")
        .distinct()
    )
    return cfv, bands


def personalise(
    candidates: DataFrame, prefs: DataFrame, bands: DataFrame, profiles: DataFrame, conf: Config
) -> DataFrame:
    """Add cfv_match, price_match and score (see the module docstring)."""
    qc = conf.q2i
    factors = profiles.select("item_id", F.explode("decision_factors.value").alias("factor")).select(
        "item_id", F.lower(F.trim("factor")).alias("factor")
    )
    match = (
        candidates.select("user_id", "item_id", "leaf_category")
        .distinct()
        .join(factors, "item_id")
        .join(prefs, ["user_id", "leaf_category", "factor"])
        .groupBy("user_id", "item_id")
        .agg(F.max("weight").alias("cfv_match"))
    )
    kind_weight = F.create_map(*[x for k, w in qc.kind_weights.items() for x in (F.lit(k), F.lit(float(w)))])
    return (
        candidates.join(match, ["user_id", "item_id"], "left")
        .join(bands.withColumn("price_match", F.lit(1.0)), ["user_id", "leaf_category", "price_band"], "left")
        .withColumn("cfv_match", F.coalesce("cfv_match", F.lit(0.0)))
        .withColumn("price_match", F.coalesce("price_match", F.lit(0.0)))
        .withColumn(
            "score",
            dynamic_score(
                F.col("relevance"),
                F.coalesce(kind_weight[F.col("kind")], F.lit(1.0)),
                F.col("cfv_match"),
                F.col("price_match"),
                qc,
            ),
        )  # fmt: skip
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.q2i_candidates``; returns queries, candidates and users."""
    qc = conf.q2i
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    for needed in ("gold.user_queries", "gold.index_manifest", "silver.item_vectors"):
        if not tables.exists(spark, conf, needed):
            raise RuntimeError(f"q2i: {needed} is missing: run the u2q, embed and index stages first")
    manifest = tables.read(spark, conf, "gold.index_manifest").filter(F.col("count") > 0)
    shards = manifest.select("shard", "path", "embedding_model").collect()
    missing = [r["path"] for r in shards if "://" not in r["path"] and not os.path.exists(r["path"])]
    if missing:
        raise RuntimeError(f"q2i: shard files missing (rebuild with the index stage): {missing[:3]}")
    queries = tables.read(spark, conf, "gold.user_queries")
    # Buyers ask the same queries (205k queries, 42k distinct texts at 30,000 synthetic
    # buyers): each text is embedded and searched once, and its hits go to every query
    # that asks it. The text is the search's key (``query_id`` in search_shards' frames).
    texts = embed_texts(spark, conf, queries.select("query").distinct(), "query", label="q2i: queries")
    models = {r["embedding_model"] for r in shards}
    if shards and models != {texts.select("embedding_model").first()[0]}:
        raise RuntimeError(
            f"q2i: the index was built with {models}, queries use another model: re-run embed and index"
        )
    n_shards = max(1, len(shards))
    pairs = (
        texts.filter(F.col("vector").isNotNull())
        .select(F.col("query").alias("query_id"), "vector")
        .crossJoin(F.broadcast(manifest.select("shard", "path")))
        .repartition(n_shards, "shard")
    )
    hits = merge_top_k(search_shards(pairs, qc.k, qc.nprobe, qc.ef_search), qc.k).withColumnRenamed(
        "query_id", "query"
    )
    items = tables.read(spark, conf, "silver.item_vectors").select(
        "vector_id", "item_id", "leaf_category", "price_band"
    )
    candidates = (
        hits.join(items, "vector_id")
        .join(
            queries.select(
                "user_id", "query_id", "kind", "query", "reason", F.col("leaf_category").alias("query_category")
            ),
            "query",
        )
    )  # fmt: skip
    prefs, bands = user_preferences(spark, conf)
    profiles = tables.read(spark, conf, "silver.item_profiles")
    scored = personalise(candidates, prefs, bands, profiles, conf)
    by_score = Window.partitionBy("query_id").orderBy(F.desc("score"), "vector_id")
    high = F.col("relevance") >= qc.high_relevance
    kept = (
        scored.withColumn("rank_by_score", F.row_number().over(by_score))
        .withColumn("personalised", F.col("rank_by_score") <= qc.per_query)
        .filter(F.col("personalised") | high)
        .withColumn(
            "path",
            F.when(F.col("personalised") & high, "both").when(high, "high_relevance").otherwise("personalised"),
        )
        .select(
            "user_id", "query_id", "kind", "query", "reason", "query_category", "item_id", "leaf_category",
            "price_band", F.round("relevance", 5).alias("relevance"), F.round("cfv_match", 3).alias("cfv_match"),
            "price_match", F.round("score", 5).alias("score"), "rank_in_query", "path",
            F.lit(run_date).alias("as_of"),
        )
    )  # fmt: skip
    tables.overwrite(kept, conf, CANDIDATES)
    out = tables.read(spark, conf, CANDIDATES)
    counts = {
        "queries": out.select("query_id").distinct().count(),
        "candidates": out.count(),
        "users": out.select("user_id").distinct().count(),
    }
    log.info(
        f"q2i: {CANDIDATES} {counts['candidates']:,} candidates for {counts['queries']:,} queries of "
        f"{counts['users']:,} users from {len(shards)} shard(s)",
    )
    return counts
