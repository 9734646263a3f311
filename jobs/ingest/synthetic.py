"""Synthetic wholesale behaviour logs with realistic skew, for scale tests and benchmarks.

Shape of the data (all pseudo-random draws are hashes of ids and a seed, so the output
does not depend on partitioning and is reproducible):

- user activity is heavy-tailed (Pareto, alpha 1.2): a few buyers make most events;
- category and item popularity follow power laws (rank ~ u^3 over a uniform u);
- each buyer has one or two home categories that get 80 % of their events (the filter
  bubble the recommender is meant to break);
- searches are two or three words drawn from the title of the item searched for;
- purchase quantities are wholesale pack sizes (6 ... 1000), amount = quantity x price.

Example
-------
>>> events, items = generate(spark, users=1000, days=30)
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

NOUNS = [
    "dress", "mug", "lantern", "candle", "cushion", "tote bag", "necklace", "clock",
    "notebook", "teapot", "apron", "umbrella", "garland", "photo frame", "lunch box",
    "doorstop", "jewellery box", "cake stand", "water bottle", "scarf", "planter",
    "coaster", "wall sign", "storage jar", "toy car", "puzzle", "hair clip", "wallet",
    "mirror", "vase", "bowl", "tray", "blanket", "lamp", "t-shirt", "sneakers", "phone case",
    "backpack", "sticker set", "pen set",
]  # fmt: skip
COLOURS = ["red", "pink", "blue", "white", "black", "green", "ivory", "gold", "silver", "pastel"]
MATERIALS = ["linen", "cotton", "ceramic", "glass", "wooden", "metal", "enamel", "zinc", "felt", "paper"]
STYLES = ["vintage", "retro", "french", "floral", "nordic", "kawaii", "boho", "classic", "mini", "jumbo"]

# Event-type mix: cumulative shares over a uniform draw.
EVENT_MIX = [
    ("view", 0.42), ("click", 0.57), ("search", 0.72), ("favorite", 0.77), ("cart", 0.85),
    ("inquiry", 0.88), ("purchase", 0.985), ("cancel", 1.0),
]  # fmt: skip
PACK_SIZES = [6, 12, 12, 24, 24, 24, 48, 48, 96, 144, 200, 500, 1000]
# Expected events per generated partition: a year of 10,000 buyers (1.8 M events) in the
# default parallelism's 2 partitions ran the driver out of its 2 GB heap in ingest.
EVENTS_PER_PARTITION = 200_000


def _u(seed: int, salt: str, *cols: Column) -> Column:
    """Uniform [0, 1) from a hash of the columns: reproducible under any partitioning."""
    h = F.xxhash64(F.lit(seed), F.lit(salt), *cols)
    return (F.pmod(h, F.lit(1 << 30)) / float(1 << 30)).cast("double")


def _pick(words: list[str], u: Column) -> Column:
    arr = F.array(*[F.lit(w) for w in words])
    return F.element_at(arr, (F.floor(u * len(words)) + 1).cast("int"))


def sizes(users: int) -> tuple[int, int]:
    """(categories, items per category) for a population of ``users`` buyers."""
    categories = max(8, min(400, users // 50))
    per_category = max(20, min(2000, users // 10))
    return categories, per_category


def category_name(c: Column) -> Column:
    n = len(NOUNS)
    noun = _pick(NOUNS, (c % n) / n)
    return F.when(c < n, noun).otherwise(F.concat(noun, F.lit(" "), (F.floor(c / n) + 1).cast("string")))


def items(spark: SparkSession, users: int, seed: int = 7) -> DataFrame:
    """The catalog: item_id, title, category_path, leaf_category, price."""
    n_cat, per_cat = sizes(users)
    df = spark.range(n_cat * per_cat).withColumnRenamed("id", "i")
    cat = F.floor(F.col("i") / per_cat).cast("long")
    i = F.col("i")
    title = F.concat_ws(
        " ",
        _pick(STYLES, _u(seed, "style", i)),
        _pick(COLOURS, _u(seed, "colour", i)),
        _pick(MATERIALS, _u(seed, "material", i)),
        category_name(cat),
    )
    price = F.round(F.exp(F.lit(0.3) + 2.2 * _u(seed, "price", i)), 2)
    return df.select(
        F.concat(F.lit("I"), i.cast("string")).alias("item_id"),
        title.alias("title"),
        F.concat(F.lit("Home>"), category_name(cat)).alias("category_path"),
        category_name(cat).alias("leaf_category"),
        price.alias("price"),
        F.lit(None).cast("string").alias("image_url"),
    )


def generate(
    spark: SparkSession,
    users: int,
    days: int,
    seed: int = 7,
    end_date: dt.date = dt.date(2025, 12, 31),
    events_per_user_day: float = 0.5,
) -> tuple[DataFrame, DataFrame]:
    """(events, items) in the generic ingest format.

    Expected event count is about ``users * days * events_per_user_day``.
    """
    n_cat, per_cat = sizes(users)
    catalog = items(spark, users, seed)
    start = end_date - dt.timedelta(days=days - 1)
    # Pareto(1.2) activity, scaled so the mean is events_per_user_day * days; capped.
    alpha = 1.2
    mean_pareto = alpha / (alpha - 1)
    u_user = _u(seed, "activity", F.col("user"))
    activity = F.pow(1 - u_user, -1 / alpha) / mean_pareto
    n_events = F.least(
        F.greatest(F.lit(1), F.round(activity * events_per_user_day * days)),
        F.lit(days * 200),
    ).cast("int")
    parts = max(
        spark.sparkContext.defaultParallelism,
        math.ceil(users * days * events_per_user_day / EVENTS_PER_PARTITION),
    )
    per_user = spark.range(0, users, 1, parts).select(F.col("id").alias("user"))
    ev = per_user.select("user", F.explode(F.sequence(F.lit(1), n_events)).alias("k"))
    user, k = F.col("user"), F.col("k")
    home1 = F.floor(n_cat * F.pow(_u(seed, "home1", user), 3)).cast("long")
    home2 = F.floor(n_cat * F.pow(_u(seed, "home2", user), 3)).cast("long")
    anywhere = F.floor(n_cat * F.pow(_u(seed, "cat", user, k), 2)).cast("long")
    u_home = _u(seed, "in_home", user, k)
    category = F.when(u_home < 0.55, home1).when(u_home < 0.8, home2).otherwise(anywhere)
    item_in_cat = F.floor(per_cat * F.pow(_u(seed, "item", user, k), 3)).cast("long")
    ev = ev.withColumn("item_index", category * per_cat + item_in_cat)

    u_type = _u(seed, "type", user, k)
    event_type = F.when(u_type < EVENT_MIX[0][1], EVENT_MIX[0][0])
    for name, upto in EVENT_MIX[1:]:
        event_type = event_type.when(u_type < upto, name)
    # Days: recent days a little busier than old ones (a growing platform).
    day = F.floor(days * F.sqrt(_u(seed, "day", user, k))).cast("int")
    second = F.floor(_u(seed, "second", user, k) * 86400).cast("long")
    ts = F.timestamp_seconds(F.unix_timestamp(F.date_add(F.lit(start), day).cast("timestamp")) + second)
    pack = F.element_at(
        F.array(*[F.lit(p) for p in PACK_SIZES]),
        (F.floor(F.pow(_u(seed, "pack", user, k), 1.5) * len(PACK_SIZES)) + 1).cast("int"),
    )
    ev = (
        ev.withColumn("event_type", event_type)
        .withColumn("ts", ts)
        .withColumn("pack", pack)
        .withColumn("item_id", F.concat(F.lit("I"), F.col("item_index").cast("string")))
        .join(catalog, "item_id", "left")
    )
    words = F.split("title", " ")
    # Searches use the noun (the last one or two words) plus one describing word.
    query = F.concat_ws(
        " ",
        F.element_at(words, (F.floor(_u(seed, "qword", user, k) * 3) + 1).cast("int")),
        F.col("leaf_category"),
    )
    et = F.col("event_type")
    quantity = (
        F.when(et == "purchase", F.col("pack"))
        .when(et == "cancel", -F.col("pack"))
        .when(et == "cart", F.col("pack"))
    )
    events = ev.select(
        F.sha2(F.concat_ws("|", F.lit(seed), user, k), 256).substr(1, 24).alias("event_id"),
        F.concat(F.lit("U"), user.cast("string")).alias("user_id"),
        "item_id",
        "event_type",
        "ts",
        F.when(et == "search", query).alias("query"),
        quantity.alias("quantity"),
        F.when(et.isin("purchase", "cancel"), F.round(quantity * F.col("price"), 2)).alias("amount"),
        "title",
        "category_path",
        "leaf_category",
        "price",
    )
    return events, catalog
