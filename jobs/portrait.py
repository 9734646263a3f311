"""Business portraits: ``silver`` + ``gold.cfv`` -> ``gold.portraits`` (one row per user).

Per user active in the long-term window (``silver.user_windows``): the main categories
with their share, a buyer type and a dropshipper type from small vocabularies, core
intents, a four-part profile (identity, target audience, operating strategy, procurement
focus) and a summary, computed by the ``portrait`` agent (``udfs/agents/portrait.py``)
with the configured backend: the rule-based heuristic by default, or an LLM.

The facts every backend starts from (``facts_json``), all over the long-term window:

- category shares: of the user's purchase GMV (``max(amount, 0)`` per category) when the
  user has any; else of the events weighted by ``cfv.event_weights``; else of plain event
  counts (``basis`` says which);
- order statistics from ``bronze.events`` purchases: orders (distinct ``order_id``; the
  day where a source has none), order lines, units, GMV, active weeks, first and last day;
- the top 5 long-term CFV factors of each category: ``gold.cfv`` when it exists, else
  computed the same way (``jobs.cfv``);
- the LLM also reads the 8-week ``digest_text`` of ``gold.behavior_digests`` when that
  table exists.

Users whose LLM answer failed get the heuristic's portrait with ``status = 'failed'`` and
``portrait_source = 'heuristic_fallback'``, so every user has exactly one row.

Example
-------
>>> from jobs.portrait import run
>>> run(spark, load_config())          # or: discovery portrait
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.categories import load_rules
from core.config import Config
from core.rundate import resolve_run_date
from jobs import cfv as cfv_job
from jobs.agents import KEPT_META_COLUMNS, output_source, run_agent
from udfs.agents import portrait

log = logging.getLogger(__name__)

PORTRAITS = "gold.portraits"
FACTORS_PER_CATEGORY = 5
EVENT_TYPES = ("search", "view", "click", "favorite", "cart", "inquiry", "purchase", "cancel")


# --- facts ------------------------------------------------------------------------------


def category_shares(long_term_windows: DataFrame, event_weights: dict[str, float]) -> DataFrame:
    """user_id, basis, categories (array<struct<category, share, gmv, purchases, events>>,
    largest share first, ties by name) from the long-term rows of ``silver.user_windows``."""
    weighted = sum(
        (
            F.lit(float(event_weights.get(t, 0.0))) * F.coalesce(F.col(f"n_{t}"), F.lit(0))
            for t in EVENT_TYPES
        ),
        F.lit(0.0),
    )
    per_cat = long_term_windows.select(
        "user_id",
        F.col("leaf_category").alias("category"),
        F.greatest(F.coalesce(F.col("amount"), F.lit(0.0)), F.lit(0.0)).alias("gmv"),
        weighted.alias("weighted"),
        F.col("n_purchase").cast("long").alias("purchases"),
        F.col("n_events").cast("long").alias("events"),
    )
    totals = per_cat.groupBy("user_id").agg(
        F.sum("gmv").alias("_gmv"), F.sum("weighted").alias("_w"), F.sum("events").alias("_n")
    )
    basis = F.when(F.col("_gmv") > 0, "gmv").when(F.col("_w") > 0, "events").otherwise("event_count")
    value = (
        F.when(F.col("basis") == "gmv", F.col("gmv") / F.col("_gmv"))
        .when(F.col("basis") == "events", F.col("weighted") / F.col("_w"))
        .otherwise(F.col("events") / F.col("_n"))
    )
    shares = per_cat.join(totals, "user_id").withColumn("basis", basis).withColumn("share", value)
    entry = F.struct(
        (-F.col("share")).alias("neg"),
        "category",
        "share",
        F.round("gmv", 2).alias("gmv"),
        "purchases",
        "events",
    )
    return shares.groupBy("user_id", "basis").agg(
        F.transform(
            F.array_sort(F.collect_list(entry)),
            lambda e: F.struct(
                e["category"].alias("category"),
                e["share"].alias("share"),
                e["gmv"].alias("gmv"),
                e["purchases"].alias("purchases"),
                e["events"].alias("events"),
            ),
        ).alias("categories")
    )


def order_stats(events: DataFrame, run_date: dt.date, window_days: int) -> DataFrame:
    """user_id, orders, order_lines, units, gmv, active_weeks, first_day, last_day over the window.

    Orders are distinct ``order_id`` of purchases (the purchase day when a source has no
    order id); cancels are not orders.
    """
    age = F.datediff(F.lit(run_date), F.col("dt"))
    purchase = F.col("event_type") == "purchase"
    order_key = F.coalesce(F.col("order_id"), F.concat(F.lit("day:"), F.col("dt").cast("string")))
    return (
        events.filter((age >= 0) & (age < window_days))
        .groupBy("user_id")
        .agg(
            F.count_distinct(F.when(purchase, order_key)).alias("orders"),
            F.sum(purchase.cast("long")).alias("order_lines"),
            F.coalesce(F.sum(F.when(purchase, F.col("quantity"))), F.lit(0)).cast("long").alias("units"),
            F.round(F.coalesce(F.sum(F.when(purchase, F.col("amount"))), F.lit(0.0)), 2).alias("gmv"),
            F.count_distinct(F.date_trunc("week", F.col("dt"))).alias("active_weeks"),
            F.min("dt").cast("string").alias("first_day"),
            F.max("dt").cast("string").alias("last_day"),
        )
    )


def top_factors_by_category(cfv_rows: DataFrame, n: int = FACTORS_PER_CATEGORY) -> DataFrame:
    """user_id, factors (array<struct<category, factors: array<string>>>) from long-term CFV rows."""
    return cfv_rows.groupBy("user_id").agg(
        F.array_sort(
            F.collect_list(
                F.struct(
                    F.col("leaf_category").alias("category"),
                    F.slice(F.col("factors.factor"), 1, n).alias("factors"),
                )
            )
        ).alias("factors")
    )


def long_term_cfv(spark: SparkSession, conf: Config, run_date: dt.date) -> DataFrame:
    """Long-term CFV rows (user_id, leaf_category, factors): ``gold.cfv`` or computed now."""
    if tables.exists(spark, conf, cfv_job.CFV):
        return tables.read(spark, conf, cfv_job.CFV).filter(F.col("horizon") == "long_term")
    cc, windows = conf.cfv, conf.aggregate.windows
    fevents = cfv_job.factor_events(
        tables.read(spark, conf, "bronze.events"),
        tables.read(spark, conf, "silver.item_categories"),
        tables.read(spark, conf, "silver.item_profiles"),
        load_rules(conf.aggregate.category_rules),
        cc.exclude_kinds,
    )
    scored = fevents.transform(
        cfv_job.decayed_scores(
            run_date, windows.long_term, cc.half_life_days.get("long_term", 120.0), cc.event_weights
        )
    )
    return cfv_job.collect_factors(cfv_job.top_factors(scored, cc.top_factors))


def portrait_inputs(
    shares: DataFrame, stats: DataFrame, factors: DataFrame, digests: DataFrame | None
) -> DataFrame:
    """One input row per user of ``shares``: user_id, facts_json, digest_text."""
    joined = (
        shares.join(stats, "user_id", "left")
        .join(factors, "user_id", "left")
        .join(
            digests.select("user_id", "digest_text")
            if digests is not None
            else shares.select("user_id", F.lit(None).cast("string").alias("digest_text")),
            "user_id",
            "left",
        )
    )
    facts = F.struct(
        "basis",
        "categories",
        *[
            F.coalesce(F.col(c), F.lit(0)).alias(c)
            for c in ("orders", "order_lines", "units", "active_weeks")
        ],
        F.coalesce(F.col("gmv"), F.lit(0.0)).alias("gmv"),
        "first_day",
        "last_day",
        F.coalesce(
            F.col("factors"), F.array().cast("array<struct<category:string,factors:array<string>>>")
        ).alias("factors"),
    )
    return joined.select("user_id", F.to_json(facts).alias("facts_json"), "digest_text")


# --- the agent --------------------------------------------------------------------------


def _portrait_columns(agent_output: DataFrame, run_date: dt.date) -> DataFrame:
    """Agent output (a failed answer carrying the heuristic's portrait) -> the gold.portraits columns."""
    out = F.col("output")
    return agent_output.select(
        "user_id",
        F.lit(run_date).alias("as_of"),
        out["main_categories"].alias("main_categories"),
        out["buyer_type"].alias("buyer_type"),
        out["dropshipper"].alias("dropshipper"),
        out["core_intents"].alias("core_intents"),
        out["profile"].alias("profile"),
        out["summary"].alias("summary"),
        output_source().alias("portrait_source"),
        *KEPT_META_COLUMNS,
    )


def portraits(inputs: DataFrame, conf: Config, run_date: dt.date) -> DataFrame:
    """Portraits of ``inputs`` (user_id, facts_json, digest_text) with the configured backend."""
    run = run_agent(inputs, portrait.AGENT, conf, ["user_id"], portrait.context(conf.portrait))
    return _portrait_columns(run.output, run_date)


# --- entry point ------------------------------------------------------------------------


def agent_inputs(spark: SparkSession, conf: Config, events: DataFrame, run_date: dt.date) -> DataFrame:
    """The agent's input rows (:func:`portrait_inputs`) from the warehouse's tables: one
    per user with long-term activity; the digests when ``gold.behavior_digests`` exists."""
    digests = (
        tables.read(spark, conf, "gold.behavior_digests")
        if tables.exists(spark, conf, "gold.behavior_digests")
        else None
    )
    windows = tables.read(spark, conf, "silver.user_windows").filter(F.col("window") == "long_term")
    return portrait_inputs(
        category_shares(windows, conf.cfv.event_weights),
        order_stats(events, run_date, conf.aggregate.windows.long_term),
        top_factors_by_category(long_term_cfv(spark, conf, run_date)),
        digests,
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.portraits`` (whole table); returns counts (users, failed)."""
    events = tables.read(spark, conf, "bronze.events")
    run_date = resolve_run_date(spark, conf, events)
    backend = conf.llm.agent(portrait.AGENT.name).backend
    digests = tables.exists(spark, conf, "gold.behavior_digests")
    log.info(
        f"portrait: run date {run_date}, backend {backend}, "
        f"digests {'from gold.behavior_digests' if digests else 'not available'}",
    )
    inputs = agent_inputs(spark, conf, events, run_date).persist()
    tables.overwrite(portraits(inputs, conf, run_date), conf, PORTRAITS)
    inputs.unpersist()
    stats = (
        tables.read(spark, conf, PORTRAITS)
        .agg(F.count("*").alias("users"), F.sum((F.col("status") == "failed").cast("int")).alias("failed"))
        .collect()[0]
    )
    counts = {"users": int(stats["users"]), "failed": int(stats["failed"] or 0)}
    log.info(
        f"portrait: {PORTRAITS} {counts['users']:,} users, failed (heuristic fallback) {counts['failed']:,}",
    )
    return counts
