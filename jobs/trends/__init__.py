"""Market trends: seed queries -> trend documents (RAG) -> selling points -> normalised trend queries.

The source's five steps, as of the run date:

1. seed-query library (``signals.seed_queries``): busiest leaf categories, hot terms and
   week-over-week growth terms -> ``silver.trend_seeds``;
2. category-trend analysis (``signals.category_trends``): rising factors (style, colour,
   material, design, IP ...) per category -> ``gold.category_trends``;
3. trend documents from the configured sources (``documents.load_documents``) ->
   ``bronze.trend_documents``; per seed the ``trends.top_documents`` most similar ones
   (cosine of embeddings, at least ``trends.min_relevance``, published within
   ``trends.document_days``);
4. the ``trend_query`` agent (LLM or heuristic) writes selling points and long-form
   queries per seed; a failed LLM answer keeps the heuristic's, marked ``failed``. The
   heuristic's queries are made of title words (``jobs.phrases``): the phrase of each
   category's best-selling items -> ``gold.category_phrases`` (also read by u2q for its
   exploration queries);
5. normalisation: every query is embedded and clustered (``udfs.clustering``: leaders
   at cosine >= ``trends.cluster_threshold``); each cluster becomes one row of
   ``gold.trend_queries`` (its query is the member nearest the cluster's centre) with
   category, selling points, member queries, sources and growth.

Example
-------
>>> from jobs.trends import run
>>> run(spark, load_config())          # or: discovery trends
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections import Counter

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core import tables
from core.categories import UNKNOWN_CATEGORY, load_rules
from core.config import Config
from core.rundate import resolve_run_date
from jobs import phrases
from jobs.agents import run_agent
from jobs.embed import embed_texts
from jobs.trends import signals
from jobs.trends.documents import load_documents
from udfs.agents import trend_query
from udfs.clustering import threshold_clusters

log = logging.getLogger(__name__)

SEEDS = "silver.trend_seeds"
CATEGORY_TRENDS = "gold.category_trends"
TREND_QUERIES = "gold.trend_queries"
CATEGORY_PHRASES = "gold.category_phrases"

TREND_QUERY_SCHEMA = T.StructType(
    [
        T.StructField("trend_query_id", T.StringType(), False),
        T.StructField("as_of", T.DateType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("query", T.StringType(), False),
        T.StructField("leaf_category", T.StringType(), True),
        T.StructField("selling_points", T.ArrayType(T.StringType()), False),
        T.StructField("member_queries", T.ArrayType(T.StringType()), False),
        T.StructField("cluster_size", T.IntegerType(), False),
        T.StructField("seed_ids", T.ArrayType(T.StringType()), False),
        T.StructField("seeds", T.ArrayType(T.StringType()), False),
        T.StructField("sources", T.ArrayType(T.StringType()), False),
        T.StructField("doc_ids", T.ArrayType(T.StringType()), False),
        T.StructField("growth", T.DoubleType(), True),
        T.StructField("support", T.DoubleType(), False),
        T.StructField("model", T.StringType(), False),
        T.StructField("prompt_version", T.StringType(), False),
        T.StructField("embedding_model", T.StringType(), False),
    ]
)


def _seed_search_text(seeds: DataFrame) -> DataFrame:
    """What a seed looks for in the documents: the seed, its category and rising factors."""
    factors = F.array_join(F.slice(F.transform("rising", lambda r: r["factor"]), 1, 3), ", ")
    category = F.when(F.col("leaf_category") != F.col("seed_text"), F.col("leaf_category"))
    return seeds.withColumn("search_text", F.concat_ws(" ", "seed_text", category, factors))


def retrieve(
    spark: SparkSession, conf: Config, seeds: DataFrame, documents: DataFrame, run_date: dt.date
) -> dict[str, list[dict]]:
    """seed_id -> its retrieved documents ``[{doc_id, source, title, text, score}]``, best first.

    Cosine similarity of embeddings, top ``trends.top_documents`` at least
    ``trends.min_relevance``, among documents published in the ``trends.document_days``
    before the end of ``run_date`` (undated documents always qualify; one published after
    ``run_date`` never does: a run as of a past date sees only what was known then). Seeds
    and documents are few (hundreds, thousands): the similarity matrix is computed on the driver.
    """
    tc = conf.trends
    if tc.top_documents == 0:
        return {}
    oldest = dt.datetime.combine(run_date - dt.timedelta(days=tc.document_days), dt.time())
    day_after = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time())
    docs = documents.filter(
        F.col("published_at").isNull()
        | ((F.col("published_at") >= F.lit(oldest)) & (F.col("published_at") < F.lit(day_after)))
    ).withColumn("doc_text", F.concat_ws(". ", "title", F.substring("text", 1, 1000)))
    doc_rows = embed_texts(spark, conf, docs, "doc_text", label="trends: documents").collect()
    if not doc_rows:
        return {}
    seed_rows = embed_texts(
        spark,
        conf,
        _seed_search_text(seeds).select("seed_id", "search_text"),
        "search_text",
        label="trends: seeds",
    ).collect()
    d = np.asarray([r["vector"] for r in doc_rows], dtype=np.float32)
    s = np.asarray([r["vector"] for r in seed_rows], dtype=np.float32)
    sims = s @ d.T
    out: dict[str, list[dict]] = {}
    for i, seed in enumerate(seed_rows):
        best = np.argsort(-sims[i], kind="stable")[: tc.top_documents]
        out[seed["seed_id"]] = [
            {
                "doc_id": doc_rows[j]["doc_id"],
                "source": doc_rows[j]["source"],
                "title": doc_rows[j]["title"],
                "text": (doc_rows[j]["text"] or "")[: trend_query.DOC_CHARS],
                "score": round(float(sims[i, j]), 4),
            }
            for j in best
            if sims[i, j] >= tc.min_relevance
        ]
    return out


def category_phrases(activity: DataFrame, titles: DataFrame, min_length: int) -> DataFrame:
    """leaf_category, phrase, words, items (``jobs.phrases``): per category the phrase of
    its items weighted by their activity in the trend span."""
    words = phrases.title_words(titles, min_length)
    return phrases.phrases(activity.dropDuplicates(["event_id"]), words, ["leaf_category"])


def agent_inputs(
    spark: SparkSession,
    seeds: DataFrame,
    retrieved: dict[str, list[dict]],
    phrase_table: DataFrame | None = None,
) -> DataFrame:
    """The trend_query agent's input rows: the seeds with ``rising_json``, ``documents_json``
    and ``category_phrase`` (null without one)."""
    docs = spark.createDataFrame(
        [(k, json.dumps(v, ensure_ascii=False)) for k, v in retrieved.items()] or [("", "[]")],
        "seed_id string, documents_json string",
    )
    rising = F.to_json(F.transform("rising", lambda r: r))
    rows = (
        seeds.join(docs, "seed_id", "left")
        .withColumn("rising_json", rising)
        .withColumn("documents_json", F.coalesce("documents_json", F.lit("[]")))
    )
    if phrase_table is None:
        return rows.withColumn("category_phrase", F.lit(None).cast("string"))
    return rows.join(
        phrase_table.select("leaf_category", F.col("phrase").alias("category_phrase")),
        "leaf_category",
        "left",
    )


def agent_context(conf: Config, run_date: dt.date) -> dict:
    """The agent's context: the run date and ``trends.queries_per_seed``."""
    return {"as_of": run_date.isoformat(), "max_queries": conf.trends.queries_per_seed}


