"""U2Q: per user demand queries (personal, trend, exploration) -> ``gold.user_queries``.

Candidates are computed in Spark, one row per user with a portrait:

- personal: the portrait's main categories (at most ``u2q.top_categories``) with the
  user's long-term, recent and potential CFV factors there;
- trend: ``gold.trend_queries`` in the user's long-term categories, by growth;
- exploration: categories the user never touched that buyers of the user's main
  categories also buy: for a main category ``a`` (share ``s_a``) and a category ``b``,
  ``s_a x buyers(a and b) / buyers(a)`` over the long-term window, with at least
  ``u2q.min_copurchase_buyers`` buyers of both; each with the factors most buyers of ``b``
  choose (long-term CFV) and the title-word phrase of ``b``'s busiest items
  (``gold.category_phrases``, written by the trends stage; ``jobs.phrases``).

The ``u2q`` agent (``udfs/agents/u2q.py``: LLM or heuristic) turns them into queries with
a target category and a reason; a failed LLM answer keeps the heuristic's queries
(``status = failed``, ``model = heuristic``). Columns: user_id, query_id, kind, query,
leaf_category, reason, position, as_of, status, model, prompt_version.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.categories import UNKNOWN_CATEGORY, load_rules
from core.config import Config
from core.rundate import resolve_run_date
from jobs.agents import run_agent
from udfs.agents import u2q

log = logging.getLogger(__name__)

USER_QUERIES = "gold.user_queries"


def _factor_list(cfv: DataFrame, horizon: str, name: str, n: int) -> DataFrame:
    return cfv.filter(F.col("horizon") == horizon).select(
        "user_id", "leaf_category", F.slice("factors", 1, n).alias(name)
    )


def personal_candidates(portraits: DataFrame, cfv: DataFrame, top_categories: int) -> DataFrame:
    """user_id, personal: [{category, share, long_term, recent, potential}] by share."""
    mains = portraits.select("user_id", F.posexplode(F.slice("main_categories", 1, top_categories))).select(
        "user_id",
        F.col("pos"),
        F.col("col.category").alias("leaf_category"),
        F.col("col.share").alias("share"),
    )
    empty = F.array().cast("array<struct<factor:string,weight:int>>")
    joined = mains
    for horizon, n in (("long_term", 5), ("recent", 3), ("potential", 3)):
        joined = joined.join(_factor_list(cfv, horizon, horizon, n), ["user_id", "leaf_category"], "left")
    item = F.struct(
        F.col("leaf_category").alias("category"),
        F.col("share"),
        F.coalesce("long_term", empty).alias("long_term"),
        F.coalesce("recent", empty).alias("recent"),
        F.coalesce("potential", empty).alias("potential"),
    )
    return joined.groupBy("user_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("pos", item.alias("c")))), lambda x: x["c"]).alias(
            "personal"
        )
    )


def trend_candidates(user_categories: DataFrame, trend_queries: DataFrame, n: int) -> DataFrame:
    """user_id, trends: the ``n`` trend queries of highest growth in the user's categories."""
    tq = trend_queries.select(
        "trend_query_id", "query", "leaf_category", "selling_points", F.coalesce("growth", F.lit(0.0)).alias("g"),
        "rank",
    )  # fmt: skip
    best = Window.partitionBy("user_id").orderBy(F.desc("g"), "rank")
    picked = (
        user_categories.join(tq, "leaf_category")
        .withColumn("_r", F.row_number().over(best))
        .filter(F.col("_r") <= n)
    )
    item = F.struct(
        "trend_query_id", "query", F.col("leaf_category").alias("category"), "selling_points",
        F.col("g").alias("growth"),
    )  # fmt: skip
    return picked.groupBy("user_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("_r", item.alias("t")))), lambda x: x["t"]).alias(
            "trends"
        )
    )


