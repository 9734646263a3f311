"""Offline metrics of recommendation lists against a temporal split, per user and at several K.

Inputs (Spark DataFrames):

- ``recs``: the lists, ``(method, user_id, item_id, position, has_reason)``; at a cut-off
  ``k`` only positions ``<= k`` count, and an item listed twice for a user counts once, at
  its best position;
- ``test``: ``(user_id, item_id)`` items each evaluation user purchased after the cut date,
  ``T_u``. The evaluation users ``U`` are the distinct users of ``test``;
- ``history``: ``(user_id, item_id)`` items each user touched (any event) before the cut;
- ``item_categories``: ``(item_id, leaf_category)``, at most one category per item;
- ``item_vectors``: ``(item_id, vector)``, L2-normalised, so cosine = dot product;
- ``train_purchases``: ``(user_id, item_id)`` purchases before the cut (popularity).

Rows of users not in ``U`` are ignored by every metric. ``L_u`` is the list of user ``u``
at ``k`` (its distinct items at positions ``<= k``); a hit is an item of ``L_u ∩ T_u``.
Labels, for a user ``u`` and an item ``i``:

- ``i`` is a *repeat* item when it is in ``u``'s history, a *new item* otherwise;
- ``i`` is in a *new category* when it has a category and none of ``u``'s history items is
  in that category (an item without a category is never in a new category).

``per_user`` has one row per (method of ``recs``, user of ``U``, ``k``); a user without a
list for a method still gets a row, with 0 hits (a method does not gain by skipping users).
Its metrics (``PER_USER_METRICS``, doubles):

- ``recall``: ``|L_u ∩ T_u| / |T_u|``; ``hit``: 1.0 with at least one hit, else 0.0;
- ``ndcg``: ``DCG / IDCG``, binary gains: ``DCG = sum over hit positions p of
  1 / log2(p + 1)``, ``IDCG = sum_{i=1..min(|T_u|, k)} 1 / log2(i + 1)``;
- ``recall_repeat``, ``recall_new_item``, ``recall_new_category``: the recall restricted to
  the test items that are repeat items, new items, in a new category; null when the user
  has no such test item;
- ``new_item_hit``, ``new_category_hit``: 1.0 with a hit on a new item (an item in a new
  category), else 0.0; null when the user has no such test item (not eligible);
- ``list_length``: ``|L_u|`` (0.0 without a list); ``has_list``: 1.0 with a list, else 0.0;
- ``repeat_share``: share of the list's items that are repeat items;
- ``discovery_slots``: number of the list's items in a new category (0.0 without a list);
- ``discovery_precision``: new-category hits per discovery slot, null without a slot;
- ``category_width``: number of distinct ``leaf_category`` of the list (items without a
  category add none);
- ``intra_list_diversity``: mean over pairs of the list's items that have a vector of
  ``1 - cosine``; null below two such items;
- ``novelty``: mean over the list's items of ``-log2((n_i + 1) / (N + 1))``, ``n_i`` the
  distinct train buyers of item ``i``, ``N`` the distinct train buyers overall;
- ``reason_share``: share of the list's items with ``has_reason`` true (the flag of the
  item's best position).

``repeat_share``, ``category_width``, ``intra_list_diversity``, ``novelty`` and
``reason_share`` describe a list, so they are null for a user without one.

``summarize`` gives one row per (method, ``k``): each per-user metric as its mean over the
users where it is not null (so ``recall`` counts the users without a list as 0, while
``novelty`` is the mean over users with a list of their list's mean novelty), plus
``coverage``, the distinct items of the method's lists at ``k`` (users of ``U``) over the
catalog size, and ``users``, ``|U|``. A method present in ``recs`` without rows for any user
of ``U`` still gets rows: 0 for the accuracy metrics, ``list_length``, ``has_list``,
``discovery_slots`` and coverage, null for the metrics of a list.

``evaluate`` is the single-``k`` view of the earlier interface: the summary with the names
of ``METRICS`` (``hit_rate`` is the mean of ``hit``, ``new_item_hit_rate`` and
``new_category_hit_rate`` the means of ``new_item_hit`` and ``new_category_hit``,
``users_with_list`` the mean of ``has_list``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

PER_USER_METRICS = (
    "recall",
    "hit",
    "ndcg",
    "recall_repeat",
    "recall_new_item",
    "recall_new_category",
    "new_item_hit",
    "new_category_hit",
    "list_length",
    "has_list",
    "repeat_share",
    "discovery_slots",
    "discovery_precision",
    "category_width",
    "intra_list_diversity",
    "novelty",
    "reason_share",
)
# Per-user metrics that describe a list (length, repeat share, width, ...) ...
DESCRIPTIVE_METRICS = ("list_length", "has_list", "repeat_share", "discovery_slots", "category_width",
                       "intra_list_diversity", "novelty", "reason_share")  # fmt: skip
# ... and the others, where a higher value is a better list (a verdict reads better / worse).
QUALITY_METRICS = tuple(m for m in PER_USER_METRICS if m not in DESCRIPTIVE_METRICS)
# Operational figures of a pipeline variant's LLM answers (point values, no interval).
OPS_METRICS = (
    "parse_success",
    "partial_share",
    "tokens_per_user",
    "latency_p50_ms",
    "latency_p95_ms",
    "failures",
)
# The summary of ``evaluate`` (a single k), and its per-user table.
METRICS = (
    "recall",
    "hit_rate",
    "ndcg",
    "new_item_hit_rate",
    "new_category_hit_rate",
    "category_width",
    "intra_list_diversity",
    "novelty",
    "coverage",
    "reason_share",
    "users_with_list",
)
PER_USER_COLUMNS = ("method", "user_id", "category_width", "hits")
# ``METRICS`` name -> ``summarize`` column, where they differ.
_RENAMED = {
    "hit_rate": "hit",
    "new_item_hit_rate": "new_item_hit",
    "new_category_hit_rate": "new_category_hit",
    "users_with_list": "has_list",
}


def checked_ks(ks: Iterable[int]) -> list[int]:
    """The distinct cut-offs, sorted; ``ValueError`` when there is none or one is below 1."""
    ks = sorted(set(ks))
    if not ks:
        raise ValueError("ks must name at least one cut-off k")
    if ks[0] < 1:
        raise ValueError(f"every cut-off k must be >= 1, got {ks[0]}")
    return ks


def ks_frame(spark, ks: list[int]) -> DataFrame:
    """A one-column ``k`` (int) frame, small enough to broadcast."""
    return F.broadcast(spark.createDataFrame([(k,) for k in ks], "k int"))


def list_rows(recs: DataFrame, users: DataFrame, ks: list[int]) -> DataFrame:
    """The rows that count, ``(method, user_id, k, item_id, position, has_reason)``: users of
    ``U``, each item once at its best position, repeated for each ``k`` it is within."""
    best = (
        recs.filter(F.col("position") <= max(ks))
        .join(users, "user_id", "left_semi")
        .groupBy("method", "user_id", "item_id")
        .agg(
            F.min("position").alias("position"),
            F.min_by("has_reason", "position").alias("has_reason"),
        )
    )
    return best.crossJoin(ks_frame(recs.sparkSession, ks)).filter(F.col("position") <= F.col("k"))


def user_labels(history: DataFrame, item_categories: DataFrame):
    """``(seen, known)``: the history items of each user, ``(user_id, item_id, _seen)``, and
    the categories each user knows, ``(user_id, leaf_category, _known)``."""
    seen = history.select("user_id", "item_id").distinct().withColumn("_seen", F.lit(True))
    known = (
        history.join(item_categories.select("item_id", "leaf_category"), "item_id")
        .select("user_id", "leaf_category")
        .distinct()
        .withColumn("_known", F.lit(True))
    )
    return seen, known


def labelled(items: DataFrame, seen: DataFrame, known: DataFrame, item_categories: DataFrame) -> DataFrame:
    """``items`` (with ``user_id``, ``item_id``) + ``leaf_category``, ``new_item`` (not in the
    user's history) and ``new_category`` (has a category that is new to the user)."""
    return (
        items.join(item_categories.select("item_id", "leaf_category"), "item_id", "left")
        .join(seen, ["user_id", "item_id"], "left")
        .join(known, ["user_id", "leaf_category"], "left")
        .withColumn("new_item", F.col("_seen").isNull())
        .withColumn("new_category", F.col("leaf_category").isNotNull() & F.col("_known").isNull())
        .drop("_seen", "_known")
    )


def user_targets(labelled_test: DataFrame, ks: DataFrame) -> DataFrame:
    """Per user of ``U`` and ``k``: ``n_test``, the test items that are repeat items
    (``n_repeat``), new items (``n_new_item``), in a new category (``n_new_category``), and
    ``idcg``."""
    ideal = F.aggregate(
        F.sequence(F.lit(1), F.least(F.col("n_test"), F.col("k"))),
        F.lit(0.0),
        lambda acc, i: acc + 1.0 / F.log2(i + 1),
    )
    return (
        labelled_test.groupBy("user_id")
        .agg(
            F.count("*").cast("int").alias("n_test"),
            F.count_if(~F.col("new_item")).alias("n_repeat"),
            F.count_if("new_item").alias("n_new_item"),
            F.count_if("new_category").alias("n_new_category"),
        )
        .crossJoin(ks)
        .withColumn("idcg", ideal)
    )


def mean_pairwise_distance(vectors) -> float:
    """Mean over item pairs of ``1 - cosine`` for L2-normalised vectors; NaN below two vectors."""
    n = 0 if vectors is None else len(vectors)
    if n < 2:
        return float("nan")
    matrix = np.stack(vectors).astype(np.float64)
    cosines = matrix @ matrix.T
    # Symmetric: the mean over ordered pairs i != j is the mean over unordered pairs.
    return float(1.0 - (cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def list_diversities(lists: pd.Series) -> pd.Series:
    """``mean_pairwise_distance`` of each list of vectors (the body of a pandas UDF)."""
    return lists.map(mean_pairwise_distance).astype("float64")


def list_stats(
    rows: DataFrame,
    labelled_test: DataFrame,
    seen: DataFrame,
    known: DataFrame,
    item_categories: DataFrame,
    item_vectors: DataFrame,
    train_purchases: DataFrame,
) -> DataFrame:
    """Per (method, user, k) list: ``n_items``, ``hits``, ``dcg``, the hits on repeat items,
    new items and new categories, ``repeats`` (repeat items listed), ``discovery_slots``,
    ``category_width``, ``intra_list_diversity`` (null below two vectors), and the sums
    behind novelty (``information``) and reason share (``reasons``)."""
    purchases = train_purchases.select("user_id", "item_id")
    buyers = purchases.groupBy("item_id").agg(F.countDistinct("user_id").alias("n_i"))
    all_buyers = purchases.agg(F.countDistinct("user_id").alias("n_all"))
    information = -F.log2((F.coalesce(F.col("n_i"), F.lit(0)) + 1.0) / (F.col("n_all") + 1.0))
    test_hits = labelled_test.select("user_id", "item_id", F.lit(True).alias("_hit"))
    # The joins on item_id first, then those on (user_id, item_id): fewer shuffles of the rows.
    with_items = (
        rows.join(item_vectors.select("item_id", "vector"), "item_id", "left")
        .join(buyers, "item_id", "left")
        .crossJoin(F.broadcast(all_buyers))
    )
    marked = labelled(with_items, seen, known, item_categories).join(
        test_hits, ["user_id", "item_id"], "left"
    )
    hit = F.col("_hit").isNotNull()
    lists = marked.groupBy("method", "user_id", "k").agg(
        F.count("*").alias("n_items"),
        F.count_if(hit).alias("hits"),
        F.sum(F.when(hit, 1.0 / F.log2(F.col("position") + 1)).otherwise(0.0)).alias("dcg"),
        F.count_if(hit & ~F.col("new_item")).alias("repeat_hits"),
        F.count_if(hit & F.col("new_item")).alias("new_item_hits"),
        F.count_if(hit & F.col("new_category")).alias("new_category_hits"),
        F.count_if(~F.col("new_item")).alias("repeats"),
        F.count_if("new_category").alias("discovery_slots"),
        F.size(F.collect_set("leaf_category")).alias("category_width"),
        F.collect_list("vector").alias("_vectors"),  # nulls (items without a vector) are skipped
        F.sum(information).alias("information"),
        F.count_if("has_reason").alias("reasons"),
    )
    list_diversity = F.pandas_udf(list_diversities, "double")
    diversity = F.when(F.size("_vectors") >= 2, list_diversity("_vectors"))
    return lists.withColumn("intra_list_diversity", diversity).drop("_vectors")


def _share(count: str, total: str) -> Column:
    """``count / total`` (``count`` null counts as 0), null when ``total`` is 0 or null."""
    return F.when(F.col(total) > 0, F.coalesce(F.col(count), F.lit(0)) / F.col(total))


def _any(count: str, eligible: str) -> Column:
    """1.0 when ``count > 0``, else 0.0; null when ``eligible`` is 0 (not eligible)."""
    return F.when(F.col(eligible) > 0, (F.coalesce(F.col(count), F.lit(0)) > 0).cast("double"))


def _per_user_table(
    recs: DataFrame,
    test: DataFrame,
    history: DataFrame,
    item_categories: DataFrame,
    item_vectors: DataFrame,
    train_purchases: DataFrame,
    ks: Iterable[int],
) -> DataFrame:
    """``per_user``'s columns and ``hits`` (the number of hits, long)."""
    ks = checked_ks(ks)
    log.debug("per-user metrics at k in %s", ks)
    test = test.select("user_id", "item_id").distinct()
    users = test.select("user_id").distinct()
    methods = recs.select("method").distinct()
    seen, known = user_labels(history, item_categories)
    labelled_test = labelled(test, seen, known, item_categories)
    rows = list_rows(recs, users, ks)
    lists = list_stats(rows, labelled_test, seen, known, item_categories, item_vectors, train_purchases)

    # Every (method, user of U, k): a user without a list counts as zero hits.
    grid = (
        F.broadcast(methods)
        .crossJoin(user_targets(labelled_test, ks_frame(recs.sparkSession, ks)))
        .join(lists, ["method", "user_id", "k"], "left")
    )
    n_items = F.col("n_items")
    columns = {
        "recall": _share("hits", "n_test"),
        "hit": (F.coalesce(F.col("hits"), F.lit(0)) > 0),
        "ndcg": F.coalesce(F.col("dcg"), F.lit(0.0)) / F.col("idcg"),
        "recall_repeat": _share("repeat_hits", "n_repeat"),
        "recall_new_item": _share("new_item_hits", "n_new_item"),
        "recall_new_category": _share("new_category_hits", "n_new_category"),
        "new_item_hit": _any("new_item_hits", "n_new_item"),
        "new_category_hit": _any("new_category_hits", "n_new_category"),
        "list_length": F.coalesce(n_items, F.lit(0)),
        "has_list": n_items.isNotNull(),
        "repeat_share": F.col("repeats") / n_items,
        "discovery_slots": F.coalesce(F.col("discovery_slots"), F.lit(0)),
        "discovery_precision": _share("new_category_hits", "discovery_slots"),
        "category_width": F.col("category_width"),
        "intra_list_diversity": F.col("intra_list_diversity"),
        "novelty": F.col("information") / n_items,
        "reason_share": F.col("reasons") / n_items,
    }
    return grid.select(
        "method",
        "user_id",
        F.col("k").cast("int").alias("k"),
        "n_test",
        *[columns[m].cast("double").alias(m) for m in PER_USER_METRICS],
        F.coalesce(F.col("hits"), F.lit(0)).cast("long").alias("hits"),
    )


def per_user(
    recs: DataFrame,
    test: DataFrame,
    history: DataFrame,
    item_categories: DataFrame,
    item_vectors: DataFrame,
    train_purchases: DataFrame,
    ks: list[int],
) -> DataFrame:
    """The per-user metrics of the module docstring at each ``k`` of ``ks``, in one pass.

    One row per (method of ``recs``, user of ``U``, ``k``): ``method``, ``user_id``, ``k``
    (int), ``n_test`` (int, ``|T_u|``) and the ``PER_USER_METRICS`` (doubles). Raises
    ``ValueError`` when ``ks`` is empty or has a ``k < 1``.
    """
    table = _per_user_table(recs, test, history, item_categories, item_vectors, train_purchases, ks)
    return table.drop("hits")


def summarize(per_user_df: DataFrame, recs: DataFrame, catalog_size: int, ks: list[int]) -> DataFrame:
    """One row per (method of ``recs``, ``k`` of ``ks``), ordered by method and ``k``.

    Columns: ``method``, ``k`` (int), each of ``PER_USER_METRICS`` as the mean over users of
    its non-null values in ``per_user_df`` (the output of ``per_user``), ``coverage``
    (distinct items of the method's lists at positions ``<= k``, users of ``U`` only, over
    ``catalog_size``) and ``users`` (int, ``|U|``). Raises ``ValueError`` when
    ``catalog_size < 1`` or ``ks`` is empty or has a ``k < 1``.
    """
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    ks = checked_ks(ks)
    users = per_user_df.select("user_id").distinct()
    grid = F.broadcast(recs.select("method").distinct()).crossJoin(ks_frame(recs.sparkSession, ks))
    means = per_user_df.groupBy("method", "k").agg(*[F.avg(m).alias(m) for m in PER_USER_METRICS])
    coverage = (
        list_rows(recs, users, ks)
        .groupBy("method", "k")
        .agg((F.countDistinct("item_id") / F.lit(float(catalog_size))).alias("coverage"))
    )
    n_users = users.agg(F.count("*").cast("int").alias("users"))
    return (
        grid.join(means, ["method", "k"], "left")
        .join(coverage, ["method", "k"], "left")
        .crossJoin(n_users)
        .select(
            "method",
            "k",
            *PER_USER_METRICS,
            F.coalesce(F.col("coverage"), F.lit(0.0)).alias("coverage"),
            "users",
        )
        .orderBy("method", "k")
    )


def evaluate(
    recs: DataFrame,
    test: DataFrame,
    history: DataFrame,
    item_categories: DataFrame,
    item_vectors: DataFrame,
    train_purchases: DataFrame,
    catalog_size: int,
    k: int = 20,
) -> tuple[DataFrame, DataFrame]:
    """(summary, per_user) at a single ``k``, in the earlier interface.

    ``summary``: one row per method of ``recs``, ordered by method: ``method``, the
    ``METRICS`` (doubles, see the module docstring for their names in ``summarize``) and
    ``users`` (int, ``|U|``). ``per_user``: ``(method, user_id, category_width, hits)``
    (ints) for each user of ``U`` with a list.
    """
    table = _per_user_table(recs, test, history, item_categories, item_vectors, train_purchases, [k])
    summary = summarize(table.drop("hits"), recs, catalog_size, [k]).select(
        "method",
        *[F.col(_RENAMED.get(m, m)).cast("double").alias(m) for m in METRICS],
        "users",
    )
    old_per_user = table.filter(F.col("has_list") == 1.0).select(
        "method",
        "user_id",
        F.col("category_width").cast("int").alias("category_width"),
        "hits",
    )
    return summary, old_per_user
