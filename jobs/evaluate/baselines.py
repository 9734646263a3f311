"""Baseline recommenders on the train events (before the cut), in the common recs schema.

Each function returns ``(method, user_id, item_id, position, has_reason)``: at most ``k``
rows per user, positions ``1..n``, ``has_reason`` false, ties broken by ``item_id``.
``train`` has ``(user_id, item_id, event_type, quantity, amount, dt)``; events without an
item (searches) are ignored. A "buyer" of an item is a user with a ``purchase`` event of it,
and ``n_i`` is the number of distinct train buyers of item ``i`` (its popularity).

The baselines do not exclude items the user already bought, since wholesale buyers re-buy
the same items; the co-occurrence baseline is the exception: it recommends items other
than the user's own purchases (``item_knn`` can do the same with ``exclude_seen``).

- ``popularity``: the ``k`` items with most buyers, the same list for every user;
- ``cooccurrence``: items "bought together" with the user's purchases;
- ``als``: Spark MLlib implicit-feedback ALS on weighted event counts;
- ``filter_bubble``: the most popular items of the user's own categories;
- ``repeat``: the user's own items by weighted frequency and recency,
  ``score(u, i) = sum over u's events of i of EVENT_WEIGHTS[event_type] x 0.5 ** (age / h)``
  with ``age`` the days from the event to ``as_of`` (the last train day, age 0) and ``h``
  the half-life in days (no decay when ``h`` is None);
- ``item_knn``: item-based collaborative filtering on binary interactions (a user "has" an
  item with any weighted event), ``sim(i, j) = |U_i & U_j| / (sqrt(|U_i| x |U_j|) + shrink)``
  with ``U_i`` the users having ``i``, each item keeping its ``neighbours`` most similar
  items, and ``score(u, j) = sum over i in u's items of sim(i, j)``.

Events of a type missing from ``EVENT_WEIGHTS`` (search, cancel) count nothing in
``als``, ``repeat`` and ``item_knn``. ``recommend`` runs any baseline by name with keyword
overrides of its settings, and ``TUNABLE`` holds the small default grids that ``grid``
expands for tuning.
"""

from __future__ import annotations

import datetime
import inspect
import itertools
import logging
from typing import Any

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# The repeat and item-kNN rules are the pipeline's own repeat and collaborative channels.
from jobs.candidates import item_neighbours, recent_basket, repeat_scores, weighted_events

log = logging.getLogger(__name__)

RECS_COLUMNS = ("method", "user_id", "item_id", "position", "has_reason")


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
    basket = recent_basket(bought, max_items_per_user)
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


def _weighted_events(train: DataFrame) -> DataFrame:
    """Item events of a type in ``EVENT_WEIGHTS``, with their weight as ``_w``."""
    return weighted_events(train)


def confidences(train: DataFrame) -> DataFrame:
    """``(user_id, item_id, confidence)``: sum of ``EVENT_WEIGHTS`` over the pair's events."""
    return _weighted_events(train).groupBy("user_id", "item_id").agg(F.sum("_w").alias("confidence"))


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


def repeat(
    train: DataFrame,
    users: DataFrame,
    k: int,
    as_of: datetime.date,
    half_life_days: float | None = 60.0,
) -> DataFrame:
    """The user's own items by weighted frequency and recency.

    ``score(u, i)`` = sum over the user's weighted events of ``i`` of
    ``EVENT_WEIGHTS[event_type] x 0.5 ** (age_days / half_life_days)``, where
    ``age_days = (as_of - dt).days`` and ``as_of`` is the last train day (its events have
    age 0). ``half_life_days=None`` turns the decay off (weighted frequency). Top ``k`` by
    score, ties by item id; users without a weighted item event get no list.
    """
    mine = train.join(users.select("user_id").distinct(), "user_id", "left_semi")
    scored = repeat_scores(mine, as_of, half_life_days)
    return as_recs(scored, "repeat", k, F.desc("score"))


