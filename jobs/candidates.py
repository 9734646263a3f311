"""Candidates: every channel's items per buyer -> ``gold.candidates``, then their features
-> ``gold.candidate_features`` (one row per buyer and item, kept per run date).

Discovery is one channel of the feed, not the whole of it. Each channel proposes items
with its own score, its rank within the buyer's list of that channel and its reason:

- ``repeat``: the buyer's own items by weighted, decayed frequency,
  ``sum over events of EVENT_WEIGHTS[type] x 0.5 ** (age_days / half_life)``
  ("You ordered this 6 times, last on 12 Aug").
- ``collaborative``: item-to-item neighbours of the buyer's items, ``sim(i, j) =
  |U_i & U_j| / (sqrt(|U_i| x |U_j|) + shrink)`` over users with a weighted event, each
  item keeping its ``neighbours`` closest; items the buyer already has are left to repeat
  ("Shops that stock X also stock Y", X the buyer's item that contributes most).
- ``query`` and ``trend``: the U2Q -> Q2Vec -> Q2I candidates of ``gold.q2i_candidates``
  (trend queries form the trend channel), an item once with its best query.
- ``bestseller``: the best-sellers (distinct buyers in the last ``popularity_days``) of
  the categories chosen for the buyer: the target categories of their exploration and
  trend queries and the ``bestseller_categories`` categories new to them that buyers of
  their categories most often also buy (category transition), and the
  ``overall_bestsellers`` best-sellers of the whole catalog (for a buyer without history
  all there is: the cold-start path).

Features (:func:`features`) are computed as of the run date from the events up to it
and are what the learned ranker (``jobs/ranker.py``) trains on and ``jobs/rank.py``
scores. ``gold.candidate_features`` keeps ``candidates.keep_days`` of run dates, since
the ranker trains on the candidates of an earlier day labelled with what followed.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.config import CandidatesConf, Config
from core.rundate import resolve_run_date
from jobs.q2i import user_preferences
from udfs.features import FEATURE_COLUMNS, normalised_title
from udfs.ranking import CHANNELS

log = logging.getLogger(__name__)

CANDIDATES = "gold.candidates"
FEATURES = "gold.candidate_features"
# Row groups of about 1 MB (2,000-3,000 candidate rows, some ten buyers; Spark's default is
# 128 MB, a whole file here): the files are sorted by user, so a reader that wants a few
# buyers (the nearline refresh) skips the other row groups by their user_id statistics:
# 5 buyers in 0.05-0.09 s instead of 0.46-0.52 s on Online Retail.
FEATURES_PROPERTIES = {"parquet.block.size": 1024 * 1024}
# Rows per file at most (about 80 row groups of 1 MB): the lookup reads the footer of each
# file that holds a wanted buyer and tests every row group in it, so with files of a fixed
# number of partitions the lookup would grow with the buyers (5 buyers 0.1 s at 10,000
# buyers, 2.2 s at 100,000); with capped files it does not (docs/benchmarks.md).
FEATURES_MAX_ROWS_PER_FILE = 250_000
# Weight of one event in the repeat and collaborative channels (and the ALS baseline's
# confidence); other event types (search, cancel) count nothing.
EVENT_WEIGHTS = {"purchase": 4.0, "cart": 3.0, "inquiry": 3.0, "favorite": 2.0, "click": 1.0, "view": 1.0}
# The non-feature columns of gold.candidate_features that a list passes through.
DESCRIPTIVE_COLUMNS = (
    "user_id",
    "item_id",
    "title",
    "norm_title",
    "leaf_category",
    "reasons",
    "query_kind",
    "query",
)
CANDIDATES_SCHEMA = (
    "user_id string, item_id string, channel string, channel_score double, channel_rank int, reason string"
)


# --- shared rules --------------------------------------------------------------------------


def event_weight() -> Column:
    """``EVENT_WEIGHTS`` of the row's ``event_type``; null for other types."""
    weight = F.lit(None).cast("double")
    for event_type, w in EVENT_WEIGHTS.items():
        weight = F.when(F.col("event_type") == event_type, F.lit(w)).otherwise(weight)
    return weight


