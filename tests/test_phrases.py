"""jobs/phrases.py: the title words that set a group of items apart, in title order."""

from __future__ import annotations

import pytest

from jobs import phrases

TITLES = [
    ("i1", "RED RETROSPOT LUNCH BAG"),
    ("i2", "JUMBO BAG RED RETROSPOT"),  # "jumbo" is a stop word (a size)
    ("i3", "LUNCH BAG SPACEBOY"),
    ("i4", "RED HEART CANDLE"),
    ("i5", "WHITE HEART CANDLE HOLDER"),
    ("i6", "RED MUG"),
    ("i7", None),  # an item known only by its id
]


def phrase_rows(spark, weighted, keys=("leaf_category",), titles=TITLES):
    words = phrases.title_words(spark.createDataFrame(titles, "item_id string, title string"))
    schema = ", ".join(f"{k} string" for k in keys) + ", item_id string, weight double"
    got = phrases.phrases(spark.createDataFrame(weighted, schema), words, list(keys)).collect()
    return {tuple(r[k] for k in keys): (r.phrase, r["items"]) for r in got}


def test_title_words_keep_their_relative_position_once_per_item(spark):
    words = phrases.title_words(
        spark.createDataFrame(
            [("a", "Red bag, RED retrospot 12"), ("b", "mug")], "item_id string, title string"
        )
    )
    # "12" (a number) goes, the second "red" too; positions over the 3 words kept
    got = sorted((r.item_id, r.word, r.position) for r in words.collect())
    assert got == [("a", "bag", 0.5), ("a", "red", 0.0), ("a", "retrospot", 1.0), ("b", "mug", 0.0)]


def test_phrase_is_the_best_distinguishing_words_in_title_order(spark):
    got = phrase_rows(
        spark,
        [("bags", "i1", 2.0), ("bags", "i2", 1.0), ("bags", "i3", 1.0),
         ("candles", "i4", 1.0), ("candles", "i5", 1.0), ("mugs", "i6", 3.0), ("mugs", "i6", 1.0),
         ("unknown", "i7", 5.0)],
    )  # fmt: skip
    # bags: weight 4 over i1 (2), i2, i3. Of the 6 titled catalog items, base shares: bag 3/6,
    # red 4/6, retrospot 2/6, lunch 2/6, spaceboy 1/6. Group shares: bag 4/4 (score
    # 1 x ln 2 = 0.693), lunch (i1, i3) and retrospot (i1, i2) 3/4 (0.75 x ln 2.25 = 0.608
    # each), red 3/4 (0.75 x ln 1.125 = 0.088): the best three are bag, lunch, retrospot;
    # spaceboy is in one item only. Mean positions weighted by the items: lunch
    # (2 x 2/3 + 0) / 3 = 0.444, retrospot (2 x 1/3 + 1) / 3 = 0.556, bag (2 x 1 + 0 + 0.5) / 4
    # = 0.625.
    assert got[("bags",)] == ("lunch retrospot bag", 3)
    # candles: heart and candle in both items (1 x ln 3 each); red's share 1/2 is below its
    # base 4/6; white and holder are in one of two items. heart at (1/2 + 1/3) / 2, candle at
    # (1 + 2/3) / 2.
    assert got[("candles",)] == ("heart candle", 2)
    # a group of one item: its words above their base share, in its title's order
    assert got[("mugs",)] == ("red mug", 1)
    # an item without title words has no phrase
    assert ("unknown",) not in got


def test_a_plural_gives_way_to_its_singular(spark):
    titles = [("k1", "LOVE CHARM"), ("k2", "LOVE CHARMS"), ("k3", "LOVE CHARM CHARMS"), ("k4", "OTHER THING")]
    weighted = [("jewellery", k, 1.0) for k in ("k1", "k2", "k3")]
    # love 3/3 against 3/4; charm and charms 2/3 against 2/4 each: "charms" dropped for "charm"
    assert phrase_rows(spark, weighted, titles=titles)[("jewellery",)] == ("love charm", 3)


@pytest.mark.parametrize("n_words", [1, 2])
def test_groups_by_several_keys_and_fewer_words(spark, n_words):
    words = phrases.title_words(spark.createDataFrame(TITLES, "item_id string, title string"))
    weighted = spark.createDataFrame(
        [("bags", "red", "i1", 2.0), ("bags", "red", "i2", 1.0), ("bags", "spaceboy", "i3", 1.0)],
        "leaf_category string, factor string, item_id string, weight double",
    )
    got = {
        (r.leaf_category, r.factor): r.phrase
        for r in phrases.phrases(weighted, words, ["leaf_category", "factor"], n_words).collect()
    }
    # (bags, red): i1 and i2 both have red, retrospot, bag (1 x ln 1.5, 1 x ln 3, 1 x ln 2)
    assert got[("bags", "red")] == {1: "retrospot", 2: "retrospot bag"}[n_words]
    assert got[("bags", "spaceboy")] == {1: "spaceboy", 2: "lunch spaceboy"}[n_words]
