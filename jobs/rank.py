"""Rank: Q2I candidates -> ``gold.recommendations``, top ``rank.top_k`` per user.

One scoring with named components, each in 0..1:

- ``relevance``: cosine similarity of the item to the query that found it;
- ``personalisation``: ``0.7 x cfv_match + 0.3 x price_match`` (``jobs.q2i``);
- ``discovery``: 1 when the item's category is new to the user (never touched in the
  long-term window), 0.5 when the category is known but the item is new, else 0;
- ``trend``: 1 when the query that found it is a trend query;
- ``popularity``: ``log(1 + buyers) / log(1 + buyers of the most-bought item)``, buyers
  counted up to the run date: wholesale buyers trust what other shops stock, and
  semantic relevance alone cannot tell a staple from an item nobody buys.

``score = sum(rank.weights[c] x c)``. An item found by several queries of the user is
ranked once, with its best-scoring query (whose reason it carries). Items the user bought
before are excluded, demoted (``score x rank.bought_factor``) or kept (``rank.bought``).
Diversity: at most ``rank.max_per_category`` items of one category, filled greedily in
score order (ties by item id), then the top ``rank.top_k``.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs import tables
from jobs.aggregate import resolve_run_date
from jobs.config import Config, RankConf

RECOMMENDATIONS = "gold.recommendations"
COMPONENTS = ("relevance", "personalisation", "discovery", "trend", "popularity")
DISCOVERY_NEW_CATEGORY, DISCOVERY_NEW_ITEM = 1.0, 0.5


# The arithmetic below takes Spark columns (this module) or numpy / pandas values
# (jobs/nearline), so that both paths score alike.


def personalisation(cfv_match, price_match):
    """The personalisation component from q2i's matches."""
    return 0.7 * cfv_match + 0.3 * price_match


def weighted_total(values, weights):
    """``sum(weights[c] x values[c])`` over :data:`COMPONENTS`."""
    total = 0.0
    for c in COMPONENTS:
        total = total + float(getattr(weights, c)) * values[c]
    return total


def item_popularity(bought: DataFrame) -> DataFrame:
    """(item_id, popularity in 0..1) from distinct (user_id, item_id) purchases."""
    buyers = bought.groupBy("item_id").agg(F.countDistinct("user_id").alias("_n"))
    top = buyers.agg(F.max("_n")).collect()[0][0] or 1
    return buyers.select("item_id", (F.log1p("_n") / math.log1p(top)).alias("popularity"))


def components(
    candidates: DataFrame,
    known_categories: DataFrame,
    touched_items: DataFrame,
    popularity: DataFrame | None = None,
) -> DataFrame:
    """Candidates + the components (see the module docstring); no ``popularity`` frame = 0."""
    known = known_categories.select("user_id", "leaf_category", F.lit(True).alias("_known_cat"))
    seen = touched_items.select("user_id", "item_id", F.lit(True).alias("_seen"))
    if popularity is None:
        candidates = candidates.withColumn("popularity", F.lit(0.0))
    else:
        candidates = candidates.join(popularity, "item_id", "left").withColumn(
            "popularity", F.coalesce("popularity", F.lit(0.0))
        )
    return (
        candidates.join(known, ["user_id", "leaf_category"], "left")
        .join(seen, ["user_id", "item_id"], "left")
        .withColumn("personalisation", personalisation(F.col("cfv_match"), F.col("price_match")))
        .withColumn(
            "discovery",
            F.when(F.col("_known_cat").isNull(), DISCOVERY_NEW_CATEGORY)
            .when(F.col("_seen").isNull(), DISCOVERY_NEW_ITEM)
            .otherwise(0.0),
        )
        .withColumn("trend", F.when(F.col("kind") == "trend", 1.0).otherwise(0.0))
        .drop("_known_cat", "_seen")
    )


def score(df: DataFrame, rc: RankConf, bought: DataFrame) -> DataFrame:
    """+ score and bought; excluded bought items removed."""
    total = F.lit(0.0) + weighted_total({c: F.col(c) for c in COMPONENTS}, rc.weights)
    out = df.join(
        bought.select("user_id", "item_id", F.lit(True).alias("bought")), ["user_id", "item_id"], "left"
    )
    out = out.withColumn("bought", F.coalesce("bought", F.lit(False))).withColumn("score", total)
    if rc.bought == "exclude":
        return out.filter(~F.col("bought"))
    if rc.bought == "demote":
        return out.withColumn(
            "score", F.when(F.col("bought"), F.col("score") * rc.bought_factor).otherwise(F.col("score"))
        )
    return out


def top_k(scored: DataFrame, rc: RankConf) -> DataFrame:
    """One row per (user, item) with its best query; per-category cap; top ``rc.top_k``."""
    best_query = Window.partitionBy("user_id", "item_id").orderBy(F.desc("score"), "query_id")
    per_cat = Window.partitionBy("user_id", "leaf_category").orderBy(F.desc("score"), "item_id")
    per_user = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    return (
        scored.withColumn("_q", F.row_number().over(best_query))
        .filter("_q = 1")
        .withColumn("_c", F.row_number().over(per_cat))
        .filter(F.col("_c") <= rc.max_per_category)
        .withColumn("position", F.row_number().over(per_user))
        .filter(F.col("position") <= rc.top_k)
        .drop("_q", "_c")
    )


def history(spark: SparkSession, conf: Config, run_date) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(known categories, touched items, bought items) per user, up to the run date."""
    known = (
        tables.read(spark, conf, "silver.user_windows")
        .filter((F.col("window") == "long_term") & (F.col("n_events") > 0))
        .select("user_id", "leaf_category")
        .distinct()
    )
    events = tables.read(spark, conf, "bronze.events").filter(
        (F.col("dt") <= F.lit(run_date)) & F.col("item_id").isNotNull()
    )
    touched = events.select("user_id", "item_id").distinct()
    bought = events.filter(F.col("event_type") == "purchase").select("user_id", "item_id").distinct()
    return known, touched, bought


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.recommendations``; returns users and rows."""
    rc = conf.rank
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    if not tables.exists(spark, conf, "gold.q2i_candidates"):
        raise RuntimeError("rank: gold.q2i_candidates is missing: run the q2i stage first")
    known, touched, bought = history(spark, conf, run_date)
    candidates = tables.read(spark, conf, "gold.q2i_candidates")
    titles = tables.read(spark, conf, "silver.item_profiles").select(
        "item_id", F.coalesce("short_title", "title").alias("title")
    )
    scored = score(components(candidates, known, touched, item_popularity(bought)), rc, bought)
    ranked = top_k(scored, rc).join(titles, "item_id", "left")
    out = ranked.select(
        "user_id", "position", "item_id", "title", "leaf_category", F.round("score", 5).alias("score"),
        *[F.round(c, 5).alias(c) for c in COMPONENTS], "bought", F.col("kind").alias("query_kind"), "query",
        "reason", F.lit(run_date).alias("as_of"),
    )  # fmt: skip
    tables.overwrite(out, conf, RECOMMENDATIONS)
    rows = tables.read(spark, conf, RECOMMENDATIONS)
    counts = {"users": rows.select("user_id").distinct().count(), "rows": rows.count()}
    new_cat = rows.filter(F.col("discovery") == 1.0).count()
    print(
        f"rank: {RECOMMENDATIONS} {counts['rows']:,} rows for {counts['users']:,} users; "
        f"in a category new to the user {new_cat / max(counts['rows'], 1):.0%}",
        flush=True,
    )
    return counts
