"""Query phrases from item titles: the words that set a group of items apart, in the order
the titles use them.

A heuristic query should read like what a buyer types and find the items it is about, so
it is made of the words of the items themselves, not of a template. For a group of items
(a category's best sellers, or its items of one rising factor), each weighted by its
activity:

- the words of a title are ``jobs.aggregate.terms`` (lower case, at least
  ``aggregate.min_term_length`` characters, no numbers or stop words), each counted once
  per item, with its relative position in the title (0 first, 1 last);
- ``share(w)``: the weight of the group's items whose title has ``w`` over the group's
  weight; ``base(w)``: the share of all catalog titles that have ``w``;
- a word is distinguishing when ``share > base`` and at least two of the group's items
  have it (one when the group has one item); its score is ``share * ln(share / base)``
  (frequent in the group and rare elsewhere; a KL-divergence term);
- the ``words`` best by score (ties: the word), a plural left out when its singular is
  chosen ("charm", not also "charms"), joined in the order of their mean position in the
  group's titles (weighted like the shares): "heart wicker decoration", not "decoration
  heart wicker".

A group without a title word (items known only by id) has no phrase; the agents'
heuristics then fall back to the factor and the category.

Example: the best sellers of Online Retail's "bags" give ``"lunch bag retrospot"``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs.aggregate import terms

PHRASE_WORDS = 3  # a typical e-commerce query: two to four words (fixed, not tuned)


def title_words(titles: DataFrame, min_length: int = 3) -> DataFrame:
    """item_id, word, position: the words of each item's ``title`` (see the module docstring)."""
    words = titles.select("item_id", terms(F.col("title"), min_length).alias("_w"))
    return words.select(
        "item_id",
        F.posexplode("_w").alias("_i", "word"),
        (F.greatest(F.size("_w") - 1, F.lit(1))).alias("_n"),
    ).select("item_id", "word", (F.col("_i") / F.col("_n")).alias("position"))


def phrases(weighted: DataFrame, words: DataFrame, keys: list[str], n_words: int = PHRASE_WORDS) -> DataFrame:
    """``keys``, phrase, words, items: one row per group of ``weighted`` (``keys``,
    item_id, weight > 0) that has a distinguishing word; ``words`` from :func:`title_words`
    over the whole catalog."""
    catalog = words.select("item_id").distinct().count()
    base = words.groupBy("word").agg((F.count("*") / F.lit(max(catalog, 1))).alias("base"))
    items = weighted.filter(F.col("weight") > 0).groupBy(*keys, "item_id").agg(F.sum("weight").alias("w"))
    groups = items.groupBy(*keys).agg(F.sum("w").alias("_total"), F.count("*").alias("items"))
    stats = (
        items.join(words, "item_id")
        .groupBy(*keys, "word")
        .agg(
            F.sum("w").alias("_ww"),
            F.count("*").alias("_n"),
            (F.sum(F.col("w") * F.col("position")) / F.sum("w")).alias("position"),
        )
        .join(groups, keys)
        .join(base, "word")
        .withColumn("share", F.col("_ww") / F.col("_total"))
        .filter((F.col("share") > F.col("base")) & (F.col("_n") >= F.least(F.lit(2), F.col("items"))))
        .withColumn("score", F.col("share") * F.log(F.col("share") / F.col("base")))
    )
    # a plural ("charms") gives way to its singular when both would be chosen
    singular = stats.select(*keys, F.concat("word", F.lit("s")).alias("word"), F.lit(True).alias("_plural"))
    stats = stats.join(singular, [*keys, "word"], "left").filter(F.col("_plural").isNull())
    best = Window.partitionBy(*keys).orderBy(F.desc("score"), "word")
    chosen = stats.withColumn("_r", F.row_number().over(best)).filter(F.col("_r") <= n_words)
    ordered = F.transform(F.array_sort(F.collect_list(F.struct("position", "word"))), lambda x: x["word"])
    return (
        chosen.groupBy(*keys)
        .agg(ordered.alias("words"), F.first("items").alias("items"))
        .withColumn("phrase", F.array_join("words", " "))
        .select(*keys, "phrase", "words", "items")
    )
