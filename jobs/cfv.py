"""Category-Factor-Value preferences: ``silver`` + item profiles -> ``gold.cfv``.

Per user x leaf category x horizon, the decision factors the buyer chooses by, ranked,
with a weight 1..10 scaled from the top one, and as text (``french:9|floral:8|black:7``):

- ``long_term``: every event of the long-term window (``aggregate.windows.long_term``
  days ending at the run date) whose item has a profile adds
  ``cfv.event_weights[event_type] x 0.5 ** (age_days / cfv.half_life_days['long_term'])``
  to each distinct factor value of the item (``silver.item_profiles.decision_factors``,
  kinds in ``cfv.exclude_kinds`` left out: ``price_band`` by default, since every item has
  one). Categories are the aggregate's (``silver.item_categories``), so they match
  ``silver.user_windows``. Top ``cfv.top_factors`` by score, ties by value.
- ``recent``: the same over the recent window (``aggregate.windows.recent`` days) with
  ``half_life_days['recent']``.
- ``potential``: factors the user has never touched in the category (no event of any
  type on an item with that factor) that other buyers of the category combine with the
  user's own top factors. Heuristic (default): for the user's top
  ``cfv.potential_seed_factors`` long-term factors ``a`` (weight ``w_a``), every factor
  ``b`` that appears together with ``a`` in the long-term CFV of at least
  ``cfv.potential_min_support`` buyers of the category scores
  ``sum_a (w_a / 10) x cooc(a, b)``, ``cooc(a, b)`` = the sum of ``b``'s weight over
  those buyers. The user never counts in the support of a factor they lack, so only
  other buyers do. With ``llm.agents.cfv_potential.backend = openai`` the
  ``cfv_potential`` agent chooses them for the user's top
  ``cfv.potential_llm_categories`` categories; failed answers keep the heuristic's
  factors with ``status = 'failed'``.

Weights: ``max(1, round(10 x score / top score))``. Columns: user_id, leaf_category,
horizon, as_of, factors (array<struct<factor, weight>>), cfv_text, source ('heuristic' or
the model), status ('heuristic', 'ok', 'failed'), error_class, prompt_version. Long-term,
recent and heuristic potential are plain Spark (no Python UDF, nothing collected).

Example
-------
>>> from jobs.cfv import run
>>> run(spark, load_config())          # or: discovery cfv
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.categories import load_rules
from core.config import Config
from core.rundate import resolve_run_date
from jobs.agents import run_agent
from jobs.aggregate import with_category
from udfs.agents import cfv_potential

log = logging.getLogger(__name__)

CFV = "gold.cfv"
HORIZONS = ("long_term", "recent", "potential")
# prompt_version of the rows computed without a model.
DECAY_VERSION = "decay-v1"
COOC_VERSION = "cooc-v1"
FACTORS_TYPE = "array<struct<factor:string,weight:int>>"


# --- transforms -------------------------------------------------------------------------


def factor_events(
    events: DataFrame, item_categories: DataFrame, profiles: DataFrame, rules, exclude_kinds: list[str]
) -> DataFrame:
    """user_id, leaf_category, event_type, dt, factor: one row per event and distinct factor value.

    Categories come from ``jobs.aggregate.with_category`` (those of the silver tables);
    factor values from the item's profile, without the kinds in ``exclude_kinds``. Events
    without an item or a profiled item have no factors and are dropped.

    >>> factor_events(events, item_cats, profiles, rules, ["price_band"]).show()
    """
    values = F.array_distinct(
        F.transform(
            F.filter(
                "decision_factors",
                lambda f: ~f["kind"].isin(*exclude_kinds) if exclude_kinds else F.lit(True),
            ),
            lambda f: F.lower(F.trim(f["value"])),
        )
    )
    factors = profiles.select("item_id", values.alias("_values"))
    return (
        events.filter(F.col("item_id").isNotNull())
        .transform(with_category(item_categories, rules))
        .join(factors, "item_id")
        .select("user_id", "leaf_category", "event_type", "dt", F.explode("_values").alias("factor"))
        .filter(F.length("factor") > 0)
    )


def event_weight(weights: dict[str, float]) -> Column:
    """The configured weight of ``event_type`` (0 for a type not listed)."""
    if not weights:
        return F.lit(0.0)
    table = F.create_map(*[x for k, w in weights.items() for x in (F.lit(k), F.lit(float(w)))])
    return F.coalesce(table[F.col("event_type")], F.lit(0.0))


def decayed_scores(run_date: dt.date, window_days: int, half_life_days: float, weights: dict[str, float]):
    """Transform: factor events -> user_id, leaf_category, factor, score (time-decayed weighted count).

    Events with ``0 <= age_days < window_days`` (the aggregate's window rule) each add
    ``weights[event_type] * 0.5 ** (age_days / half_life_days)``; factors whose score is
    not positive are dropped.

    >>> decayed_scores(date(2011, 12, 9), 365, 120.0, {"purchase": 5.0})(factor_events_df)
    """

    def transform(fevents: DataFrame) -> DataFrame:
        age = F.datediff(F.lit(run_date), F.col("dt"))
        contribution = event_weight(weights) * F.pow(F.lit(0.5), age / F.lit(float(half_life_days)))
        return (
            fevents.filter((age >= 0) & (age < window_days))
            .groupBy("user_id", "leaf_category", "factor")
            .agg(F.sum(contribution).alias("score"))
            .filter(F.col("score") > 0)
        )

    return transform


# Decimals kept of a factor's score before ranking and weighting (see top_factors).
SCORE_DECIMALS = 9


def top_factors(scored: DataFrame, n: int) -> DataFrame:
    """user_id, leaf_category, factor, score, rank, weight: the ``n`` best factors of each pair.

    Ranked by score, ties by value; ``weight = max(1, round(10 * score / top score))``.
    Scores are rounded to ``SCORE_DECIMALS`` first: a sum of floating-point contributions
    depends on the order Spark adds them in (the input's files and partitions), and equal
    scores must tie, and a ratio of exactly x.5 round the same way, whatever that order.
    """
    by_pair = Window.partitionBy("user_id", "leaf_category")
    scored = scored.withColumn("score", F.round("score", SCORE_DECIMALS))
    ranked = scored.withColumn(
        "rank", F.row_number().over(by_pair.orderBy(F.desc("score"), F.asc("factor")))
    ).filter(F.col("rank") <= n)
    top = F.max("score").over(by_pair)
    return ranked.withColumn(
        "weight", F.greatest(F.lit(1), F.round(F.lit(10.0) * F.col("score") / top).cast("int"))
    )


def _text_safe(value: Column) -> Column:
    # ':' and '|' delimit cfv_text: inside a value they become spaces.
    return F.regexp_replace(value, r"[:|]", " ")


def cfv_text(factors: Column) -> Column:
    """``factor:weight|factor:weight`` of an array<struct<factor, weight>> column, in order."""
    return F.array_join(
        F.transform(
            factors, lambda f: F.concat(_text_safe(f["factor"]), F.lit(":"), f["weight"].cast("string"))
        ),
        "|",
    )


def collect_factors(ranked: DataFrame) -> DataFrame:
    """Ranked factor rows (user_id, leaf_category, factor, rank, weight) -> one row per pair
    with ``factors`` (array<struct<factor, weight>> in rank order) and ``cfv_text``."""
    ordered = F.array_sort(F.collect_list(F.struct("rank", "factor", "weight")))
    return (
        ranked.groupBy("user_id", "leaf_category")
        .agg(ordered.alias("_r"))
        .select(
            "user_id",
            "leaf_category",
            F.transform("_r", lambda r: F.struct(r["factor"].alias("factor"), r["weight"].alias("weight")))
            .cast(FACTORS_TYPE)
            .alias("factors"),
        )
        .withColumn("cfv_text", cfv_text(F.col("factors")))
    )


def touched_factors(fevents: DataFrame, run_date: dt.date, window_days: int) -> DataFrame:
    """user_id, leaf_category, factor: every factor of any event (any type) in the window."""
    age = F.datediff(F.lit(run_date), F.col("dt"))
    return (
        fevents.filter((age >= 0) & (age < window_days))
        .select("user_id", "leaf_category", "factor")
        .distinct()
    )


def cooccurrence(long_term: DataFrame, min_support: int, partners: int) -> DataFrame:
    """leaf_category, seed, factor, support, cooc: factors found with ``seed`` in buyers' CFV.

    ``long_term`` holds the ranked long-term factors (user_id, leaf_category, factor,
    weight). ``support`` = buyers of the category with both in their long-term CFV,
    ``cooc`` = the sum of ``factor``'s weight over them. Kept: ``support >= min_support``,
    the ``partners`` highest ``cooc`` per (category, seed), ties by value.
    """
    a = long_term.select("user_id", "leaf_category", F.col("factor").alias("seed"))
    b = long_term.select("user_id", "leaf_category", "factor", "weight")
    pairs = (
        a.join(b, ["user_id", "leaf_category"])
        .filter(F.col("seed") != F.col("factor"))
        .groupBy("leaf_category", "seed", "factor")
        .agg(F.count("*").alias("support"), F.sum("weight").cast("double").alias("cooc"))
        .filter(F.col("support") >= min_support)
    )
    order = Window.partitionBy("leaf_category", "seed").orderBy(F.desc("cooc"), F.asc("factor"))
    return pairs.withColumn("_n", F.row_number().over(order)).filter(F.col("_n") <= partners).drop("_n")


def potential_scores(long_term: DataFrame, touched: DataFrame, cooc: DataFrame, seeds: int) -> DataFrame:
    """user_id, leaf_category, factor, score: co-occurring factors the user never touched.

    ``score = sum over the user's top ``seeds`` long-term factors a of (w_a / 10) * cooc(a, factor)``.
    """
    user_seeds = long_term.filter(F.col("rank") <= seeds).select(
        "user_id", "leaf_category", F.col("factor").alias("seed"), F.col("weight").alias("seed_weight")
    )
    return (
        user_seeds.join(cooc, ["leaf_category", "seed"])
        .join(touched, ["user_id", "leaf_category", "factor"], "left_anti")
        .groupBy("user_id", "leaf_category", "factor")
        .agg(F.sum(F.col("seed_weight") / F.lit(10.0) * F.col("cooc")).alias("score"))
    )


def with_meta(pairs: DataFrame, horizon: str, run_date: dt.date, source: str, version: str) -> DataFrame:
    """Pairs with factors and cfv_text -> the table's columns for rows computed without a model."""
    return pairs.select(
        "user_id",
        "leaf_category",
        F.lit(horizon).alias("horizon"),
        F.lit(run_date).alias("as_of"),
        "factors",
        "cfv_text",
        F.lit(source).alias("source"),
        F.lit("heuristic").alias("status"),
        F.lit(None).cast("string").alias("error_class"),
        F.lit(version).alias("prompt_version"),
    )


# --- the LLM variant of potential -------------------------------------------------------


def _factor_list_json(ranked: DataFrame, name: str) -> DataFrame:
    return ranked.groupBy("user_id", "leaf_category").agg(
        F.to_json(
            F.transform(
                F.array_sort(F.collect_list(F.struct("rank", "factor", "weight"))),
                lambda r: F.struct(r["factor"].alias("factor"), r["weight"].alias("weight")),
            )
        ).alias(name)
    )


def potential_inputs(
    long_term: DataFrame,
    recent: DataFrame,
    touched: DataFrame,
    heuristic: DataFrame,
    categories_per_user: int,
    vocabulary_size: int,
) -> DataFrame:
    """One input row per (user, category) for the ``cfv_potential`` agent.

    The user's top ``categories_per_user`` categories by long-term score; columns
    ``long_term_json``, ``recent_json`` ([{factor, weight}]), ``vocabulary_json`` (the
    category's ``vocabulary_size`` most common long-term factors, [{factor, buyers}]),
    ``user_factors_json`` (every factor the user touched there), ``heuristic_json`` (the
    co-occurrence heuristic's factors: the agent's heuristic twin, never sent).
    """
    totals = long_term.groupBy("user_id", "leaf_category").agg(F.sum("score").alias("_total"))
    pick = totals.withColumn(
        "_n",
        F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("_total"), F.asc("leaf_category"))),
    ).filter(F.col("_n") <= categories_per_user)
    popular = long_term.groupBy("leaf_category", "factor").agg(F.count("*").alias("buyers"))
    popular = (
        popular.withColumn(
            "_n",
            F.row_number().over(
                Window.partitionBy("leaf_category").orderBy(F.desc("buyers"), F.asc("factor"))
            ),
        )
        .filter(F.col("_n") <= vocabulary_size)
        .groupBy("leaf_category")
        .agg(
            F.to_json(
                F.transform(
                    F.array_sort(F.collect_list(F.struct("_n", "factor", "buyers"))),
                    lambda r: F.struct(r["factor"].alias("factor"), r["buyers"].alias("buyers")),
                )
            ).alias("vocabulary_json")
        )
    )
    user_factors = touched.groupBy("user_id", "leaf_category").agg(
        F.to_json(F.array_sort(F.collect_list("factor"))).alias("user_factors_json")
    )
    heuristic_json = heuristic.select(
        "user_id", "leaf_category", F.to_json("factors").alias("heuristic_json")
    )
    return (
        pick.select("user_id", "leaf_category")
        .join(_factor_list_json(long_term, "long_term_json"), ["user_id", "leaf_category"])
        .join(_factor_list_json(recent, "recent_json"), ["user_id", "leaf_category"], "left")
        .join(popular, "leaf_category")
        .join(user_factors, ["user_id", "leaf_category"], "left")
        .join(heuristic_json, ["user_id", "leaf_category"], "left")
        .select(
            "user_id",
            "leaf_category",
            "long_term_json",
            F.coalesce("recent_json", F.lit("[]")).alias("recent_json"),
            "vocabulary_json",
            F.coalesce("user_factors_json", F.lit("[]")).alias("user_factors_json"),
            F.coalesce("heuristic_json", F.lit("[]")).alias("heuristic_json"),
        )
    )