def weighted_events(events: DataFrame) -> DataFrame:
    """Events that name an item and have a type in ``EVENT_WEIGHTS``, with the weight ``_w``."""
    return (
        events.filter(F.col("item_id").isNotNull())
        .withColumn("_w", event_weight())
        .filter(F.col("_w").isNotNull())
    )


def repeat_scores(events: DataFrame, as_of: dt.date, half_life_days: float | None) -> DataFrame:
    """``(user_id, item_id, score)``: weighted events, decayed by age (see the module docstring)."""
    if half_life_days is not None and half_life_days <= 0:
        raise ValueError(f"half_life_days must be positive or None, got {half_life_days}")
    if half_life_days is None:
        decay = F.lit(1.0)
    else:
        decay = F.pow(F.lit(0.5), F.datediff(F.lit(as_of), F.col("dt")) / F.lit(float(half_life_days)))
    return (
        weighted_events(events).groupBy("user_id", "item_id").agg(F.sum(F.col("_w") * decay).alias("score"))
    )


def recent_basket(last_seen: DataFrame, max_items: int) -> DataFrame:
    """``(user_id, item_id)``: each user's ``max_items`` items with the latest ``last_dt``
    (ties by item id), from one row per user and item."""
    recent = Window.partitionBy("user_id").orderBy(F.desc("last_dt"), "item_id")
    return (
        last_seen.withColumn("_r", F.row_number().over(recent))
        .filter(F.col("_r") <= max_items)
        .select("user_id", "item_id")
    )


def item_neighbours(events: DataFrame, neighbours: int, shrink: float, max_items_per_user: int) -> DataFrame:
    """``(item_id, other_id, sim)``: each item's ``neighbours`` most similar items.

    ``sim = |U_i & U_j| / (sqrt(|U_i| x |U_j|) + shrink)``; the intersections count each
    user's ``max_items_per_user`` most recent items (bounds the pairs), ``|U_i|`` all users.
    """
    if neighbours < 1 or max_items_per_user < 1:
        raise ValueError(
            f"neighbours and max_items_per_user must be >= 1, got {neighbours} and {max_items_per_user}"
        )
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    has = weighted_events(events).groupBy("user_id", "item_id").agg(F.max("dt").alias("last_dt"))
    basket = recent_basket(has, max_items_per_user)
    n_users = has.groupBy("item_id").agg(F.count("*").alias("n_i"))
    # Each unordered pair is counted once (a < b: half the rows of the self-join), then
    # both directions are kept: common(i, j) = common(j, i).
    once = (
        basket.alias("a")
        .join(basket.alias("b"), "user_id")
        .filter(F.col("a.item_id") < F.col("b.item_id"))
        .groupBy(F.col("a.item_id").alias("item_id"), F.col("b.item_id").alias("other_id"))
        .agg(F.count("*").alias("common"))
    )
    pairs = once.unionByName(
        once.select(F.col("other_id").alias("item_id"), F.col("item_id").alias("other_id"), "common")
    )
    closest = Window.partitionBy("item_id").orderBy(F.desc("sim"), "other_id")
    return (
        pairs.join(n_users, "item_id")
        .join(n_users.withColumnRenamed("item_id", "other_id").withColumnRenamed("n_i", "n_j"), "other_id")
        .withColumn("sim", F.col("common") / (F.sqrt(F.col("n_i") * F.col("n_j")) + F.lit(float(shrink))))
        .withColumn("_r", F.row_number().over(closest))
        .filter(F.col("_r") <= neighbours)
        .select("item_id", "other_id", "sim")
    )


# --- channels ---------------------------------------------------------------------------------


# Channel scores that are sums (decayed events, summed similarities) depend in their last
# bits on the order of addition, which follows the partitioning: rounded to this many
# places before ranking, sums that are equal in exact arithmetic tie, and the tie goes to
# the smaller item id however the rows were spread.
RANK_DECIMALS = 9