def stored_agent_inputs(spark: SparkSession, conf: Config, run_date: dt.date) -> DataFrame:
    """The agent's input rows rebuilt from a warehouse the trends stage has run in (its
    seeds, documents and phrases as of ``run_date``): for benchmarks of the agent."""
    seeds = tables.read(spark, conf, SEEDS)
    retrieved = retrieve(spark, conf, seeds, tables.read(spark, conf, "bronze.trend_documents"), run_date)
    phrase_table = (
        tables.read(spark, conf, CATEGORY_PHRASES) if tables.exists(spark, conf, CATEGORY_PHRASES) else None
    )
    return agent_inputs(spark, seeds, retrieved, phrase_table)


def generate(conf: Config, inputs: DataFrame, run_date: dt.date) -> DataFrame:
    """seed_id, output (TrendQueries), status, error_class, model, prompt_version, ...: one
    row per seed; a failed LLM answer carries the heuristic's output, model and prompt
    version (``status`` stays ``failed`` so the failure shows; ``jobs.agents``)."""
    return run_agent(inputs, trend_query.AGENT, conf, ["seed_id"], agent_context(conf, run_date)).output


def query_growth(query: str, rising: list, seed_growth: float | None) -> float | None:
    """The growth a query stands for: the highest growth of the seed's rising factors it
    names (as whole words), else the seed's own growth."""
    text = query.lower()
    named = [
        r["growth"]
        for r in rising or []
        if re.search(rf"(?<!\w){re.escape(r['factor'].lower())}(?!\w)", text)
    ]
    return max(named) if named else seed_growth


def _mode(values: list) -> object:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


# Cosine similarities closer than this are a tie: the same texts embedded in another
# process (an executor instead of the driver) may differ in the last float32 bits.
TIE_TOLERANCE = 1e-5