def llm_potential(inputs: DataFrame, heuristic_rows: DataFrame, conf: Config, run_date: dt.date) -> DataFrame:
    """Potential rows of the agent for ``inputs``; failed answers keep the heuristic's factors.

    Returns the table's columns for the input pairs that end with at least one factor.
    """
    context = {"max_factors": conf.cfv.potential_factors}
    # A failed answer falls back to the co-occurrence rows (``heuristic_rows``) below.
    run = run_agent(inputs, cfv_potential.AGENT, conf, ["user_id", "leaf_category"], context, fallback=None)
    ok = F.col("status").isin("ok", "heuristic")
    answered = F.array_sort(
        F.transform(
            F.col("output.factors"),
            lambda f: F.struct((-f["weight"]).alias("neg"), f["factor"].alias("factor")),
        )
    )
    model_factors = F.transform(
        answered, lambda s: F.struct(s["factor"].alias("factor"), (-s["neg"]).cast("int").alias("weight"))
    ).cast(FACTORS_TYPE)
    fallback = heuristic_rows.select(
        "user_id", "leaf_category", F.col("factors").alias("_fb"), F.col("prompt_version").alias("_fb_v")
    )
    rows = run.output.join(fallback, ["user_id", "leaf_category"], "left").select(
        "user_id",
        "leaf_category",
        F.lit("potential").alias("horizon"),
        F.lit(run_date).alias("as_of"),
        F.when(ok, model_factors).otherwise(F.col("_fb")).alias("factors"),
        F.when(ok, F.col("model")).otherwise(F.lit("heuristic")).alias("source"),
        "status",
        "error_class",
        F.when(ok, F.col("prompt_version")).otherwise(F.col("_fb_v")).alias("prompt_version"),
    )
    return (
        rows.filter(F.size(F.coalesce("factors", F.array().cast(FACTORS_TYPE))) > 0)
        .withColumn("cfv_text", cfv_text(F.col("factors")))
        .select(*TABLE_COLUMNS)
    )


