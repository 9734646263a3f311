"""Baseline recommenders on the train events (before the cut), in the common recs schema.

Each function returns ``(method, user_id, item_id, position, has_reason)``: at most ``k``
rows per user, positions ``1..n``, ``has_reason`` false, ties broken by ``item_id``.
``train`` has ``(user_id, item_id, event_type, quantity, amount, dt)``; events without an
item (searches) are ignored. A "buyer" of an item is a user with a ``purchase`` event of it,
and ``n_i`` is the number of distinct train buyers of item ``i`` (its popularity).

The baselines do not exclude items the user already bought, since wholesale buyers re-buy
the same items; the co-occurrence baseline is the exception: it recommends items other
than the user's own purchases.

- ``popularity``: the ``k`` items with most buyers, the same list for every user;
- ``cooccurrence``: items "bought together" with the user's purchases;
- ``als``: Spark MLlib implicit-feedback ALS on weighted event counts;
- ``filter_bubble``: the most popular items of the user's own categories.
"""

from __future__ import annotations

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

RECS_COLUMNS = ("method", "user_id", "item_id", "position", "has_reason")
# Confidence of one event for ALS; other event types (search, cancel) add nothing.
EVENT_WEIGHTS = {"purchase": 4.0, "cart": 3.0, "inquiry": 3.0, "favorite": 2.0, "click": 1.0, "view": 1.0}


def item_events(train: DataFrame) -> DataFrame:
    """Train events that name an item."""
    return train.filter(F.col("item_id").isNotNull())


def purchases(train: DataFrame) -> DataFrame:
    """Purchase events that name an item."""
    return item_events(train).filter(F.col("event_type") == "purchase")


def item_buyers(train: DataFrame) -> DataFrame:
    """``(item_id, n_i)``: distinct train buyers per bought item."""
    return purchases(train).groupBy("item_id").agg(F.countDistinct("user_id").alias("n_i"))


def popularity_ranks(train: DataFrame) -> DataFrame:
    """``(item_id, n_i, pop_rank)``: bought items by buyers, most first, ties by item id."""
    return item_buyers(train).withColumn(
        "pop_rank", F.row_number().over(Window.orderBy(F.desc("n_i"), "item_id"))
    )


def as_recs(scored: DataFrame, method: str, k: int, *order) -> DataFrame:
    """Top ``k`` rows per user by ``order`` then item id, in the common recs schema."""
    per_user = Window.partitionBy("user_id").orderBy(*order, "item_id")
    return (
        scored.withColumn("position", F.row_number().over(per_user))
        .filter(F.col("position") <= k)
        .select(
            F.lit(method).alias("method"),
            "user_id",
            "item_id",
            F.col("position").cast("int"),
            F.lit(False).alias("has_reason"),
        )
    )