def _ranked(scored: DataFrame, channel: str, limit: int, reason: Column) -> DataFrame:
    per_user = Window.partitionBy("user_id").orderBy(F.desc("channel_score"), "item_id")
    return (
        scored.withColumn("channel_score", F.round("channel_score", RANK_DECIMALS))
        .withColumn("channel_rank", F.row_number().over(per_user))
        .filter(F.col("channel_rank") <= limit)
        .select(
            "user_id", "item_id", F.lit(channel).alias("channel"), F.col("channel_score").cast("double"),
            F.col("channel_rank").cast("int"), reason.alias("reason"),
        )
    )  # fmt: skip


def repeat_channel(events: DataFrame, users: DataFrame, as_of: dt.date, cc: CandidatesConf) -> DataFrame:
    """The buyer's own items (see the module docstring)."""
    mine = events.join(users, "user_id", "left_semi")
    scored = repeat_scores(mine, as_of, cc.repeat_half_life_days).withColumnRenamed("score", "channel_score")
    facts = (
        mine.filter((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
        .groupBy("user_id", "item_id")
        .agg(F.count("*").alias("_n"), F.max("dt").alias("_last"))
    )
    reason = F.when(
        F.col("_n").isNotNull(),
        F.concat(
            F.lit("You ordered this "),
            F.when(F.col("_n") == 1, F.lit("once")).otherwise(
                F.concat(F.col("_n").cast("string"), F.lit(" times"))
            ),
            F.lit(", last on "),
            F.date_format("_last", "d MMM"),
        ),
    ).otherwise(F.lit("You looked at this before"))
    return _ranked(scored.join(facts, ["user_id", "item_id"], "left"), "repeat", cc.repeat_per_user, reason)


def collaborative_channel(
    events: DataFrame, users: DataFrame, titles: DataFrame, cc: CandidatesConf
) -> DataFrame:
    """Neighbours of the buyer's items that the buyer does not have yet."""
    similar = item_neighbours(events, cc.neighbours, cc.shrink, cc.max_items_per_user)
    mine = weighted_events(events).join(users, "user_id", "left_semi").select("user_id", "item_id").distinct()
    contrib = mine.join(similar, "item_id").select(
        "user_id", F.col("other_id").alias("target"), F.col("item_id").alias("source"), "sim"
    )
    # Per (buyer, item): the summed similarity, and the source with the highest (ties: the
    # smallest id), in one aggregation (partial per task, no sort of every contribution).
    scored = (
        contrib.groupBy("user_id", "target")
        .agg(
            F.sum("sim").alias("channel_score"),
            F.min(F.struct((-F.col("sim")).alias("_neg"), F.col("source"))).alias("_best"),
        )
        .select("user_id", F.col("target").alias("item_id"), "channel_score", F.col("_best.source").alias("source"))
        .join(mine, ["user_id", "item_id"], "left_anti")
        .join(titles.select(F.col("item_id").alias("source"), F.col("title").alias("_source_title")), "source", "left")
    )  # fmt: skip
    reason = F.concat(
        F.lit("Shops that stock "), F.coalesce("_source_title", F.col("source")), F.lit(" also stock this")
    )
    return _ranked(scored, "collaborative", cc.collaborative_per_user, reason)


def query_channels(q2i: DataFrame, users: DataFrame, limit: int) -> DataFrame:
    """The Q2I candidates: trend queries -> ``trend``, the others -> ``query``; an item once
    per channel with its best-scoring query, the ``limit`` best per buyer and channel."""
    cands = q2i.join(users, "user_id", "left_semi").withColumn(
        "channel", F.when(F.col("kind") == "trend", "trend").otherwise("query")
    )
    best = Window.partitionBy("user_id", "channel", "item_id").orderBy(F.desc("score"), "query_id")
    per_user = Window.partitionBy("user_id", "channel").orderBy(F.desc("score"), "item_id")
    return (
        cands.withColumn("_b", F.row_number().over(best))
        .filter("_b = 1")
        .withColumn("channel_rank", F.row_number().over(per_user))
        .filter(F.col("channel_rank") <= limit)
        .select(
            "user_id", "item_id", "channel", F.col("score").cast("double").alias("channel_score"),
            F.col("channel_rank").cast("int"), "reason",
        )
    )  # fmt: skip


def item_buyers(events: DataFrame, since: dt.date | None = None) -> DataFrame:
    """``(item_id, buyers)``: distinct buyers of each item (purchases on or after ``since``)."""
    bought = events.filter((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
    if since is not None:
        bought = bought.filter(F.col("dt") >= F.lit(since))
    return bought.groupBy("item_id").agg(F.countDistinct("user_id").alias("buyers"))


def category_transitions(user_categories: DataFrame) -> DataFrame:
    """``(from_category, leaf_category, p)``: of the buyers active in ``from_category``, the
    share also active in ``leaf_category`` (``from != to``)."""
    a = user_categories.select("user_id", F.col("leaf_category").alias("from_category"))
    b = user_categories.select("user_id", "leaf_category")
    n_from = a.groupBy("from_category").agg(F.count("*").alias("_n"))
    return (
        a.join(b, "user_id")
        .filter(F.col("from_category") != F.col("leaf_category"))
        .groupBy("from_category", "leaf_category")
        .agg(F.count("*").alias("_both"))
        .join(n_from, "from_category")
        .select("from_category", "leaf_category", (F.col("_both") / F.col("_n")).alias("p"))
    )


def transition_scores(user_categories: DataFrame, transitions: DataFrame) -> DataFrame:
    """``(user_id, leaf_category, category_transition)``: the mean over the buyer's
    categories of P(category | that category), for categories the buyer is not in."""
    n_cats = user_categories.groupBy("user_id").agg(F.count("*").alias("_k"))
    return (
        user_categories.select("user_id", F.col("leaf_category").alias("from_category"))
        .join(transitions, "from_category")
        .groupBy("user_id", "leaf_category")
        .agg(F.sum("p").alias("_s"))
        .join(n_cats, "user_id")
        .select("user_id", "leaf_category", (F.col("_s") / F.col("_k")).alias("category_transition"))
        .join(user_categories, ["user_id", "leaf_category"], "left_anti")
    )


def bestseller_channel(
    users: DataFrame,
    chosen: DataFrame,
    transitions: DataFrame,
    bestsellers: DataFrame,
    cc: CandidatesConf,
) -> DataFrame:
    """Best-sellers of the categories chosen for each buyer (see the module docstring).

    ``chosen``: (user_id, leaf_category) from the buyer's exploration and trend queries;
    ``transitions``: :func:`transition_scores`; ``bestsellers``: (item_id, leaf_category,
    buyers, category_rank).
    """
    by_transition = Window.partitionBy("user_id").orderBy(F.desc("category_transition"), "leaf_category")
    likely = (
        transitions.withColumn("_r", F.row_number().over(by_transition))
        .filter(F.col("_r") <= cc.bestseller_categories)
        .select("user_id", "leaf_category", F.col("category_transition").alias("_p"))
    )
    cats = (
        chosen.select("user_id", "leaf_category", F.lit(1.0).alias("_p"))
        .unionByName(likely)
        .join(users, "user_id", "left_semi")
        .groupBy("user_id", "leaf_category")
        .agg(F.max("_p").alias("_p"))
    )
    top = bestsellers.filter(F.col("category_rank") <= cc.bestseller_per_category)
    scored = cats.join(top, "leaf_category").select(
        "user_id", "item_id", "leaf_category", (F.col("_p") / F.col("category_rank")).alias("channel_score")
    )
    # The overall best-sellers: for every buyer (below their chosen categories' own), and
    # all a buyer without history gets.
    # A top-N (per partition, then merged), each ranked by the number of the N ahead of it
    # (more buyers, or as many and a smaller id): a window over all items would sort the
    # whole catalog in one task, and even over the N rows one without a partition is a
    # single-partition window that Spark warns about at every re-plan.
    top = bestsellers.orderBy(F.desc("buyers"), "item_id").limit(cc.overall_bestsellers)
    a, b = top.alias("a"), top.alias("b")
    ahead = (F.col("b.buyers") > F.col("a.buyers")) | (
        (F.col("b.buyers") == F.col("a.buyers")) & (F.col("b.item_id") < F.col("a.item_id"))
    )
    top_overall = (
        a.join(b, ahead, "left")
        .groupBy("a.item_id", "a.leaf_category")
        .agg((F.count("b.item_id") + 1).alias("_r"))
        .select("item_id", "leaf_category", (1.0 / (F.col("_r") + cc.bestseller_per_category)).alias("channel_score"))
    )  # fmt: skip
    everyone = users.crossJoin(F.broadcast(top_overall))
    reason = F.concat(F.lit("Best-seller in "), F.col("leaf_category"))
    both = (
        scored.unionByName(everyone)
        .groupBy("user_id", "item_id", "leaf_category")
        .agg(F.max("channel_score").alias("channel_score"))
    )
    return _ranked(both, "bestseller", cc.bestseller_per_user, reason)


def category_bestsellers(events: DataFrame, categories: DataFrame, since: dt.date) -> DataFrame:
    """``(item_id, leaf_category, buyers, category_rank)``: items by recent distinct buyers."""
    in_cat = Window.partitionBy("leaf_category").orderBy(F.desc("buyers"), "item_id")
    return (
        item_buyers(events, since)
        .join(categories, "item_id")
        .withColumn("category_rank", F.row_number().over(in_cat))
        .select("item_id", "leaf_category", "buyers", "category_rank")
    )


# --- features ---------------------------------------------------------------------------------


def item_features(
    events: DataFrame, categories: DataFrame, as_of: dt.date, cc: CandidatesConf, horizon_days: int
) -> DataFrame:
    """``(item_id, *ITEM_FEATURES)`` for every item of ``categories``, as of ``as_of``: log
    buyers overall and in the last ``recent_days``, their ratio per day (> 1: rising), the
    best-seller rank in the category over ``popularity_days`` (null: not bought there) and
    the item's share of its category's buyers."""
    recent_since = as_of - dt.timedelta(days=cc.recent_days - 1)
    ranks = category_bestsellers(events, categories, as_of - dt.timedelta(days=cc.popularity_days - 1))
    counts = (
        categories.select("item_id", "leaf_category")
        .join(item_buyers(events).withColumnRenamed("buyers", "_all"), "item_id", "left")
        .join(item_buyers(events, recent_since).withColumnRenamed("buyers", "_recent"), "item_id", "left")
        .join(ranks.select("item_id", "category_rank"), "item_id", "left")
        .fillna(0, ["_all", "_recent"])
    )
    per_category = Window.partitionBy("leaf_category")
    return counts.select(
        "item_id",
        F.log1p("_all").cast("double").alias("log_buyers"),
        F.log1p("_recent").cast("double").alias("log_recent_buyers"),
        ((F.col("_recent") / cc.recent_days + 0.1) / (F.col("_all") / horizon_days + 0.1)).alias(
            "buyer_trend"
        ),
        F.col("category_rank").cast("double").alias("category_rank"),
        (F.col("_all") / F.greatest(F.sum("_all").over(per_category), F.lit(1)))
        .cast("double")
        .alias("category_buyer_share"),
    )


def _pair_columns(cands: DataFrame, q2i: DataFrame | None, events: DataFrame) -> DataFrame:
    """One row per (user, item) candidate with everything keyed by the pair, in one
    aggregation over the candidates, the Q2I hits and the events (not a join each):

    - each channel's score and rank, the number of channels and each channel's reason
      (``reasons``: channel -> reason; ``udfs.ranking.shown_channel`` picks the one shown);
    - the best query relevance, whether a personal / an exploration query found it, and the
      kind and text of its best-scoring query;
    - the buyer's own purchases and events of the item and their last dates.
    """
    cols = {
        "channel": "string", "channel_score": "double", "channel_rank": "int", "reason": "string",
        "relevance": "double", "kind": "string", "score": "double", "query": "string",
        "event_type": "string", "dt": "date",
    }  # fmt: skip

    def part(df: DataFrame, present: tuple[str, ...]) -> DataFrame:
        return df.select(
            "user_id", "item_id",
            *[(F.col(c) if c in present else F.lit(None)).cast(t).alias(c) for c, t in cols.items()],
        )  # fmt: skip

    rows = part(cands, ("channel", "channel_score", "channel_rank", "reason"))
    if q2i is not None:
        rows = rows.unionByName(part(q2i, ("relevance", "kind", "score", "query")))
    rows = rows.unionByName(part(events.filter(F.col("item_id").isNotNull()), ("event_type", "dt")))

    aggs = []
    for c in CHANNELS:
        aggs.append(F.max(F.when(F.col("channel") == c, F.col("channel_score"))).alias(f"{c}_score"))
        aggs.append(F.min(F.when(F.col("channel") == c, F.col("channel_rank"))).alias(f"{c}_rank"))
    is_event = F.col("event_type").isNotNull()
    n_events = F.count("event_type")
    return (
        rows.groupBy("user_id", "item_id")
        .agg(
            *aggs,
            F.count("channel").cast("double").alias("n_channels"),
            # Sorted by channel, and ties of score broken by the query text: the same rows
            # give the same table whatever order the shuffle delivers them in.
            F.map_from_entries(
                F.array_sort(F.collect_list(F.when(F.col("channel").isNotNull(), F.struct("channel", "reason"))))
            ).alias("reasons"),
            F.max("relevance").alias("relevance"),
            F.max((F.col("kind") == "personal").cast("double")).alias("is_personal_query"),
            F.max((F.col("kind") == "exploration").cast("double")).alias("is_exploration_query"),
            F.max_by(F.col("kind"), F.struct("score", "query")).alias("query_kind"),
            F.max_by(F.col("query"), F.struct("score", "query")).alias("query"),
            F.sum(F.when(is_event, (F.col("event_type") == "purchase").cast("double"))).alias("own_purchases"),
            F.when(n_events > 0, n_events.cast("double")).alias("own_events"),  # null: never touched
            F.max(F.when(F.col("event_type") == "purchase", F.col("dt"))).alias("_last_purchase"),
            F.max("dt").alias("_last_event"),
        )
        .filter(F.col("n_channels") > 0)
    )  # fmt: skip


def _user_category_columns(user_cats: DataFrame, prefs: DataFrame, bands: DataFrame) -> DataFrame:
    """One row per (user, category) with what is keyed by them: the category's share of the
    buyer's item events, the transition score of a category new to them, their CFV factor
    weights there (``_prefs``: factor -> weight) and the price bands they bought there."""
    shares = user_cats.withColumn(
        "category_share", F.col("_n") / F.sum("_n").over(Window.partitionBy("user_id"))
    ).drop("_n")
    uc = user_cats.select("user_id", "leaf_category")
    transitions = transition_scores(uc, category_transitions(uc))
    pref_maps = (
        prefs.filter(F.col("factor").isNotNull())
        .groupBy("user_id", "leaf_category")
        .agg(F.map_from_entries(F.collect_list(F.struct("factor", "weight"))).alias("_prefs"))
    )
    band_sets = bands.groupBy("user_id", "leaf_category").agg(F.collect_set("price_band").alias("_bands"))
    keys = ["user_id", "leaf_category"]
    return shares.join(transitions, keys, "full").join(pref_maps, keys, "full").join(band_sets, keys, "full")


def features(
    spark: SparkSession, conf: Config, cands: DataFrame, events: DataFrame, as_of: dt.date
) -> DataFrame:
    """Every feature of :data:`FEATURE_COLUMNS` per (user, item) candidate, as of ``as_of``:
    the pair's columns in one aggregation (:func:`_pair_columns`), then one join each with
    the (user, category) and the item tables."""

    cc = conf.candidates
    days = conf.aggregate.horizon_days
    profiles = tables.read(spark, conf, "silver.item_profiles")
    cats = tables.read(spark, conf, "silver.item_categories").select("item_id", "leaf_category")
    items = (
        cats.join(
            profiles.select(
                "item_id", "price_band", F.coalesce("short_title", "title").alias("title"),
                F.transform("decision_factors.value", lambda f: F.lower(F.trim(f))).alias("_factors"),
            ),
            "item_id", "left",
        )
        .join(item_features(events, cats, as_of, cc, days), "item_id", "left")
    )  # fmt: skip
    q2i = (
        tables.read(spark, conf, "gold.q2i_candidates")
        if tables.exists(spark, conf, "gold.q2i_candidates")
        else None
    )
    item_ev = events.filter(F.col("item_id").isNotNull())
    user_cats = (
        item_ev.join(cats, "item_id").groupBy("user_id", "leaf_category").agg(F.count("*").alias("_n"))
    )
    prefs, bands = user_preferences(spark, conf)  # CFV factor match and price band, as in q2i

    out = (
        _pair_columns(cands, q2i, events)
        .join(items, "item_id", "left")
        .fillna("unknown", ["leaf_category"])
        .join(_user_category_columns(user_cats, prefs, bands), ["user_id", "leaf_category"], "left")
        .select(
            "*",
            F.array_max(F.transform("_factors", lambda f: F.try_element_at("_prefs", f))).alias("cfv_match"),
            F.array_contains("_bands", F.col("price_band")).cast("double").alias("price_match"),
            F.coalesce(F.datediff(F.lit(as_of), "_last_purchase"), F.lit(days))
            .cast("double")
            .alias("days_since_purchase"),
            F.coalesce(F.datediff(F.lit(as_of), "_last_event"), F.lit(days))
            .cast("double")
            .alias("days_since_event"),
            F.col("own_events").isNull().cast("double").alias("is_new_item"),
            F.col("category_share").isNull().cast("double").alias("is_new_category"),
        )  # fmt: skip
        .fillna(
            0.0,
            [
                "own_purchases",
                "own_events",
                "cfv_match",
                "price_match",
                "category_share",
                "category_transition",
                "is_personal_query",
                "is_exploration_query",
            ],
        )  # fmt: skip
        .withColumn("norm_title", normalised_title(F.col("title")))
        .withColumn("as_of", F.lit(as_of))
    )
    return out.select(
        *DESCRIPTIVE_COLUMNS, *[F.col(c).cast("double").alias(c) for c in FEATURE_COLUMNS], "as_of"
    )


# --- the stage ---------------------------------------------------------------------------------


def target_users(spark: SparkSession, conf: Config, events: DataFrame, as_of: dt.date) -> DataFrame:
    """Buyers to list: those with U2Q queries and those with an event in the horizon."""
    since = as_of - dt.timedelta(days=conf.aggregate.horizon_days - 1)
    active = events.filter(F.col("dt") >= F.lit(since)).select("user_id")
    if tables.exists(spark, conf, "gold.user_queries"):
        active = active.unionByName(tables.read(spark, conf, "gold.user_queries").select("user_id"))
    return active.distinct()


def generate(spark: SparkSession, conf: Config, as_of: dt.date, events: DataFrame | None = None) -> DataFrame:
    """The candidates of every channel as of ``as_of`` from this warehouse (``CANDIDATES_SCHEMA``
    + as_of); ``events``: bronze.events up to ``as_of`` when the caller holds them."""
    cc = conf.candidates
    if events is None:
        events = tables.read(spark, conf, "bronze.events").filter(F.col("dt") <= F.lit(as_of))
    users = target_users(spark, conf, events, as_of).localCheckpoint()
    cats = tables.read(spark, conf, "silver.item_categories").select("item_id", "leaf_category")
    titles = tables.read(spark, conf, "silver.item_profiles").select(
        "item_id", F.coalesce("short_title", "title").alias("title")
    )
    user_cats = weighted_events(events).join(cats, "item_id").select("user_id", "leaf_category").distinct()
    transitions = transition_scores(user_cats, category_transitions(user_cats))
    if tables.exists(spark, conf, "gold.user_queries"):
        chosen = (
            tables.read(spark, conf, "gold.user_queries")
            .filter(F.col("kind").isin("exploration", "trend") & F.col("leaf_category").isNotNull())
            .select("user_id", "leaf_category")
            .distinct()
        )
    else:
        chosen = spark.createDataFrame([], "user_id string, leaf_category string")
    bestsellers = category_bestsellers(events, cats, as_of - dt.timedelta(days=cc.popularity_days - 1))
    parts = [
        repeat_channel(events, users, as_of, cc),
        collaborative_channel(events, users, titles, cc),
        bestseller_channel(users, chosen, transitions, bestsellers, cc),
    ]
    if tables.exists(spark, conf, "gold.q2i_candidates"):
        parts.append(
            query_channels(tables.read(spark, conf, "gold.q2i_candidates"), users, cc.query_per_user)
        )
    cands = parts[0]
    for p in parts[1:]:
        cands = cands.unionByName(p)
    return cands.withColumn("as_of", F.lit(as_of))


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Write ``gold.candidates`` and this run date's ``gold.candidate_features``."""

    as_of = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    for needed in ("silver.item_categories", "silver.item_profiles", "gold.cfv"):
        if not tables.exists(spark, conf, needed):
            raise RuntimeError(
                f"candidates: {needed} is missing: run the aggregate, items and cfv stages first"
            )
    # The events up to the run date, read once: every channel and feature scans them. Kept
    # on local disk, not in the heap: at 30,000 buyers (5.7 M events) the cached copy in a 2 GB
    # driver left too little room for the features' own cache (OutOfMemoryError).
    events = (
        tables.read(spark, conf, "bronze.events")
        .filter(F.col("dt") <= F.lit(as_of))
        .select("user_id", "item_id", "event_type", "dt")
        .persist(StorageLevel.DISK_ONLY)
    )
    cands = generate(spark, conf, as_of, events)
    tables.overwrite(cands, conf, CANDIDATES)
    cands = tables.read(spark, conf, CANDIDATES)
    feats = features(spark, conf, cands, events, as_of)
    write_features(spark, conf, feats, as_of)
    events.unpersist()
    per_channel = {r["channel"]: int(r["count"]) for r in cands.groupBy("channel").count().collect()}
    stored = tables.read(spark, conf, FEATURES).filter(F.col("as_of") == F.lit(as_of))
    counts = {"candidates": stored.count(), "users": stored.select("user_id").distinct().count()}
    log.info(
        "candidates: %s %s (user, item) candidates for %s users as of %s; by channel %s",
        FEATURES, f"{counts['candidates']:,}", f"{counts['users']:,}", as_of,
        ", ".join(f"{c} {per_channel.get(c, 0):,}" for c in CHANNELS),
    )  # fmt: skip
    return counts


def write_features(
    spark: SparkSession, conf: Config, feats: DataFrame, as_of: dt.date, prune: bool = True
) -> None:
    """Replace the ``as_of`` partition of ``gold.candidate_features``; ``prune``: drop the run
    dates more than ``candidates.keep_days`` before ``as_of``."""
    keep_from = as_of - dt.timedelta(days=conf.candidates.keep_days)
    # Files by user range, each of at most FEATURES_MAX_ROWS_PER_FILE rows: a lookup of a
    # few buyers (the nearline's) skips the other files and row groups. The range
    # partitioner samples its input first: kept, the features are computed once, not
    # twice. Kept as rows on local disk (a local checkpoint): a cache builds column batches
    # in the heap, and at 30,000 buyers (21 M wide rows) that ran a 2 GB driver out of it.
    kept = feats.localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
    tables.replace_partition_by_key(
        spark, conf, FEATURES, kept, ("as_of", as_of), "user_id", FEATURES_PROPERTIES, FEATURES_MAX_ROWS_PER_FILE
    )  # fmt: skip
    if prune:
        tables.delete_where(spark, conf, FEATURES, f"as_of < '{keep_from}'")