def category_copurchase(user_categories: DataFrame, min_buyers: int) -> DataFrame:
    """from_category, category, buyers_share = buyers of both / buyers of from_category."""
    a = user_categories.select("user_id", F.col("leaf_category").alias("from_category"))
    b = user_categories.select("user_id", F.col("leaf_category").alias("category"))
    n_a = a.groupBy("from_category").agg(F.count("*").alias("n_a"))
    both = (
        a.join(b, "user_id")
        .filter(F.col("from_category") != F.col("category"))
        .groupBy("from_category", "category")
        .agg(F.count("*").alias("n_ab"))
        .filter(F.col("n_ab") >= min_buyers)
    )
    return both.join(n_a, "from_category").select(
        "from_category", "category", (F.col("n_ab") / F.col("n_a")).alias("buyers_share")
    )


def popular_factors(cfv: DataFrame, n: int = 3) -> DataFrame:
    """category, factors: the long-term factors the most buyers of the category have."""
    counted = (
        cfv.filter(F.col("horizon") == "long_term")
        .select("leaf_category", F.explode("factors.factor").alias("factor"))
        .groupBy("leaf_category", "factor")
        .count()
    )
    best = Window.partitionBy("leaf_category").orderBy(F.desc("count"), "factor")
    return (
        counted.withColumn("_r", F.row_number().over(best))
        .filter(F.col("_r") <= n)
        .groupBy(F.col("leaf_category").alias("category"))
        .agg(
            F.transform(F.array_sort(F.collect_list(F.struct("_r", "factor"))), lambda x: x["factor"]).alias(
                "factors"
            )
        )
    )


def exploration_candidates(
    portraits: DataFrame, user_categories: DataFrame, copurchase: DataFrame, factors: DataFrame, n: int,
    excluded: tuple[str, ...] = (), category_phrases: DataFrame | None = None,
) -> DataFrame:  # fmt: skip
    """user_id, exploration: [{category, from_category, buyers_share, factors, phrase}], best
    first; ``phrase``: the title words of the category's busiest items (``category_phrases``:
    category, phrase; null without)."""
    mains = portraits.select("user_id", F.explode("main_categories").alias("m")).select(
        "user_id", F.col("m.category").alias("from_category"), F.col("m.share").alias("share")
    )
    scored = (
        mains.join(copurchase, "from_category")
        .filter(~F.col("category").isin(*excluded) if excluded else F.lit(True))
        .join(
            user_categories.withColumnRenamed("leaf_category", "category"),
            ["user_id", "category"],
            "left_anti",
        )
        .withColumn("score", F.col("share") * F.col("buyers_share"))
    )
    best_from = Window.partitionBy("user_id", "category").orderBy(F.desc("score"), "from_category")
    best = Window.partitionBy("user_id").orderBy(F.desc("score"), "category")
    picked = (
        scored.withColumn("_f", F.row_number().over(best_from))
        .filter("_f = 1")
        .withColumn("_r", F.row_number().over(best))
        .filter(F.col("_r") <= n)
        .join(factors, "category", "left")
    )
    if category_phrases is None:
        picked = picked.withColumn("phrase", F.lit(None).cast("string"))
    else:
        picked = picked.join(category_phrases.select("category", "phrase"), "category", "left")
    item = F.struct(
        "category", "from_category", F.round("buyers_share", 4).alias("buyers_share"),
        F.coalesce("factors", F.array().cast("array<string>")).alias("factors"), "phrase",
    )  # fmt: skip
    return picked.groupBy("user_id").agg(
        F.transform(F.array_sort(F.collect_list(F.struct("_r", item.alias("e")))), lambda x: x["e"]).alias(
            "exploration"
        )
    )