def item_knn(
    train: DataFrame,
    users: DataFrame,
    k: int,
    neighbours: int = 50,
    shrink: float = 0.0,
    exclude_seen: bool = False,
    max_items_per_user: int = 200,
) -> DataFrame:
    """Item-based collaborative filtering on binary user-item interactions.

    A user has an item when they have a weighted event of it (the ``confidences`` pairs);
    ``U_i`` is the set of users having ``i``. ``sim(i, j) = |U_i & U_j| / (sqrt(|U_i| x |U_j|)
    + shrink)`` for ``i != j``; the intersection counts come from a self-join on user of each
    user's ``max_items_per_user`` most recent items (latest event date, ties by item id), to
    bound the pair count, while ``|U_i|`` counts all users. Each item keeps its
    ``neighbours`` most similar items (ties by item id). ``score(u, j)`` = sum over all of
    ``u``'s items ``i`` of ``sim(i, j)`` where ``j`` is a kept neighbour of ``i``. The user's
    own items stay candidates (scored by their neighbours only) unless ``exclude_seen``.
    Top ``k`` by score, ties by item id; users whose items have no neighbours get no list.
    """
    similar = item_neighbours(train, neighbours, shrink, max_items_per_user)
    has = _weighted_events(train).select("user_id", "item_id").distinct()
    mine = has.join(users.select("user_id").distinct(), "user_id", "left_semi").select("user_id", "item_id")
    scored = (
        mine.join(similar, "item_id")
        .groupBy("user_id", F.col("other_id").alias("item_id"))
        .agg(F.sum("sim").alias("score"))
    )
    if exclude_seen:
        scored = scored.join(mine, ["user_id", "item_id"], "left_anti")
    return as_recs(scored, "item_knn", k, F.desc("score"))


# Small default grids of each tunable baseline's settings, for the tuning code.
TUNABLE: dict[str, dict[str, list]] = {
    "als": {"rank": [16, 64], "reg_param": [0.01, 0.1], "alpha": [1.0, 10.0, 40.0]},
    "item_knn": {"neighbours": [20, 100], "shrink": [0.0, 10.0]},
    "repeat": {"half_life_days": [14.0, 60.0, None]},
}

# The baselines by method name, for ``recommend``.
BASELINES = {
    "popularity": popularity,
    "cooccurrence": cooccurrence,
    "als": als,
    "filter_bubble": filter_bubble,
    "repeat": repeat,
    "item_knn": item_knn,
}
# Inputs that ``recommend`` passes itself; every other argument of a baseline is a setting.
_INPUTS = ("train", "users", "k", "as_of", "item_categories")


def grid(space: dict[str, list]) -> list[dict]:
    """Every combination of the settings' values, ``itertools.product`` over the keys in order."""
    keys = list(space)
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(space[key] for key in keys))
    ]


def settings(name: str) -> tuple[str, ...]:
    """The names of the settings of baseline ``name`` (the keys ``recommend`` accepts in ``params``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")
    parameters = inspect.signature(BASELINES[name]).parameters
    return tuple(p for p in parameters if p not in _INPUTS)


def recommend(
    name: str,
    train: DataFrame,
    users: DataFrame,
    k: int,
    as_of: datetime.date | None,
    item_categories: DataFrame | None = None,
    params: dict[str, Any] | None = None,
) -> DataFrame:
    """The recs of baseline ``name`` with ``params`` as keyword overrides of its settings.

    ``as_of`` is only used by ``repeat`` and ``item_categories`` only by ``filter_bubble``
    (both required there). An unknown name or setting raises ``ValueError``.
    """
    allowed = settings(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown settings {unknown} for baseline {name!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    log.info("baseline %s with %s", name, params or "default settings")
    if name == "filter_bubble":
        if item_categories is None:
            raise ValueError("baseline 'filter_bubble' needs item_categories")
        return filter_bubble(train, item_categories, users, k, **params)
    if name == "repeat":
        if as_of is None:
            raise ValueError("baseline 'repeat' needs as_of (the last train day)")
        return repeat(train, users, k, as_of, **params)
    return BASELINES[name](train, users, k, **params)
