"""Behaviour compression: eight weeks of each buyer's behaviour -> ``gold.behavior_digests``.

A user active in the last ``compress.weeks`` ISO weeks (ending at the run date) gets one
row whose ``digest_rows`` hold one string per (week, category) with activity::

    #2011-W48_candles and holders_40.80_24_3_heart:2|white:2|mid:1

= ``#<iso_week>_<category>_<amount>_<quantity>_<count>_<factor:n|...>``: net GMV (2
decimals), net quantity, number of behaviour events of that week and category, and the
``compress.max_factors_per_row`` most frequent decision-factor values of the items behind
those events (from ``silver.item_profiles``; one count per event, most frequent first,
ties by value). ``_``, ``|``, ``:`` and ``#`` inside a category or factor become spaces.

Two modes (``compress.mode``):

- ``hybrid`` (default): numbers exact from ``silver.user_week_category``, factors from the
  item profiles joined to the events; no LLM call (``status = 'heuristic'``,
  ``model = 'heuristic'``, ``prompt_version = 'hybrid-v1'``, fidelity 1.0).
- ``llm``: the ``behavior_compression`` agent reads the user's raw behaviour text and
  writes the rows; each row's numbers are compared with the exact aggregate
  (``fidelity``, ``fidelity_flags``). A user whose answer failed keeps the hybrid digest,
  with ``status = 'failed'`` and the ``error_class``.

Token columns are estimates (``udfs.llm.agent.estimate_tokens``: characters / 4), applied
the same way to the raw text and to the digest text; LLM token columns are the server's.

Example
-------
>>> from jobs.compress import run
>>> run(spark, load_config())          # or: discovery compress
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core import tables
from core.categories import load_rules
from core.config import Config
from core.rundate import resolve_run_date
from jobs.agents import run_agent
from jobs.aggregate import iso_week, with_category
from udfs.agents import behavior_compression as bc
from udfs.llm.agent import estimate_tokens

log = logging.getLogger(__name__)

DIGESTS = "gold.behavior_digests"
HYBRID_MODEL = "heuristic"
HYBRID_VERSION = "hybrid-v1"

ROW_TYPE = T.StructType(
    [
        T.StructField("week", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("quantity", T.LongType()),
        T.StructField("count", T.LongType()),
        T.StructField(
            "factors",
            T.ArrayType(
                T.StructType([T.StructField("factor", T.StringType()), T.StructField("n", T.LongType())])
            ),
        ),
    ]
)


# --- the window ---------------------------------------------------------------------------


def window_weeks(run_date: dt.date, weeks: int) -> list[tuple[dt.date, str]]:
    """(Monday, ISO week label) of the ``weeks`` ISO weeks ending with the run date's, oldest first.

    >>> window_weeks(dt.date(2011, 12, 9), 2)
    [(datetime.date(2011, 11, 28), '2011-W48'), (datetime.date(2011, 12, 5), '2011-W49')]
    """
    monday = run_date - dt.timedelta(days=run_date.weekday())
    mondays = [monday - dt.timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
    return [(m, bc.iso_week_label(m)) for m in mondays]


def in_window(run_date: dt.date, weeks: int, day_column: str = "dt"):
    """Rows whose ``day_column`` lies in the window: from the first week's Monday to the run date."""
    start = window_weeks(run_date, weeks)[0][0]

    def transform(df: DataFrame) -> DataFrame:
        day = F.col(day_column)
        return df.filter((day >= F.lit(start)) & (day <= F.lit(run_date)))

    return transform


# --- transforms -----------------------------------------------------------------------------