def representative(members: list[int], similarity: np.ndarray, queries: list[str]) -> int:
    """The member closest to its cluster's centre; among members within ``TIE_TOLERANCE``
    of the closest, the one with the first query text, so that the choice does not depend
    on float noise (a cluster run and a local run name the trend query alike)."""
    best = float(similarity.max())
    near = [i for i, s in enumerate(similarity) if s >= best - TIE_TOLERANCE]
    return members[min(near, key=lambda i: queries[i])]


def normalise(rows: list[dict], vectors: np.ndarray, threshold: float, k: int) -> list[dict]:
    """Cluster the generated queries; one dict per cluster (the trend_queries columns
    except as_of, rank, trend_query_id and embedding_model), biggest growth first.

    ``rows``: one per generated query with seed_id, seed_text, query, leaf_category,
    selling_points, doc_ids, sources, growth, support, model, prompt_version.
    """

    if not rows:
        return []
    labels = threshold_clusters(vectors, threshold=threshold, k=k)
    clusters: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        clusters.setdefault(int(label), []).append(i)
    out = []
    for members in clusters.values():
        centre = vectors[members].mean(axis=0)
        rep = representative(members, vectors[members] @ centre, [rows[i]["query"] for i in members])
        group = [rows[i] for i in members]
        points = Counter(p for r in group for p in r["selling_points"])
        growths = [r["growth"] for r in group if r["growth"] is not None]
        seeds = {r["seed_id"]: r for r in group}
        out.append(
            {
                "query": rows[rep]["query"],
                "leaf_category": _mode([r["leaf_category"] for r in group]),
                "selling_points": [p for p, _ in points.most_common(5)],
                "member_queries": sorted({r["query"] for r in group}),
                "cluster_size": len(members),
                "seed_ids": sorted(seeds),
                "seeds": sorted({r["seed_text"] for r in group}),
                "sources": sorted({s for r in group for s in r["sources"]}),
                "doc_ids": sorted({d for r in group for d in r["doc_ids"]}),
                "growth": max(growths) if growths else None,
                # Activity behind the trend: each seed counted once.
                "support": float(sum(r["support"] or 0.0 for r in seeds.values())),
                "model": rows[rep]["model"],
                "prompt_version": rows[rep]["prompt_version"],
            }
        )
    out.sort(key=lambda c: (-(c["growth"] if c["growth"] is not None else -1e9), -c["support"], c["query"]))
    return out


