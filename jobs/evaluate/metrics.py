"""Offline metrics of recommendation lists against a temporal split.

Inputs (Spark DataFrames):

- ``recs``: the lists, ``(method, user_id, item_id, position, has_reason)``; only positions
  ``<= k`` count, and an item listed twice for a user counts once, at its best position;
- ``test``: ``(user_id, item_id)`` items each evaluation user purchased after the cut date,
  ``T_u``. The evaluation users ``U`` are the distinct users of ``test``;
- ``history``: ``(user_id, item_id)`` items each user touched (any event) before the cut;
- ``item_categories``: ``(item_id, leaf_category)``;
- ``item_vectors``: ``(item_id, vector)``, L2-normalised, so cosine = dot product;
- ``train_purchases``: ``(user_id, item_id)`` purchases before the cut (popularity).

Rows of users not in ``U`` are ignored by every metric. A user of ``U`` without a list for
a method counts as 0 in the accuracy metrics (a method does not gain by skipping users).
Per method:

- ``recall``: mean over ``U`` of ``|L_u ∩ T_u| / |T_u|``;
- ``hit_rate``: share of ``U`` with at least one hit (an item of ``L_u ∩ T_u``);
- ``ndcg``: mean over ``U`` of ``DCG / IDCG``, binary gains: ``DCG = sum over hit positions
  p of 1 / log2(p + 1)``, ``IDCG = sum_{i=1..min(|T_u|, k)} 1 / log2(i + 1)``;
- ``new_item_hit_rate``: over users of ``U`` with a test item not in their history, the share
  with a hit on such a new item;
- ``new_category_hit_rate``: a category is new to ``u`` when none of ``u``'s history items is
  in it. Over users of ``U`` with a test item in a category new to them, the share with a
  hit on such an item (a test item without a category is never in a new category);
- ``category_width``: mean over users of ``U`` with a list of the number of distinct
  ``leaf_category`` of the list (items without a category add none);
- ``intra_list_diversity``: mean over lists (users of ``U``) with at least two items that
  have a vector of the mean over item pairs of ``1 - cosine``;
- ``novelty``: mean over list rows of ``-log2((n_i + 1) / (N + 1))``, ``n_i`` the distinct
  train buyers of item ``i``, ``N`` the distinct train buyers overall;
- ``coverage``: distinct recommended items / ``catalog_size``;
- ``reason_share``: share of list rows with ``has_reason`` true;
- ``users_with_list``: share of ``U`` with a non-empty list.

A method present in ``recs`` without rows for any user of ``U`` still gets a summary row:
0 for recall, hit_rate, ndcg, the two new hit rates (when some user of ``U`` is eligible),
coverage and users_with_list; null for category_width, intra_list_diversity, novelty and
reason_share (means over no lists or rows). The new hit rates are null when no user of ``U``
is eligible, and every mean over ``U`` is null when ``U`` is empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

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


def list_rows(recs: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """The rows that count: positions ``<= k``, users of ``U``, each item once at its best position."""
    return (
        recs.filter(F.col("position") <= k)
        .join(users, "user_id", "left_semi")
        .groupBy("method", "user_id", "item_id")
        .agg(
            F.min("position").alias("position"),
            F.min_by("has_reason", "position").alias("has_reason"),
        )
    )


def labelled_test(test: DataFrame, history: DataFrame, item_categories: DataFrame) -> DataFrame:
    """Test items + ``new_item`` (not in the user's history) and ``new_category`` (category new to the user)."""
    cats = item_categories.select("item_id", "leaf_category")
    seen = history.select("user_id", "item_id").distinct().withColumn("_seen", F.lit(True))
    known = (
        history.join(cats, "item_id")
        .select("user_id", "leaf_category")
        .distinct()
        .withColumn("_known", F.lit(True))
    )
    return (
        test.join(cats, "item_id", "left")
        .join(seen, ["user_id", "item_id"], "left")
        .join(known, ["user_id", "leaf_category"], "left")
        .select(
            "user_id",
            "item_id",
            F.col("_seen").isNull().alias("new_item"),
            (F.col("leaf_category").isNotNull() & F.col("_known").isNull()).alias("new_category"),
        )
    )


def user_targets(labelled: DataFrame, k: int) -> DataFrame:
    """Per user of ``U``: ``n_test``, ``idcg`` and whether they are eligible for the new hit rates."""
    ideal = F.aggregate(
        F.sequence(F.lit(1), F.least(F.col("n_test"), F.lit(k)).cast("int")),
        F.lit(0.0),
        lambda acc, i: acc + 1.0 / F.log2(i + 1),
    )
    return (
        labelled.groupBy("user_id")
        .agg(
            F.count("*").alias("n_test"),
            F.max("new_item").alias("has_new_item"),
            F.max("new_category").alias("has_new_category"),
        )
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
    labelled: DataFrame,
    item_categories: DataFrame,
    item_vectors: DataFrame,
    train_purchases: DataFrame,
) -> DataFrame:
    """Per (method, user) list: ``n_items``, ``hits``, ``dcg``, ``new_item_hits``,
    ``new_category_hits``, ``category_width``, ``intra_list_diversity`` (null below two
    vectors), and the sums behind novelty (``information``) and reason share (``reasons``)."""
    purchases = train_purchases.select("user_id", "item_id")
    buyers = purchases.groupBy("item_id").agg(F.countDistinct("user_id").alias("n_i"))
    all_buyers = purchases.agg(F.countDistinct("user_id").alias("n_all"))
    information = -F.log2((F.coalesce(F.col("n_i"), F.lit(0)) + 1.0) / (F.col("n_all") + 1.0))
    marked = (
        rows.join(labelled.withColumn("_hit", F.lit(True)), ["user_id", "item_id"], "left")
        .join(item_categories.select("item_id", "leaf_category"), "item_id", "left")
        .join(item_vectors.select("item_id", "vector"), "item_id", "left")
        .join(buyers, "item_id", "left")
        .crossJoin(F.broadcast(all_buyers))
    )
    hit = F.col("_hit").isNotNull()
    lists = marked.groupBy("method", "user_id").agg(
        F.count("*").alias("n_items"),
        F.count_if(hit).alias("hits"),
        F.sum(F.when(hit, 1.0 / F.log2(F.col("position") + 1)).otherwise(0.0)).alias("dcg"),
        F.count_if(hit & F.col("new_item")).alias("new_item_hits"),
        F.count_if(hit & F.col("new_category")).alias("new_category_hits"),
        F.size(F.collect_set("leaf_category")).alias("category_width"),
        F.collect_list("vector").alias("_vectors"),  # nulls (items without a vector) are skipped
        F.sum(information).alias("information"),
        F.count_if("has_reason").alias("reasons"),
    )
    list_diversity = F.pandas_udf(list_diversities, "double")
    diversity = F.when(F.size("_vectors") >= 2, list_diversity("_vectors"))
    return lists.withColumn("intra_list_diversity", diversity).drop("_vectors")


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
    """(summary, per_user): the metrics of the module docstring.

    ``summary``: one row per method of ``recs``, ordered by method: ``method``, the
    ``METRICS`` (doubles) and ``users`` (int, ``|U|``). ``per_user``: ``(method, user_id,
    category_width, hits)`` for each user of ``U`` with a list.
    """
    test = test.select("user_id", "item_id").distinct()
    users = test.select("user_id").distinct()
    methods = recs.select("method").distinct()
    rows = list_rows(recs, users, k)
    labelled = labelled_test(test, history, item_categories)
    lists = list_stats(rows, labelled, item_categories, item_vectors, train_purchases)

    # Every (method, user of U): a user without a list counts as zero hits.
    grid = (
        F.broadcast(methods).crossJoin(user_targets(labelled, k)).join(lists, ["method", "user_id"], "left")
    )
    hits = F.coalesce(F.col("hits"), F.lit(0))

    def eligible_hit_share(count: str, eligible: str):
        return F.avg(F.when(F.col(eligible), (F.coalesce(F.col(count), F.lit(0)) > 0).cast("double")))

    per_method = grid.groupBy("method").agg(
        F.avg(hits / F.col("n_test")).alias("recall"),
        F.avg((hits > 0).cast("double")).alias("hit_rate"),
        F.avg(F.coalesce(F.col("dcg"), F.lit(0.0)) / F.col("idcg")).alias("ndcg"),
        eligible_hit_share("new_item_hits", "has_new_item").alias("new_item_hit_rate"),
        eligible_hit_share("new_category_hits", "has_new_category").alias("new_category_hit_rate"),
        F.avg("category_width").alias("category_width"),
        F.avg("intra_list_diversity").alias("intra_list_diversity"),
        (F.sum("information") / F.sum("n_items")).alias("novelty"),
        (F.sum("reasons") / F.sum("n_items")).alias("reason_share"),
        F.avg(F.col("n_items").isNotNull().cast("double")).alias("users_with_list"),
    )
    coverage = rows.groupBy("method").agg(
        (F.countDistinct("item_id") / F.lit(float(catalog_size))).alias("coverage")
    )
    n_users = users.agg(F.count("*").cast("int").alias("users"))
    summary = (
        methods.join(per_method, "method", "left")
        .join(coverage, "method", "left")
        .crossJoin(n_users)
        .withColumn("coverage", F.coalesce(F.col("coverage"), F.lit(0.0)))
        .select("method", *[F.col(m).cast("double").alias(m) for m in METRICS], "users")
        .orderBy("method")
    )
    per_user = lists.select(*PER_USER_COLUMNS)
    return summary, per_user