def behaviour_events(
    events: DataFrame, item_categories: DataFrame, profiles: DataFrame | None, rules
) -> DataFrame:
    """Events with the aggregate's ``leaf_category``, the item's short title and factor values.

    ``events`` should already be cut to the window. Categories come from
    ``jobs.aggregate.with_category`` (the same ones ``silver.user_week_category`` uses).
    The title is the profile's short title, else the catalog title (``silver.item_categories``).
    """
    titled = events.transform(with_category(item_categories, rules)).join(
        F.broadcast(item_categories.select("item_id", F.col("title").alias("_catalog_title"))),
        "item_id",
        "left",
    )
    if profiles is not None:
        prof = profiles.select(
            "item_id", "short_title", F.col("decision_factors.value").alias("factor_values")
        )
        titled = titled.join(prof, "item_id", "left")
    else:
        titled = titled.withColumn("short_title", F.lit(None).cast("string")).withColumn(
            "factor_values", F.lit(None).cast("array<string>")
        )
    return titled.select(
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "ts",
        "dt",
        "query",
        "quantity",
        "amount",
        "leaf_category",
        F.coalesce("short_title", "_catalog_title").alias("title"),
        F.coalesce("factor_values", F.array().cast("array<string>")).alias("factor_values"),
        F.col("extras").getItem("duration_s").alias("duration_s"),
    )


def factor_counts(events: DataFrame, max_factors: int) -> DataFrame:
    """user_id, iso_week, leaf_category, factors (array<struct<factor, n>>): the top values.

    Each event counts once for every factor value of its item; most frequent first, ties
    by value.
    """
    per_value = (
        events.withColumn("iso_week", iso_week(F.col("dt")))
        .select(
            "user_id", "iso_week", "leaf_category", F.explode(F.array_distinct("factor_values")).alias("f")
        )
        .groupBy("user_id", "iso_week", "leaf_category", "f")
        .agg(F.count("*").alias("n"))
    )
    # Sorting (-n, value) structs orders by count then value, without a window.
    ranked = F.array_sort(F.collect_list(F.struct((-F.col("n")).alias("neg"), F.col("f").alias("factor"))))
    top = F.slice(ranked, 1, max_factors) if max_factors > 0 else F.slice(ranked, 1, 0)
    return per_value.groupBy("user_id", "iso_week", "leaf_category").agg(
        F.transform(top, lambda s: F.struct(s["factor"].alias("factor"), (-s["neg"]).alias("n"))).alias(
            "factors"
        )
    )


def exact_rows(week_category: DataFrame, factors: DataFrame) -> DataFrame:
    """user_id, rows (array of ``ROW_TYPE``, by week then category) from the window's
    ``silver.user_week_category`` rows and their factor counts."""
    joined = week_category.join(factors, ["user_id", "iso_week", "leaf_category"], "left")
    row = F.struct(
        F.col("iso_week").alias("week"),
        F.col("leaf_category").alias("category"),
        # + 0.0 turns a -0.0 sum into 0.0, which prints without a sign.
        (F.coalesce(F.col("amount"), F.lit(0.0)) + F.lit(0.0)).alias("amount"),
        F.coalesce(F.col("quantity"), F.lit(0)).cast("long").alias("quantity"),
        F.col("n_events").cast("long").alias("count"),
        F.coalesce(F.col("factors"), F.array().cast(ROW_TYPE["factors"].dataType)).alias("factors"),
    )
    return joined.groupBy("user_id").agg(F.array_sort(F.collect_list(row)).alias("rows"))


def _token_text(text: Column) -> Column:
    return F.replace(F.replace(F.replace(F.replace(text, F.lit("_"), F.lit(" ")), F.lit("|"), F.lit(" ")),
                               F.lit(":"), F.lit(" ")), F.lit("#"), F.lit(" "))  # fmt: skip


def digest_strings(rows: Column) -> Column:
    """``#<week>_<category>_<amount>_<quantity>_<count>_<factor:n|...>`` for each row of ``rows``."""

    def one(r: Column) -> Column:
        factors = F.array_join(
            F.transform(
                r["factors"], lambda f: F.concat(_token_text(f["factor"]), F.lit(":"), f["n"].cast("string"))
            ),
            "|",
        )
        return F.concat(
            F.lit("#"),
            r["week"],
            F.lit("_"),
            _token_text(r["category"]),
            F.lit("_"),
            F.format_string("%.2f", r["amount"] + F.lit(0.0)),
            F.lit("_"),
            r["quantity"].cast("string"),
            F.lit("_"),
            r["count"].cast("string"),
            F.lit("_"),
            factors,
        )

    return F.transform(rows, one)


@F.udf(T.LongType())
def _estimate_tokens(text: str | None) -> int:
    return estimate_tokens([{"content": text or ""}])