def popularity(train: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """The ``k`` items with the most distinct train buyers (ties by item id), for every user."""
    top = popularity_ranks(train).filter(F.col("pop_rank") <= k)
    scored = users.select("user_id").distinct().crossJoin(F.broadcast(top))
    return as_recs(scored, "popularity", k, "pop_rank")


def cooccurrence(train: DataFrame, users: DataFrame, k: int, max_items_per_user: int = 50) -> DataFrame:
    """Items bought together with the user's purchases, back-filled by popularity.

    A user's basket is their ``max_items_per_user`` most recently purchased items (latest
    purchase date, ties by item id). ``cooc(i, j)`` = number of distinct train buyers whose
    baskets hold both ``i`` and ``j`` (``i != j``); the basket bound applies here too, to bound
    the pair count. ``sim(i, j) = cooc(i, j) / sqrt(n_i x n_j)`` with ``n_i`` the buyers over all
    purchases. ``score(u, j) = sum over i in u's basket of sim(i, j)``. Items the user ever
    bought are excluded. Lists shorter than ``k`` are filled up with the most popular items
    not already in the list (nor bought by the user), in popularity order.
    """
    bought = purchases(train).groupBy("user_id", "item_id").agg(F.max("dt").alias("last_dt"))
    recent = Window.partitionBy("user_id").orderBy(F.desc("last_dt"), "item_id")
    basket = (
        bought.withColumn("_r", F.row_number().over(recent))
        .filter(F.col("_r") <= max_items_per_user)
        .select("user_id", "item_id")
    )
    buyers = item_buyers(train)
    pairs = (
        basket.alias("a")
        .join(basket.alias("b"), "user_id")
        .filter(F.col("a.item_id") != F.col("b.item_id"))
        .groupBy(F.col("a.item_id").alias("item_id"), F.col("b.item_id").alias("other_id"))
        .agg(F.count("*").alias("cooc"))
    )
    similar = (
        pairs.join(buyers, "item_id")
        .join(buyers.withColumnRenamed("item_id", "other_id").withColumnRenamed("n_i", "n_j"), "other_id")
        .select("item_id", "other_id", (F.col("cooc") / F.sqrt(F.col("n_i") * F.col("n_j"))).alias("sim"))
    )
    targets = users.select("user_id").distinct()
    scored = (
        basket.join(targets, "user_id", "left_semi")
        .join(similar, "item_id")
        .groupBy("user_id", F.col("other_id").alias("item_id"))
        .agg(F.sum("sim").alias("score"))
        .select("user_id", "item_id", F.lit(0).alias("tier"), "score")
    )
    # Back-fill: a user can skip at most k listed + all bought items among the most popular.
    n_bought = bought.groupBy("user_id").agg(F.count("*").alias("n_bought"))
    fill = (
        targets.join(n_bought, "user_id", "left")
        .join(
            F.broadcast(popularity_ranks(train)),
            F.col("pop_rank") <= F.coalesce(F.col("n_bought"), F.lit(0)) + 2 * k,
        )
        .select("user_id", "item_id", F.lit(1).alias("tier"), (-F.col("pop_rank")).alias("score"))
    )
    first_tier = Window.partitionBy("user_id", "item_id").orderBy("tier")
    candidates = (
        scored.unionByName(fill.withColumn("score", F.col("score").cast("double")))
        .join(bought, ["user_id", "item_id"], "left_anti")
        .withColumn("_t", F.row_number().over(first_tier))
        .filter("_t = 1")
    )
    return as_recs(candidates, "cooccurrence", k, "tier", F.desc("score"))


def confidences(train: DataFrame) -> DataFrame:
    """``(user_id, item_id, confidence)``: sum of ``EVENT_WEIGHTS`` over the pair's events."""
    weight = F.lit(None).cast("double")
    for event_type, w in EVENT_WEIGHTS.items():
        weight = F.when(F.col("event_type") == event_type, F.lit(w)).otherwise(weight)
    return (
        item_events(train)
        .withColumn("_w", weight)
        .filter(F.col("_w").isNotNull())
        .groupBy("user_id", "item_id")
        .agg(F.sum("_w").alias("confidence"))
    )


def _index(ids: DataFrame, column: str, index_column: str) -> DataFrame:
    """Dense integer ids ``0..n-1`` in id order."""
    return (
        ids.select(column)
        .distinct()
        .withColumn(index_column, (F.row_number().over(Window.orderBy(column)) - 1).cast("int"))
    )


def als(
    train: DataFrame,
    users: DataFrame,
    k: int,
    rank: int = 32,
    max_iter: int = 10,
    reg_param: float = 0.1,
    alpha: float = 10.0,
    seed: int = 7,
) -> DataFrame:
    """Implicit-feedback ALS (``implicitPrefs``) on per-(user, item) ``confidences``.

    The top ``k`` items by predicted preference (ties by item id), seen items included.
    Users without a weighted train event are unknown to the model and get no list.
    """
    conf = confidences(train)
    user_ids = _index(conf, "user_id", "user_idx")
    item_ids = _index(conf, "item_id", "item_idx")
    ratings = conf.join(user_ids, "user_id").join(item_ids, "item_id")
    model = ALS(
        rank=rank,
        maxIter=max_iter,
        regParam=reg_param,
        alpha=alpha,
        implicitPrefs=True,
        seed=seed,
        userCol="user_idx",
        itemCol="item_idx",
        ratingCol="confidence",
        coldStartStrategy="drop",
    ).fit(ratings.select("user_idx", "item_idx", "confidence"))
    known = user_ids.join(users.select("user_id").distinct(), "user_id")
    top = model.recommendForUserSubset(known.select("user_idx"), k)
    scored = (
        top.select("user_idx", F.explode("recommendations").alias("r"))
        .select("user_idx", "r.item_idx", F.col("r.rating").alias("score"))
        .join(known, "user_idx")
        .join(item_ids, "item_idx")
    )
    return as_recs(scored, "als", k, F.desc("score"))


def filter_bubble(train: DataFrame, item_categories: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """The most popular items of the user's own categories.

    ``share_u(c)``: the user's purchase quantity in category ``c`` / their total purchase
    quantity (a missing quantity counts as 1); for a user without purchases, their share of
    events (with an item) in ``c``. ``score(u, i) = share_u(category(i)) x n_i / max n over
    items of that category``. Candidates are bought items (``n_i > 0``) of the user's
    categories; top ``k`` by score, ties by item id.
    """
    cats = item_categories.select("item_id", "leaf_category")
    events = item_events(train).join(users.select("user_id").distinct(), "user_id", "left_semi")
    is_purchase = F.col("event_type") == "purchase"
    per_category = (
        events.join(cats, "item_id")
        .groupBy("user_id", "leaf_category")
        .agg(
            F.sum(F.when(is_purchase, F.coalesce(F.col("quantity"), F.lit(1)))).alias("qty"),
            F.count("*").alias("n_events"),
        )
        .fillna(0, ["qty"])
    )
    user_total = Window.partitionBy("user_id")
    shares = (
        per_category.withColumn("_qty", F.sum("qty").over(user_total))
        .withColumn("_events", F.sum("n_events").over(user_total))
        .withColumn(
            "share",
            F.when(F.col("_qty") > 0, F.col("qty") / F.col("_qty")).otherwise(
                F.col("n_events") / F.col("_events")
            ),
        )
        .filter(F.col("share") > 0)
        .select("user_id", "leaf_category", "share")
    )
    # Within a category the score follows n_i, so the category's top k are the only candidates.
    in_category = Window.partitionBy("leaf_category").orderBy(F.desc("n_i"), "item_id")
    top_in_category = (
        item_buyers(train)
        .join(cats, "item_id")
        .withColumn("relative", F.col("n_i") / F.max("n_i").over(Window.partitionBy("leaf_category")))
        .withColumn("_r", F.row_number().over(in_category))
        .filter(F.col("_r") <= k)
        .select("leaf_category", "item_id", "relative")
    )
    scored = shares.join(top_in_category, "leaf_category").withColumn(
        "score", F.col("share") * F.col("relative")
    )
    return as_recs(scored, "filter_bubble", k, F.desc("score"))