def agent_inputs(spark: SparkSession, conf: Config) -> DataFrame:
    """One row per user with a portrait: the agent's input columns."""
    uc = conf.u2q
    rules = load_rules(conf.aggregate.category_rules)
    excluded = (rules.fallback, UNKNOWN_CATEGORY)
    portraits = tables.read(spark, conf, "gold.portraits")
    cfv = tables.read(spark, conf, "gold.cfv")
    user_categories = (
        tables.read(spark, conf, "silver.user_windows")
        .filter((F.col("window") == "long_term") & (F.col("n_events") > 0))
        .select("user_id", "leaf_category")
        .distinct()
    )
    trend_queries = (
        tables.read(spark, conf, "gold.trend_queries")
        if tables.exists(spark, conf, "gold.trend_queries")
        else None
    )
    phrases = (
        tables.read(spark, conf, "gold.category_phrases").select(
            F.col("leaf_category").alias("category"), "phrase"
        )
        if tables.exists(spark, conf, "gold.category_phrases")
        else None
    )
    personal = personal_candidates(portraits, cfv, uc.top_categories)
    explore = exploration_candidates(
        portraits,
        user_categories,
        category_copurchase(user_categories, uc.min_copurchase_buyers),
        popular_factors(cfv),
        uc.exploration_candidates,
        excluded,
        phrases,
    )
    rows = (
        portraits.select("user_id", "buyer_type", "summary")
        .join(personal, "user_id", "left")
        .join(explore, "user_id", "left")
    )
    if trend_queries is not None and uc.trend_candidates:
        rows = rows.join(
            trend_candidates(user_categories, trend_queries, uc.trend_candidates), "user_id", "left"
        )
    else:
        rows = rows.withColumn("trends", F.lit(None).cast("array<string>"))
    return rows.select(
        "user_id",
        "buyer_type",
        "summary",
        F.coalesce(F.to_json("personal"), F.lit("[]")).alias("personal_json"),
        F.coalesce(F.to_json("trends"), F.lit("[]")).alias("trend_json"),
        F.coalesce(F.to_json("exploration"), F.lit("[]")).alias("exploration_json"),
    )


def agent_context(conf: Config) -> dict:
    """The agent's context: the queries of each kind asked for (``u2q.personal`` ...)."""
    uc = conf.u2q
    return {"counts": {"personal": uc.personal, "trend": uc.trend, "exploration": uc.exploration}}


def generate(conf: Config, inputs: DataFrame) -> DataFrame:
    """The agent's output per user; a failed LLM answer carries the heuristic's
    (``jobs.agents.with_heuristic_fallback``)."""
    return run_agent(inputs, u2q.AGENT, conf, ["user_id"], agent_context(conf)).output


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.user_queries``; returns users, queries per kind and failed users."""
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    for needed in ("gold.portraits", "gold.cfv", "silver.user_windows"):
        if not tables.exists(spark, conf, needed):
            raise RuntimeError(f"u2q: {needed} is missing: run the aggregate, cfv and portrait stages first")
    log.info(f"u2q: run date {run_date}, backend {conf.llm.agent(u2q.AGENT.name).backend}")
    answers = generate(conf, agent_inputs(spark, conf))
    rows = answers.select(
        "user_id", "status", "model", "prompt_version", F.posexplode("output.queries").alias("position", "q")
    ).select(
        "user_id",
        F.substring(F.sha2(F.concat_ws("|", "user_id", "q.kind", F.lower("q.query")), 256), 1, 16).alias(
            "query_id"
        ),
        F.col("q.kind").alias("kind"),
        F.col("q.query").alias("query"),
        F.col("q.category").alias("leaf_category"),
        F.col("q.reason").alias("reason"),
        "position",
        F.lit(run_date).alias("as_of"),
        "status",
        "model",
        "prompt_version",
    )
    tables.overwrite(rows.dropDuplicates(["query_id"]), conf, USER_QUERIES)
    out = tables.read(spark, conf, USER_QUERIES)
    stats = {r["kind"]: int(r["count"]) for r in out.groupBy("kind").count().collect()}
    users = out.select("user_id").distinct().count()
    failed = answers.filter(F.col("status") == "failed").count()
    counts = {"users": users, **{k: stats.get(k, 0) for k in u2q.KINDS}, "failed": failed}
    log.info(
        f"u2q: {USER_QUERIES} {sum(stats.values()):,} queries for {users:,} users "
        f"(personal {counts['personal']:,}, trend {counts['trend']:,}, exploration {counts['exploration']:,}); "
        f"failed (heuristic fallback) {failed:,}",
    )
    return counts