def _stage(name: str, started: float, **counts: int) -> None:
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    log.info(f"trends: {name}: {parts} ({time.perf_counter() - started:.1f}s)")


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write silver.trend_seeds, gold.category_trends, bronze.trend_documents and
    gold.trend_queries as of the run date; returns row counts."""

    tc = conf.trends
    events = tables.read(spark, conf, "bronze.events")
    run_date = resolve_run_date(spark, conf, events)
    for needed in ("silver.item_profiles", "silver.item_categories", "silver.search_terms_weekly"):
        if not tables.exists(spark, conf, needed):
            raise RuntimeError(f"trends: {needed} is missing: run the items and aggregate stages first")
    backend = conf.llm.agent(trend_query.AGENT.name).backend
    log.info(f"trends: run date {run_date}, trend_query backend {backend}")
    started = time.perf_counter()
    profiles = tables.read(spark, conf, "silver.item_profiles")
    item_cats = tables.read(spark, conf, "silver.item_categories")
    span_days = 7 * (max(tc.recent_weeks, tc.note_weeks) + tc.baseline_weeks + 1)
    window = events.filter(
        (F.col("dt") <= F.lit(run_date)) & (F.col("dt") > F.lit(run_date - dt.timedelta(days=span_days)))
    )
    rules = load_rules(conf.aggregate.category_rules)
    activity = signals.factor_activity(
        window, item_cats, profiles, rules, conf.cfv.event_weights,
        conf.cfv.exclude_kinds,
    ).persist()  # fmt: skip

    trends = signals.category_trends(
        activity,
        run_date,
        tc.recent_weeks,
        tc.baseline_weeks,
        tc.min_support,
        tc.min_lift,
        tc.rising_per_category,
    ).withColumn("as_of", F.lit(run_date))
    tables.overwrite(trends, conf, CATEGORY_TRENDS)
    trends = tables.read(spark, conf, CATEGORY_TRENDS)
    n_trends = trends.count()
    _stage("category trends", started, rows=n_trends)

    titles = profiles.select("item_id", F.coalesce("short_title", "title").alias("title"))
    searches = tables.read(spark, conf, "silver.search_terms_weekly").filter(F.col("term_source") == "search")
    if searches.limit(1).count():
        terms_weekly = searches
        term_cats = signals.term_categories(
            window, item_cats, conf.cfv.event_weights, conf.aggregate.min_term_length
        )
    else:  # no searches in the data (Online Retail): hot and growing factor values instead
        terms_weekly, term_cats = signals.factor_terms_weekly(activity), signals.factor_categories(activity)
    seeds = signals.seed_queries(
        signals.category_activity(activity, run_date, tc.recent_weeks, tc.baseline_weeks),
        trends,
        terms_weekly,
        term_cats,
        run_date,
        tc.recent_weeks,
        tc.seed_categories,
        tc.hot_terms,
        tc.growth_terms,
        tc.min_term_support,
        exclude_categories=(rules.fallback, UNKNOWN_CATEGORY),
    ).withColumn("as_of", F.lit(run_date))
    tables.overwrite(seeds, conf, SEEDS)
    seeds = tables.read(spark, conf, SEEDS)
    seed_list = [r.asDict() for r in seeds.select("seed_id", "seed_text", "leaf_category").collect()]
    _stage("seed queries", started, seeds=len(seed_list))

    derived = None
    if any(s.kind == "derived" for s in tc.sources):
        derived = signals.weekly_notes(
            activity, titles, run_date, tc.note_weeks, tc.baseline_weeks, tc.min_support, tc.min_lift,
            tc.rising_per_category, source=next(s.name for s in tc.sources if s.kind == "derived"),
        )  # fmt: skip
    load = load_documents(
        spark,
        conf,
        run_date,
        seeds=[
            {"seed_id": s["seed_id"], "text": s["seed_text"], "category": s["leaf_category"]}
            for s in seed_list
        ],
        derived=derived,
    )
    retrieved = retrieve(spark, conf, seeds, load.documents, run_date)
    with_docs = sum(1 for v in retrieved.values() if v)
    _stage("retrieval", started, seeds_with_documents=with_docs)

    phrase_rows = category_phrases(activity, titles, conf.aggregate.min_term_length).withColumn(
        "as_of", F.lit(run_date)
    )
    tables.overwrite(phrase_rows, conf, CATEGORY_PHRASES)
    phrase_table = tables.read(spark, conf, CATEGORY_PHRASES)
    activity.unpersist()
    n_phrases = phrase_table.count()
    _stage("phrases", started, phrases=n_phrases)

    inputs = agent_inputs(spark, seeds, retrieved, phrase_table)
    answers = generate(conf, inputs, run_date)
    generated = (
        answers.join(
            seeds.select("seed_id", "seed_text", "leaf_category", "growth", "support", "rising"), "seed_id"
        )
        .select(
            "seed_id",
            "seed_text",
            "leaf_category",
            "growth",
            "support",
            "rising",
            "status",
            "model",
            "prompt_version",
            F.col("output.selling_points").alias("selling_points"),
            F.explode("output.queries").alias("query"),
        )  # fmt: skip
        .filter(F.col("query").isNotNull())
    )
    generated = embed_texts(spark, conf, generated, "query", label="trends: queries")
    rows = [r.asDict() for r in generated.orderBy("seed_id", "query").collect()]
    failed = len({r["seed_id"] for r in rows if r["status"] == "failed"})
    for r in rows:
        r["growth"] = query_growth(r["query"], r["rising"], r["growth"])
        docs = retrieved.get(r["seed_id"], [])
        r["doc_ids"] = [d["doc_id"] for d in docs]
        r["sources"] = sorted({d["source"] for d in docs})
    _stage("queries", started, generated=len(rows), failed_seeds=failed)

    if rows:
        vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1)
        clusters = normalise(rows, vectors, tc.cluster_threshold, tc.cluster_neighbors)
    else:  # no seed this run (e.g. no category with enough activity): an empty table
        clusters = []
    model_id = rows[0]["embedding_model"] if rows else ""
    out = [
        {
            **c,
            "trend_query_id": _query_id(c["query"], c["leaf_category"]),
            "as_of": run_date,
            "rank": rank,
            "embedding_model": model_id,
        }
        for rank, c in enumerate(clusters, 1)
    ]
    frame = spark.createDataFrame(
        [tuple(c[f.name] for f in TREND_QUERY_SCHEMA.fields) for c in out], TREND_QUERY_SCHEMA
    )
    tables.overwrite(frame, conf, TREND_QUERIES)
    n_out = tables.read(spark, conf, TREND_QUERIES).count()
    _stage("trend queries", started, generated=len(rows), clusters=n_out)
    return {
        "category_trends": n_trends,
        "category_phrases": n_phrases,
        "seeds": len(seed_list),
        "documents": load.documents.count(),
        "generated_queries": len(rows),
        "failed_seeds": failed,
        "trend_queries": n_out,
    }


def _query_id(query: str, category: str | None) -> str:
    import hashlib

    return hashlib.sha256(f"{category or ''}|{query.lower()}".encode()).hexdigest()[:16]