def raw_texts(events: DataFrame, max_lines: int) -> DataFrame:
    """user_id, raw_text (``udfs.agents.behavior_compression.raw_behavior_text``), raw_tokens."""
    fields = ["event_id", "ts", "dt", "event_type", "leaf_category", "title", "query", "quantity",
              "amount", "duration_s", "item_id"]  # fmt: skip

    @F.udf(T.StringType())
    def render(evs) -> str:
        rows = []
        for e in evs or []:
            d = e.asDict()
            d["category"] = d.pop("leaf_category")
            rows.append(d)
        return bc.raw_behavior_text(rows, max_lines)

    per_user = events.groupBy("user_id").agg(F.collect_list(F.struct(*fields)).alias("evs"))
    return per_user.select("user_id", render("evs").alias("raw_text")).withColumn(
        "raw_tokens", _estimate_tokens("raw_text")
    )


def _finish(df: DataFrame, run_date: dt.date, weeks: int, mode: str) -> DataFrame:
    """Add digest_text and the token columns; select the table's columns in order."""
    return (
        df.withColumn("digest_text", F.array_join("digest_rows", "\n"))
        .withColumn("digest_tokens", _estimate_tokens("digest_text"))
        .select(
            "user_id",
            F.lit(run_date).alias("as_of"),
            F.lit(weeks).alias("weeks"),
            F.lit(mode).alias("mode"),
            "digest_rows",
            "digest_text",
            F.col("raw_tokens").cast("long").alias("raw_tokens"),
            "digest_tokens",
            F.col("llm_input_tokens").cast("long").alias("llm_input_tokens"),
            F.col("llm_output_tokens").cast("long").alias("llm_output_tokens"),
            F.col("fidelity").cast("double").alias("fidelity"),
            F.col("fidelity_flags").cast("array<string>").alias("fidelity_flags"),
            "status",
            "error_class",
            "model",
            "prompt_version",
        )
    )


def hybrid_digests(exact: DataFrame, raw: DataFrame, run_date: dt.date, weeks: int) -> DataFrame:
    """The hybrid digest of every user: exact numbers, factors from item profiles, no LLM."""
    return _finish(
        exact.join(raw, "user_id", "left").select(
            "user_id",
            digest_strings(F.col("rows")).alias("digest_rows"),
            F.coalesce("raw_tokens", F.lit(0)).alias("raw_tokens"),
            F.lit(0).alias("llm_input_tokens"),
            F.lit(0).alias("llm_output_tokens"),
            F.lit(1.0).alias("fidelity"),
            F.array().cast("array<string>").alias("fidelity_flags"),
            F.lit("heuristic").alias("status"),
            F.lit(None).cast("string").alias("error_class"),
            F.lit(HYBRID_MODEL).alias("model"),
            F.lit(HYBRID_VERSION).alias("prompt_version"),
        ),
        run_date,
        weeks,
        "hybrid",
    )


_FIDELITY = T.StructType(
    [T.StructField("fidelity", T.DoubleType()), T.StructField("flags", T.ArrayType(T.StringType()))]
)


@F.udf(_FIDELITY)
def _fidelity(exact_json: str, got_json: str | None):
    return bc.compare_rows(json.loads(exact_json or "[]"), json.loads(got_json or "[]"))


def agent_inputs(exact: DataFrame, raw: DataFrame, week_labels: list[str]) -> DataFrame:
    """One input row per user for the behavior_compression agent."""
    return exact.join(raw, "user_id", "left").select(
        "user_id",
        F.coalesce("raw_text", F.lit("")).alias("raw_text"),
        F.coalesce("raw_tokens", F.lit(0)).alias("raw_tokens"),
        F.lit(json.dumps(week_labels)).alias("weeks_json"),
        F.to_json(F.array_distinct(F.transform("rows", lambda r: r["category"]))).alias("categories_json"),
        F.to_json("rows").alias("exact_json"),
        F.col("rows").alias("exact_rows"),
    )


