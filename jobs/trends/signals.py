"""Trend signals from our own behaviour tables: category trends, seed queries, weekly notes.

- ``factor_activity``: one row per event and decision factor of its item (with the
  factor's kind: style, colour, material, design, IP, ...), weighted by event type.
- ``category_trends`` (the source's "category-trend analysis"): per leaf category the
  factors whose share of the category's recent activity rose against the baseline weeks
  before. With ``r``/``b`` a factor's recent/baseline weight, ``R``/``B`` the category's
  totals and ``V`` its number of distinct factors, ``lift = ((r + 1) / (R + V)) /
  ((b + 1) / (B + V))`` (add-one smoothing, so a factor new this month does not divide by
  zero and one purchase is not a trend); kept when ``r >= min_support`` and
  ``lift >= min_lift``; ``growth = lift - 1``.
- ``seed_queries`` (the source's "seed-query library"): the busiest leaf categories, hot
  terms and growth terms (week-over-week) from ``silver.search_terms_weekly``, whose terms
  come from searches or, for data without searches, from purchased titles.
- ``weekly_notes``: per week and category a short "what is rising" document in the trend
  document format, published the Monday after the week: the ``derived`` trend source and
  the bundled corpus (``scripts/build_trend_corpus.py``).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs.aggregate import iso_week, terms, week_start, with_category
from jobs.cfv import event_weight


def factor_activity(
    events: DataFrame,
    item_categories: DataFrame,
    profiles: DataFrame,
    rules,
    weights: dict[str, float],
    exclude_kinds: list[str],
) -> DataFrame:
    """event_id, user_id, item_id, leaf_category, factor_kind, factor, dt, weight: one row per
    event and factor.

    ``weight`` is ``weights[event_type]`` (``cfv.event_weights``); events of weight 0
    (searches, cancellations) and items without a profile are left out.
    """
    keep = ~F.col("f.kind").isin(*exclude_kinds) if exclude_kinds else F.lit(True)
    factors = (
        profiles.select("item_id", F.explode("decision_factors").alias("f"))
        .filter(keep)
        .select(
            "item_id",
            F.col("f.kind").alias("factor_kind"),
            F.lower(F.trim(F.col("f.value"))).alias("factor"),
        )
        .filter(F.length("factor") > 0)
        .dropDuplicates(["item_id", "factor"])
    )
    return (
        events.filter(F.col("item_id").isNotNull())
        .withColumn("weight", event_weight(weights))
        .filter(F.col("weight") > 0)
        .transform(with_category(item_categories, rules))
        .join(factors, "item_id")
        .select("event_id", "user_id", "item_id", "leaf_category", "factor_kind", "factor", "dt", "weight")
    )


def _lift() -> Column:
    """The smoothed lift of the module docstring, from a row's ``recent_weight``,
    ``baseline_weight``, category totals ``_r_total``, ``_b_total`` and ``_vocab``."""
    r, b, vocab = F.col("recent_weight"), F.col("baseline_weight"), F.col("_vocab")
    return ((r + 1) / (F.col("_r_total") + vocab)) / ((b + 1) / (F.col("_b_total") + vocab))


def category_trends(
    activity: DataFrame,
    run_date: dt.date,
    recent_weeks: int,
    baseline_weeks: int,
    min_support: float,
    min_lift: float,
    top_n: int,
) -> DataFrame:
    """Rising factors per category as of ``run_date`` (see the module docstring).

    Recent = the ``7 * recent_weeks`` days ending at ``run_date``; baseline = the
    ``7 * baseline_weeks`` days before them. Columns: leaf_category, factor_kind, factor,
    recent_weight, baseline_weight, recent_share, baseline_share, lift, growth, rank.
    """
    age = F.datediff(F.lit(run_date), F.col("dt"))
    recent_days, baseline_days = 7 * recent_weeks, 7 * baseline_weeks
    in_recent = (age >= 0) & (age < recent_days)
    in_baseline = (age >= recent_days) & (age < recent_days + baseline_days)
    per_factor = (
        activity.filter(in_recent | in_baseline)
        .groupBy("leaf_category", "factor")
        .agg(
            F.sum(F.when(in_recent, F.col("weight")).otherwise(0.0)).alias("recent_weight"),
            F.sum(F.when(in_baseline, F.col("weight")).otherwise(0.0)).alias("baseline_weight"),
            # A value may be filed under two kinds by different items: keep the commonest.
            F.mode("factor_kind").alias("factor_kind"),
        )
    )
    return _rank_rising(per_factor, ["leaf_category"], min_support, min_lift, top_n)


def _rank_rising(
    per_factor: DataFrame, group: list[str], min_support: float, min_lift: float, top_n: int
) -> DataFrame:
    totals = Window.partitionBy(*group)
    scored = (
        per_factor.withColumn("_r_total", F.sum("recent_weight").over(totals))
        .withColumn("_b_total", F.sum("baseline_weight").over(totals))
        .withColumn("_vocab", F.count("*").over(totals))
        .withColumn("lift", _lift())
        .withColumn("recent_share", F.col("recent_weight") / F.col("_r_total"))
        .withColumn(
            "baseline_share",
            F.when(F.col("_b_total") > 0, F.col("baseline_weight") / F.col("_b_total")).otherwise(0.0),
        )
        .filter((F.col("recent_weight") >= min_support) & (F.col("lift") >= min_lift))
    )
    order = Window.partitionBy(*group).orderBy(F.desc("lift"), F.desc("recent_weight"), "factor")
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= top_n)
        .select(
            *group,
            "factor_kind",
            "factor",
            F.round("recent_weight", 3).alias("recent_weight"),
            F.round("baseline_weight", 3).alias("baseline_weight"),
            F.round("recent_share", 4).alias("recent_share"),
            F.round("baseline_share", 4).alias("baseline_share"),
            F.round("lift", 4).alias("lift"),
            F.round(F.col("lift") - 1, 4).alias("growth"),
            "rank",
        )
    )


def category_activity(
    activity: DataFrame, run_date: dt.date, recent_weeks: int, baseline_weeks: int
) -> DataFrame:
    """leaf_category, recent_weight, growth: the category's weekly activity rate in the
    recent weeks against the baseline weeks (``null`` growth when the baseline is empty).

    Each event counts once, whatever its number of factors.
    """
    age = F.datediff(F.lit(run_date), F.col("dt"))
    recent_days, baseline_days = 7 * recent_weeks, 7 * baseline_weeks
    per_event = activity.select("event_id", "leaf_category", "dt", F.col("weight").alias("w")).dropDuplicates(
        ["event_id"]
    )
    out = per_event.groupBy("leaf_category").agg(
        F.sum(F.when((age >= 0) & (age < recent_days), F.col("w")).otherwise(0.0)).alias("recent_weight"),
        F.sum(
            F.when((age >= recent_days) & (age < recent_days + baseline_days), F.col("w")).otherwise(0.0)
        ).alias("baseline_weight"),
    )
    rate_recent = F.col("recent_weight") / recent_weeks
    rate_base = F.col("baseline_weight") / baseline_weeks
    return out.filter(F.col("recent_weight") > 0).select(
        "leaf_category",
        "recent_weight",
        F.when(rate_base > 0, F.round(rate_recent / rate_base - 1, 4)).alias("growth"),
    )


# --- seed queries ---------------------------------------------------------------------------

RISING_TYPE = "array<struct<factor_kind:string,factor:string,growth:double>>"


def term_categories(
    events: DataFrame, item_categories: DataFrame, weights: dict[str, float], min_length: int = 3
) -> DataFrame:
    """term, leaf_category: the category whose items' titles carry the term in the most
    activity (events weighted by type), so that a term seed knows what it is about."""
    counted = (
        events.filter(F.col("item_id").isNotNull())
        .withColumn("weight", event_weight(weights))
        .filter(F.col("weight") > 0)
        .join(item_categories.select("item_id", "title", "leaf_category"), "item_id")
        .select("leaf_category", "weight", F.explode(terms(F.col("title"), min_length)).alias("term"))
        .groupBy("term", "leaf_category")
        .agg(F.sum("weight").alias("w"))
    )
    best = Window.partitionBy("term").orderBy(F.desc("w"), "leaf_category")
    return (
        counted.withColumn("_r", F.row_number().over(best)).filter("_r = 1").select("term", "leaf_category")
    )


def factor_terms_weekly(activity: DataFrame) -> DataFrame:
    """term, week_start, n, growth: decision factor values counted like search terms
    (events per ISO week, week-over-week growth), the hot and growing "terms" of data
    without searches, where title words would be noise ("please", "hot", "set")."""
    per_week = (
        activity.withColumn("week_start", week_start(F.col("dt")))
        .groupBy(F.col("factor").alias("term"), "week_start")
        .agg(F.countDistinct("event_id").alias("n"))
    )
    prev = per_week.select(
        "term", F.date_add("week_start", 7).alias("week_start"), F.col("n").alias("prev_n")
    )
    return per_week.join(prev, ["term", "week_start"], "left").select(
        "term",
        "week_start",
        "n",
        F.when(F.col("prev_n") > 0, F.round(F.col("n") / F.col("prev_n") - 1, 4)).alias("growth"),
    )


def factor_categories(activity: DataFrame) -> DataFrame:
    """term, leaf_category: the category where a factor value carries the most activity."""
    counted = activity.groupBy(F.col("factor").alias("term"), "leaf_category").agg(F.sum("weight").alias("w"))
    best = Window.partitionBy("term").orderBy(F.desc("w"), "leaf_category")
    return (
        counted.withColumn("_r", F.row_number().over(best)).filter("_r = 1").select("term", "leaf_category")
    )


def _rising_per_category(trends: DataFrame) -> DataFrame:
    return trends.groupBy("leaf_category").agg(
        F.transform(
            F.array_sort(F.collect_list(F.struct("rank", "factor_kind", "factor", "growth"))),
            lambda x: F.struct(x["factor_kind"].alias("factor_kind"), x["factor"].alias("factor"),
                               x["growth"].alias("growth")),
        ).alias("rising")
    )  # fmt: skip


def seed_queries(
    categories: DataFrame,
    trends: DataFrame,
    terms_weekly: DataFrame,
    term_cats: DataFrame,
    run_date: dt.date,
    recent_weeks: int,
    n_categories: int,
    n_hot: int,
    n_growth: int,
    min_term_support: int,
    exclude_categories: tuple[str, ...] = (),
) -> DataFrame:
    """seed_id, seed_kind, seed_text, leaf_category, support, growth, rising.

    Categories in ``exclude_categories`` (catch-alls such as "other") are no seed and
    no term's category.

    - ``category``: the ``n_categories`` categories with the most recent activity
      (``category_activity``); growth = their activity rate against the baseline;
    - ``hot_term``: the ``n_hot`` terms counted most over the recent weeks (at least
      ``min_term_support``); growth = the recent weekly rate against the weeks before;
    - ``growth_term``: the ``n_growth`` terms with the highest week-over-week growth in
      the last complete week, counted at least ``min_term_support`` times that week.

    ``rising``: the category's rising factors (``category_trends``), strongest first. A
    term that is both hot and growing is kept once, as a growth term.
    """
    cat_seeds = (
        categories.filter(
            ~F.col("leaf_category").isin(*exclude_categories) if exclude_categories else F.lit(True)
        )
        .orderBy(F.desc("recent_weight"), "leaf_category")
        .limit(n_categories)
        .select(
            F.lit("category").alias("seed_kind"),
            F.col("leaf_category").alias("seed_text"),
            "leaf_category",
            F.col("recent_weight").cast("double").alias("support"),
            F.col("growth").cast("double").alias("growth"),
        )
    )
    recent_start = run_date - dt.timedelta(days=7 * recent_weeks)
    complete = terms_weekly.filter(F.date_add("week_start", 6) <= F.lit(run_date))
    recent = complete.filter(F.col("week_start") > F.lit(recent_start))
    before = complete.filter(
        (F.col("week_start") <= F.lit(recent_start))
        & (F.col("week_start") > F.lit(recent_start - dt.timedelta(days=7 * recent_weeks)))
    )
    hot = (
        recent.groupBy("term")
        .agg(F.sum("n").alias("n"))
        .join(before.groupBy("term").agg(F.sum("n").alias("prev")), "term", "left")
        .filter(F.col("n") >= min_term_support)
        .orderBy(F.desc("n"), "term")
        .limit(n_hot)
        .select(
            F.lit("hot_term").alias("seed_kind"),
            F.col("term").alias("seed_text"),
            F.col("n").cast("double").alias("support"),
            F.when(F.col("prev") > 0, F.round(F.col("n") / F.col("prev") - 1, 4)).alias("growth"),
        )
    )
    last_week = complete.agg(F.max("week_start").alias("w"))
    growing = (
        complete.join(last_week, complete["week_start"] == last_week["w"])
        .filter((F.col("n") >= min_term_support) & (F.col("growth") > 0))
        .orderBy(F.desc("growth"), F.desc("n"), "term")
        .limit(n_growth)
        .select(
            F.lit("growth_term").alias("seed_kind"),
            F.col("term").alias("seed_text"),
            F.col("n").cast("double").alias("support"),
            F.col("growth").cast("double").alias("growth"),
        )
    )
    term_seeds = (
        growing.unionByName(hot.join(growing.select("seed_text"), "seed_text", "left_anti"))
        .join(
            term_cats.withColumnRenamed("term", "seed_text").filter(
                ~F.col("leaf_category").isin(*exclude_categories) if exclude_categories else F.lit(True)
            ),
            "seed_text",
            "left",
        )
        .select("seed_kind", "seed_text", "leaf_category", "support", "growth")
    )
    return (
        cat_seeds.unionByName(term_seeds)
        .join(_rising_per_category(trends), "leaf_category", "left")
        .select(
            F.substring(F.sha2(F.concat_ws("|", "seed_kind", "seed_text"), 256), 1, 16).alias("seed_id"),
            "seed_kind",
            "seed_text",
            "leaf_category",
            "support",
            "growth",
            F.coalesce("rising", F.array().cast(RISING_TYPE)).alias("rising"),
        )
    )


# --- weekly "what is rising" notes ----------------------------------------------------------


def weekly_notes(
    activity: DataFrame,
    item_titles: DataFrame,
    run_date: dt.date,
    weeks: int,
    baseline_weeks: int,
    min_support: float,
    min_lift: float,
    top_n: int,
    source: str = "derived",
) -> DataFrame:
    """Trend documents: per complete week (the last ``weeks`` before ``run_date``) and
    category with a rising factor, a note naming the rising factors (lift of the week's
    share against the ``baseline_weeks`` before) and the week's best sellers.

    Published on the Monday after the week, so a run as of a date sees only notes of
    weeks complete by then. Columns: the trend document format (docs/trends.md).
    """
    last_monday = run_date - dt.timedelta(days=run_date.weekday())  # the week in progress
    first = last_monday - dt.timedelta(days=7 * (weeks + baseline_weeks))
    base = activity.filter((F.col("dt") >= F.lit(first)) & (F.col("dt") < F.lit(last_monday))).withColumn(
        "week_start", week_start(F.col("dt"))
    )
    day_no = F.datediff("week_start", F.lit(dt.date(1970, 1, 5)))  # a Monday
    per_week = base.groupBy("leaf_category", "factor", "week_start").agg(
        F.sum("weight").alias("recent_weight"), F.mode("factor_kind").alias("factor_kind")
    )
    lookback = (
        Window.partitionBy("leaf_category", "factor").orderBy(day_no).rangeBetween(-7 * baseline_weeks, -7)
    )
    per_week = per_week.withColumn(
        "baseline_weight", F.coalesce(F.sum("recent_weight").over(lookback), F.lit(0.0))
    )
    # Category totals of the week and of its baseline (over all factors, not only this week's).
    cat_week = base.groupBy("leaf_category", "week_start").agg(F.sum("weight").alias("_r_total"))
    cat_back = Window.partitionBy("leaf_category").orderBy(day_no).rangeBetween(-7 * baseline_weeks, -7)
    cat_week = cat_week.withColumn("_b_total", F.coalesce(F.sum("_r_total").over(cat_back), F.lit(0.0)))
    vocab = base.groupBy("leaf_category").agg(F.countDistinct("factor").alias("_vocab"))
    keep_from = last_monday - dt.timedelta(days=7 * weeks)
    scored = (
        per_week.filter(F.col("week_start") >= F.lit(keep_from))
        .join(cat_week, ["leaf_category", "week_start"])
        .join(vocab, "leaf_category")
        .withColumn("lift", _lift())
        # A category's first week has nothing to rise against.
        .filter(
            (F.col("recent_weight") >= min_support) & (F.col("lift") >= min_lift) & (F.col("_b_total") > 0)
        )
    )
    order = Window.partitionBy("leaf_category", "week_start").orderBy(
        F.desc("lift"), F.desc("recent_weight"), "factor"
    )
    rising = (
        scored.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= top_n)
        .groupBy("leaf_category", "week_start")
        .agg(
            F.array_sort(F.collect_list(F.struct("rank", "factor", "factor_kind", "lift"))).alias("rising"),
            F.first("_b_total").alias("_b_total"),
        )
    )
    titles = item_titles.select("item_id", "title")
    per_item = (
        base.select("event_id", "user_id", "item_id", "leaf_category", "week_start", "weight")
        .dropDuplicates(["event_id"])
        .groupBy("leaf_category", "week_start", "item_id")
        .agg(F.sum("weight").alias("w"), F.countDistinct("user_id").alias("buyers"))
    )
    best = Window.partitionBy("leaf_category", "week_start").orderBy(F.desc("w"), "item_id")
    sellers = (
        per_item.withColumn("_r", F.row_number().over(best))
        .filter("_r <= 3")
        .join(titles, "item_id", "left")
        .groupBy("leaf_category", "week_start")
        .agg(
            F.array_sort(F.collect_list(F.struct("_r", F.coalesce("title", "item_id").alias("t")))).alias(
                "best"
            )
        )
    )
    buyers = base.groupBy("leaf_category", "week_start").agg(F.countDistinct("user_id").alias("n_buyers"))
    phrase = F.transform(
        "rising",
        lambda x: F.concat(
            x["factor"], F.lit(" ("), x["factor_kind"], F.lit(", "), F.format_number(x["lift"], 1),
            F.lit("x its usual share)"),
        ),
    )  # fmt: skip
    text = F.concat(
        F.lit("In the week of "), F.date_format("week_start", "d MMMM yyyy"), F.lit(", "),
        F.col("n_buyers").cast("string"), F.lit(" buyers were active in "), F.col("leaf_category"),
        F.lit(". Rising against the up to "), F.lit(str(baseline_weeks)), F.lit(" weeks before: "),
        F.array_join(phrase, "; "), F.lit(". Best sellers: "),
        F.array_join(F.transform("best", lambda x: F.initcap(x["t"])), "; "), F.lit("."),
    )  # fmt: skip
    published = F.to_timestamp(F.date_add("week_start", 7))
    return (
        rising.join(sellers, ["leaf_category", "week_start"], "left")
        .join(buyers, ["leaf_category", "week_start"])
        .select(
            F.substring(
                F.sha2(
                    F.concat_ws("|", F.lit(source), "leaf_category", F.col("week_start").cast("string")), 256
                ),
                1,
                24,
            ).alias("doc_id"),
            F.lit(source).alias("source"),
            F.concat(F.col("leaf_category"), F.lit(": rising in "), iso_week(F.col("week_start"))).alias(
                "title"
            ),
            text.alias("text"),
            F.lit(None).cast("string").alias("url"),
            published.alias("published_at"),
            F.array("leaf_category").alias("categories"),
            F.lit("en").alias("lang"),
            F.lit(None).cast("string").alias("seed_query"),
            published.alias("fetched_at"),
        )
    )