TABLE_COLUMNS = [
    "user_id",
    "leaf_category",
    "horizon",
    "as_of",
    "factors",
    "cfv_text",
    "source",
    "status",
    "error_class",
    "prompt_version",
]


# --- entry point ------------------------------------------------------------------------


def compute(spark: SparkSession, conf: Config, run_date: dt.date) -> tuple[DataFrame, list[DataFrame]]:
    """All gold.cfv rows (long_term, recent, potential) as of ``run_date``, and the frames
    it persisted (to unpersist once the rows are written)."""
    cc, windows = conf.cfv, conf.aggregate.windows
    rules = load_rules(conf.aggregate.category_rules)
    fevents = factor_events(
        tables.read(spark, conf, "bronze.events"),
        tables.read(spark, conf, "silver.item_categories"),
        tables.read(spark, conf, "silver.item_profiles"),
        rules,
        cc.exclude_kinds,
    ).persist()
    cached = [fevents]
    half = cc.half_life_days
    long_term = top_factors(
        fevents.transform(
            decayed_scores(run_date, windows.long_term, half.get("long_term", 120.0), cc.event_weights)
        ),
        cc.top_factors,
    ).persist()
    cached.append(long_term)
    recent = top_factors(
        fevents.transform(
            decayed_scores(run_date, windows.recent, half.get("recent", 7.0), cc.event_weights)
        ),
        cc.top_factors,
    )
    touched = touched_factors(fevents, run_date, windows.long_term)
    cooc = cooccurrence(long_term, cc.potential_min_support, cc.potential_partners)
    potential_ranked = top_factors(
        potential_scores(long_term, touched, cooc, cc.potential_seed_factors), cc.potential_factors
    )
    potential = with_meta(collect_factors(potential_ranked), "potential", run_date, "heuristic", COOC_VERSION)
    if conf.llm.agent(cfv_potential.AGENT.name).backend != "heuristic":
        inputs = potential_inputs(
            long_term, recent, touched, potential, cc.potential_llm_categories, cc.potential_vocabulary
        ).persist()
        cached.append(inputs)
        llm_rows = llm_potential(inputs, potential, conf, run_date)
        potential = potential.join(
            inputs.select("user_id", "leaf_category"), ["user_id", "leaf_category"], "left_anti"
        ).unionByName(llm_rows)
    rows = (
        with_meta(collect_factors(long_term), "long_term", run_date, "heuristic", DECAY_VERSION)
        .unionByName(with_meta(collect_factors(recent), "recent", run_date, "heuristic", DECAY_VERSION))
        .unionByName(potential)
    )
    return rows, cached


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.cfv`` (whole table); returns row counts per horizon and failed LLM rows."""
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    backend = conf.llm.agent(cfv_potential.AGENT.name).backend
    log.info(f"cfv: run date {run_date}, potential backend {backend}")
    rows, cached = compute(spark, conf, run_date)
    tables.overwrite(rows, conf, CFV)
    for df in cached:
        df.unpersist()
    stats = {
        r["horizon"]: (int(r["n"]), int(r["failed"]))
        for r in tables.read(spark, conf, CFV)
        .groupBy("horizon")
        .agg(F.count("*").alias("n"), F.sum((F.col("status") == "failed").cast("int")).alias("failed"))
        .collect()
    }
    counts = {h: stats.get(h, (0, 0))[0] for h in HORIZONS}
    counts["failed"] = sum(f for _, f in stats.values())
    log.info(
        f"cfv: {CFV} long_term {counts['long_term']:,}, recent {counts['recent']:,}, "
        f"potential {counts['potential']:,} rows (user x category); failed (heuristic fallback) "
        f"{counts['failed']:,}",
    )
    return counts