def llm_digests(inputs: DataFrame, conf: Config, context: dict, run_date: dt.date) -> DataFrame:
    """Digests written by the agent, scored against the exact rows; failed users get the hybrid one."""
    # A failed answer falls back to the exact digest below, not to the agent's heuristic.
    run = run_agent(inputs, bc.AGENT, conf, ["user_id"], context, fallback=None)
    answered = run.output.join(inputs.select("user_id", "raw_tokens", "exact_json", "exact_rows"), "user_id")
    ok = F.col("status").isin("ok", "heuristic")
    model_rows = F.array_sort(F.col("output.rows").cast(T.ArrayType(ROW_TYPE)))
    scored = answered.withColumn(
        "_score", F.when(ok, _fidelity("exact_json", F.to_json(F.col("output.rows"))))
    )
    failed_note = F.array(
        F.concat(
            F.lit("LLM answer failed ("),
            F.coalesce("error_class", F.lit("unknown")),
            F.lit("); the exact hybrid digest is used"),
        )
    )
    return _finish(
        scored.select(
            "user_id",
            F.when(ok, digest_strings(model_rows))
            .otherwise(digest_strings(F.col("exact_rows")))
            .alias("digest_rows"),
            "raw_tokens",
            F.coalesce("input_tokens", F.lit(0)).alias("llm_input_tokens"),
            F.coalesce("output_tokens", F.lit(0)).alias("llm_output_tokens"),
            F.when(ok, F.col("_score.fidelity")).otherwise(F.lit(1.0)).alias("fidelity"),
            F.when(ok, F.col("_score.flags")).otherwise(failed_note).alias("fidelity_flags"),
            "status",
            "error_class",
            "model",
            "prompt_version",
        ),
        run_date,
        conf.compress.weeks,
        "llm",
    )


# --- entry point ------------------------------------------------------------------------


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.behavior_digests`` (whole table); returns counts (users, failed)."""
    cc = conf.compress
    rules = load_rules(conf.aggregate.category_rules)
    all_events = tables.read(spark, conf, "bronze.events")
    run_date = resolve_run_date(spark, conf, all_events)
    weeks = window_weeks(run_date, cc.weeks)
    log.info(
        f"compress: run date {run_date}, weeks {weeks[0][1]}..{weeks[-1][1]}, mode {cc.mode}",
    )
    profiles = (
        tables.read(spark, conf, "silver.item_profiles")
        if tables.exists(spark, conf, "silver.item_profiles")
        else None
    )
    if profiles is None:
        log.info("compress: silver.item_profiles not found: digests without factors")
    events = behaviour_events(
        all_events.transform(in_window(run_date, cc.weeks)),
        tables.read(spark, conf, "silver.item_categories"),
        profiles,
        rules,
    ).persist()
    week_category = tables.read(spark, conf, "silver.user_week_category").transform(
        in_window(run_date, cc.weeks, "week_start")
    )
    exact = exact_rows(week_category, factor_counts(events, cc.max_factors_per_row)).persist()
    raw = raw_texts(events, cc.max_raw_lines)
    if cc.mode == "hybrid":
        digests = hybrid_digests(exact, raw, run_date, cc.weeks)
    else:
        context = bc.context(conf.aggregate.category_rules, cc.max_factors_per_row)
        inputs = agent_inputs(exact, raw, [label for _, label in weeks]).persist()
        digests = llm_digests(inputs, conf, context, run_date)
    tables.overwrite(digests, conf, DIGESTS)
    events.unpersist()
    exact.unpersist()
    written = tables.read(spark, conf, DIGESTS)
    stats = written.agg(
        F.count("*").alias("users"),
        F.sum(F.when(F.col("status") == "failed", 1).otherwise(0)).alias("failed"),
        F.sum("raw_tokens").alias("raw_tokens"),
        F.sum("digest_tokens").alias("digest_tokens"),
        F.avg("fidelity").alias("fidelity"),
    ).collect()[0]
    counts = {"users": int(stats["users"]), "failed": int(stats["failed"] or 0)}
    raw_t, dig_t = int(stats["raw_tokens"] or 0), int(stats["digest_tokens"] or 0)
    log.info(
        f"compress: {DIGESTS} {counts['users']:,} users, failed (hybrid fallback) {counts['failed']:,}; "
        f"estimated tokens raw {raw_t:,} -> digest {dig_t:,}"
        + (f" ({raw_t / dig_t:.1f}x)" if dig_t else "")
        + (f"; mean fidelity {stats['fidelity']:.3f}" if stats["fidelity"] is not None else ""),
    )
    return counts
