"""Aggregate: bronze events -> silver behaviour tables, as of a run date.

- ``silver.item_categories``: every item with a leaf category (catalog, else title rules).
- ``silver.user_week_category``: user x ISO week x leaf category: counts per event type,
  net GMV, net quantity, distinct items, top search terms; over ``horizon_days``.
- ``silver.user_windows``: per user and category the same measures over the long-term,
  eight-week and recent windows.
- ``silver.search_terms_weekly``: term x week counts, distinct users and week-over-week
  growth; from search queries, or from purchased titles where a dataset has no searches.

Each table is rewritten whole from bronze, so a re-run for the same run date writes the
same rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.categories import (
    UNKNOWN_CATEGORY,
    CategoryRules,
    assign_leaf_category,
    category_from_text,
    load_rules,
)
from core.config import Config
from core.rundate import resolve_run_date
from jobs.ingest.staging import EVENT_TYPES

log = logging.getLogger(__name__)

STOPWORDS = frozenset(
    """a an and are as at be by for from in into is it of on or set the to with
    small large mini medium jumbo assorted pack""".split()
)  # fmt: skip


# --- column helpers -------------------------------------------------------------------


def week_start(day: Column) -> Column:
    """Monday of the ISO week of ``day``.

    Date arithmetic (``dayofweek`` is 1 on Sunday, 2 on Monday): cheaper than
    ``date_trunc``, which goes through a timestamp and back.
    """
    return F.date_sub(day, (F.dayofweek(day) + 5) % 7)


def iso_week(day: Column) -> Column:
    """ISO-8601 week label, e.g. ``2011-W49``; the ISO year is the year of the Thursday."""
    monday = week_start(day)
    return F.concat(
        F.year(F.date_add(monday, 3)).cast("string"),
        F.lit("-W"),
        F.lpad(F.weekofyear(monday).cast("string"), 2, "0"),
    )


def terms(text: Column, min_length: int = 3) -> Column:
    """Lower-cased word tokens of ``text`` (any script), without stop words or numbers.

    A word is a maximal run of letters and digits. One regular expression picks the words
    of at least ``min_length`` characters that are not all digits, and ``array_except``
    drops the stop words and repeats (keeping the first occurrence's order): built-in
    functions only, no per-word lambda, which Spark would interpret row by row.
    """
    word = r"[\p{L}\p{N}]"
    pattern = rf"(?<!{word})(?!\p{{N}}+(?!{word})){word}{{{int(min_length)},}}"
    words = F.regexp_extract_all(F.lower(F.coalesce(text, F.lit(""))), F.lit(pattern), 0)
    stop = F.array(*[F.lit(w) for w in sorted(STOPWORDS)])
    return F.array_except(words, stop)


def _measures() -> list[Column]:
    et = F.col("event_type")
    gmv_event = et.isin("purchase", "cancel")
    counts = [F.count_if(et == t).alias(f"n_{t}") for t in EVENT_TYPES]
    return counts + [
        F.count("*").alias("n_events"),
        # Net of cancellations (their amounts are negative).
        F.round(F.sum(F.when(gmv_event, F.col("amount"))), 2).alias("amount"),
        F.sum(F.when(gmv_event, F.col("quantity"))).alias("quantity"),
        F.count_distinct("item_id").alias("distinct_items"),
    ]


# --- transforms -----------------------------------------------------------------------


def within_horizon(run_date: dt.date, days: int) -> Callable[[DataFrame], DataFrame]:
    """Events with ``run_date - days < dt <= run_date``."""

    def transform(events: DataFrame) -> DataFrame:
        start = run_date - dt.timedelta(days=days)
        return events.filter((F.col("dt") > F.lit(start)) & (F.col("dt") <= F.lit(run_date)))

    return transform


def item_categories(items: DataFrame, rules: CategoryRules) -> DataFrame:
    """item_id, title, leaf_category, category_source for every catalog item."""
    return items.select("item_id", "title", "leaf_category").transform(assign_leaf_category(rules))


def with_category(item_cats: DataFrame, rules: CategoryRules) -> Callable[[DataFrame], DataFrame]:
    """Add ``leaf_category``: the item's; for a search without item, from the query words."""

    def transform(events: DataFrame) -> DataFrame:
        cats = item_cats.select("item_id", F.col("leaf_category").alias("_item_cat"))
        from_query = F.when(F.col("event_type") == "search", category_from_text(F.col("query"), rules))
        return (
            events.join(F.broadcast(cats), "item_id", "left")
            .withColumn("leaf_category", F.coalesce("_item_cat", from_query, F.lit(UNKNOWN_CATEGORY)))
            .drop("_item_cat")
        )

    return transform


def top_search_terms(events: DataFrame, keys: list[str], n: int, min_length: int = 3) -> DataFrame:
    """``keys`` + ``top_search_terms``: the n most frequent query terms (ties by term)."""
    counted = (
        events.filter((F.col("event_type") == "search") & F.col("query").isNotNull())
        .select(*keys, F.explode(terms(F.col("query"), min_length)).alias("term"))
        .groupBy(*keys, "term")
        .count()
    )
    # Sorting (-count, term) pairs inside each group gives the ranking without a window.
    ranked = F.array_sort(F.collect_list(F.struct((-F.col("count")).alias("neg_count"), "term")))
    return counted.groupBy(*keys).agg(
        F.transform(F.slice(ranked, 1, n), lambda s: s["term"]).alias("top_search_terms")
    )


def measures_by_item_first(events: DataFrame, keys: list[str]) -> DataFrame:
    """The ``_measures`` per ``keys``, computed in two steps: per item, then per key.

    Same result as ``groupBy(keys).agg(*_measures())``, but the distinct-item count
    becomes a plain count of the per-item rows, so Spark needs no Expand for a distinct
    aggregate and the second step reads one row per item instead of one per event.
    """
    et = F.col("event_type")
    gmv_event = et.isin("purchase", "cancel")
    per_item = events.groupBy(*keys, "item_id").agg(
        *[F.count_if(et == t).alias(f"n_{t}") for t in EVENT_TYPES],
        F.count("*").alias("n_events"),
        F.sum(F.when(gmv_event, F.col("amount"))).alias("amount"),
        F.sum(F.when(gmv_event, F.col("quantity"))).alias("quantity"),
    )
    return per_item.groupBy(*keys).agg(
        *[F.sum(f"n_{t}").alias(f"n_{t}") for t in EVENT_TYPES],
        F.sum("n_events").alias("n_events"),
        F.round(F.sum("amount"), 2).alias("amount"),
        F.sum("quantity").alias("quantity"),
        F.count("item_id").alias("distinct_items"),
    )


def user_week_category(events: DataFrame, top_terms: int = 5, min_term_length: int = 3) -> DataFrame:
    """User x ISO week x leaf category measures (events must carry ``leaf_category``).

    Two branches, each shuffled once by the key: the measures (all events, only the
    columns they need) and the search terms (only searches with a query). Both come out
    hash-partitioned by the key, so the terms join to the measures by a shuffled hash
    join built on the smaller terms side: no further shuffle and no sort.
    """
    keys = ["user_id", "week_start", "leaf_category"]
    keyed = events.withColumn("week_start", week_start(F.col("dt")))
    # A user-week-category group holds few events, so combining before the shuffle would
    # save little: one shuffle by the key serves both aggregation steps of the measures.
    measures = keyed.select(*keys, "item_id", "event_type", "quantity", "amount").repartition(*keys)
    out = measures_by_item_first(measures, keys)
    no_terms = F.array().cast("array<string>")
    if top_terms > 0:
        searches = (
            keyed.filter((F.col("event_type") == "search") & F.col("query").isNotNull())
            .select(*keys, "query")
            .repartition(*keys)
        )
        top = top_search_terms(searches, keys, top_terms, min_term_length)
        out = out.join(top.hint("shuffle_hash"), keys, "left")
        out = out.withColumn("top_search_terms", F.coalesce(F.col("top_search_terms"), no_terms))
    else:
        out = out.withColumn("top_search_terms", no_terms)
    return out.select(
        "user_id",
        iso_week(F.col("week_start")).alias("iso_week"),
        "week_start",
        "leaf_category",
        *_measure_names(),
        "top_search_terms",
    )


def user_windows(run_date: dt.date, windows: dict[str, int]) -> Callable[[DataFrame], DataFrame]:
    """Per user x category x window (name -> days, ending at ``run_date``) measures."""

    def transform(events: DataFrame) -> DataFrame:
        age = F.datediff(F.lit(run_date), F.col("dt"))
        tagged = events.filter(age >= 0).withColumn(
            "window",
            F.explode(
                F.filter(
                    F.array(*[F.when(age < d, F.lit(name)) for name, d in windows.items()]),
                    lambda w: w.isNotNull(),
                )
            ),
        )
        days = F.create_map(*[x for name, d in windows.items() for x in (F.lit(name), F.lit(d))])
        return (
            tagged.groupBy("user_id", "leaf_category", "window")
            .agg(
                *_measures(),
                F.count_distinct(week_start(F.col("dt"))).alias("active_weeks"),
                F.min("dt").alias("first_dt"),
                F.max("dt").alias("last_dt"),
            )
            .select(
                "user_id",
                "leaf_category",
                "window",
                days[F.col("window")].alias("window_days"),
                F.lit(run_date).alias("as_of"),
                *_measure_names(),
                "active_weeks",
                "first_dt",
                "last_dt",
            )
        )

    return transform


def _measure_names() -> list[str]:
    return [f"n_{t}" for t in EVENT_TYPES] + ["n_events", "amount", "quantity", "distinct_items"]


def search_terms_weekly(events: DataFrame, items: DataFrame | None = None, min_length: int = 3) -> DataFrame:
    """Term x week: count, distinct users, previous week's count and growth.

    Terms come from search queries; where there are none, from the titles of purchased
    items (``term_source`` says which). ``growth = (n - prev_n) / prev_n`` and is null
    when the term was absent the week before (``prev_n = 0``).
    """
    searches = events.filter((F.col("event_type") == "search") & F.col("query").isNotNull())
    if items is not None and searches.limit(1).count() == 0:
        text = (
            events.filter(F.col("event_type") == "purchase")
            .join(items.select("item_id", "title"), "item_id")
            .select("user_id", "dt", F.col("title").alias("text"))
        )
        source = "purchase_title"
    else:
        text = searches.select("user_id", "dt", F.col("query").alias("text"))
        source = "search"
    per_week = (
        text.select(
            "user_id",
            week_start(F.col("dt")).alias("week_start"),
            F.explode(terms(F.col("text"), min_length)).alias("term"),
        )
        .groupBy("term", "week_start")
        .agg(F.count("*").alias("n"), F.count_distinct("user_id").alias("n_users"))
    )
    prev = per_week.select(
        "term", F.date_add("week_start", 7).alias("week_start"), F.col("n").alias("prev_n")
    )
    return (
        per_week.join(prev, ["term", "week_start"], "left")
        .withColumn("prev_n", F.coalesce("prev_n", F.lit(0)))
        .select(
            "term",
            iso_week(F.col("week_start")).alias("iso_week"),
            "week_start",
            F.lit(source).alias("term_source"),
            "n",
            "n_users",
            "prev_n",
            F.when(F.col("prev_n") > 0, F.round((F.col("n") - F.col("prev_n")) / F.col("prev_n"), 4)).alias(
                "growth"
            ),
        )
    )


# --- entry point ----------------------------------------------------------------------


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Read bronze, write the four silver tables; returns rows written per table."""
    ac = conf.aggregate
    rules = load_rules(ac.category_rules)
    events = tables.read(spark, conf, "bronze.events")
    items = tables.read(spark, conf, "bronze.items")
    run_date = resolve_run_date(spark, conf, events)
    log.info(f"aggregate: run date {run_date}, horizon {ac.horizon_days} days")

    cats = item_categories(items, rules)
    profiles = (
        tables.read(spark, conf, "silver.item_profiles")
        if tables.exists(spark, conf, "silver.item_profiles")
        else None
    )
    if profiles is not None and {"leaf_category", "category_source"} <= set(profiles.columns):
        # The items stage ran first: its categories (catalog, rules or LLM) are the ones
        # every later table uses; items it has not profiled keep the rule's.
        profiled = profiles.select(
            "item_id", F.col("leaf_category").alias("_cat"), F.col("category_source").alias("_src")
        )
        cats = cats.join(profiled, "item_id", "left").select(
            "item_id",
            "title",
            F.coalesce("_cat", "leaf_category").alias("leaf_category"),
            F.coalesce("_src", "category_source").alias("category_source"),
        )
    tables.overwrite(cats, conf, "silver.item_categories")
    cats = tables.read(spark, conf, "silver.item_categories")

    horizon = events.transform(within_horizon(run_date, ac.horizon_days)).transform(
        with_category(cats, rules)
    )
    outputs = {
        "silver.user_week_category": user_week_category(horizon, ac.top_search_terms, ac.min_term_length),
        "silver.user_windows": horizon.transform(user_windows(run_date, ac.windows.model_dump())),
        "silver.search_terms_weekly": search_terms_weekly(horizon, items, ac.min_term_length),
    }
    counts = {"silver.item_categories": cats.count()}
    for name, df in outputs.items():
        tables.overwrite(df, conf, name)
        counts[name] = tables.read(spark, conf, name).count()
    for name, n in counts.items():
        log.info(f"aggregate: {name} {n:,} rows")
    return counts
