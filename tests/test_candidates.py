"""jobs/candidates.py: the channels' rules on tiny inline frames, with hand-worked values."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from core.config import CandidatesConf
from jobs import candidates
from udfs import features

D = dt.date(2024, 3, 31)
EVENTS = "user_id string, item_id string, event_type string, dt date"


def _events(spark, rows):
    return spark.createDataFrame(rows, EVENTS)


def _users(spark, *ids):
    return spark.createDataFrame([(u,) for u in ids], "user_id string")


def test_repeat_channel_scores_decayed_weighted_events_and_says_how_often_and_when(spark):
    ev = _events(
        spark,
        [
            ("u", "a", "purchase", D), ("u", "a", "purchase", D - dt.timedelta(days=10)),
            ("u", "b", "click", D), ("u", "c", "search", D), ("v", "a", "purchase", D),
        ],
    )  # fmt: skip
    cc = CandidatesConf(repeat_half_life_days=10.0)
    got = {r.item_id: r for r in candidates.repeat_channel(ev, _users(spark, "u"), D, cc).collect()}
    assert set(got) == {"a", "b"}  # searches weigh nothing, v is not a target
    assert got["a"].channel_score == pytest.approx(4.0 + 4.0 * 0.5)  # purchase 4, half-life 10 days
    assert got["b"].channel_score == pytest.approx(1.0)
    assert (got["a"].channel_rank, got["b"].channel_rank) == (1, 2)
    assert got["a"].reason == "You ordered this 2 times, last on 31 Mar"
    assert got["b"].reason == "You looked at this before"


def test_collaborative_channel_leaves_own_items_out_and_names_the_strongest_source(spark):
    # a and b share both of their buyers; c shares one of a's two; u has a only.
    ev = _events(
        spark,
        [("x", "a", "purchase", D), ("x", "b", "purchase", D), ("y", "a", "purchase", D),
         ("y", "b", "purchase", D), ("y", "c", "purchase", D), ("u", "a", "purchase", D)],
    )  # fmt: skip
    titles = spark.createDataFrame(
        [("a", "Tea Set"), ("b", "Cups"), ("c", "Saucers")], "item_id string, title string"
    )
    cc = CandidatesConf(neighbours=5, shrink=0.0)
    got = {
        r.item_id: r for r in candidates.collaborative_channel(ev, _users(spark, "u"), titles, cc).collect()
    }
    assert set(got) == {"b", "c"}
    # |U_a| = 3 (x, y, u), |U_b| = 2, |U_c| = 1: sim(a, b) = 2 / sqrt(6), sim(a, c) = 1 / sqrt(3).
    assert got["b"].channel_score == pytest.approx(2 / 6**0.5)
    assert got["c"].channel_score == pytest.approx(1 / 3**0.5)
    assert got["b"].reason == "Shops that stock Tea Set also stock this"


def test_channel_scores_equal_but_for_the_order_of_addition_tie_and_go_to_the_smaller_item_id(spark):
    # 0.1 + 0.2 != 0.3 in floats: the same sum added in another order (another partitioning)
    # must not reorder the items, whichever item gets the larger bits.
    for noisy in ("a", "z"):
        scored = spark.createDataFrame(
            [("u", item, 0.1 + 0.2 if item == noisy else 0.3) for item in ("z", "a")],
            "user_id string, item_id string, channel_score double",
        )
        got = candidates._ranked(scored, "collaborative", 1, F.lit("why")).collect()
        assert [(r.item_id, r.channel_rank, r.channel_score) for r in got] == [("a", 1, 0.3)]


def test_category_transitions_and_the_buyers_scores_for_categories_new_to_them(spark):
    uc = spark.createDataFrame(
        [("x", "tea"), ("x", "cups"), ("y", "tea"), ("y", "toys"), ("u", "tea")],
        "user_id string, leaf_category string",
    )
    t = {(r.from_category, r.leaf_category): r.p for r in candidates.category_transitions(uc).collect()}
    assert t[("tea", "cups")] == pytest.approx(1 / 3) and t[("cups", "tea")] == pytest.approx(1.0)
    got = {
        (r.user_id, r.leaf_category): r.category_transition
        for r in candidates.transition_scores(uc, candidates.category_transitions(uc)).collect()
    }
    assert got[("u", "cups")] == pytest.approx(1 / 3) and got[("u", "toys")] == pytest.approx(1 / 3)
    # x: mean over tea and cups of P(toys | .) = (1/3 + 0) / 2; categories x is in are left out.
    assert got[("x", "toys")] == pytest.approx(1 / 6) and ("x", "tea") not in got


def test_bestseller_channel_fills_chosen_categories_and_the_overall_best_for_everyone(spark):
    best = spark.createDataFrame(
        [("t1", "toys", 9, 1), ("t2", "toys", 5, 2), ("c1", "cups", 20, 1), ("c2", "cups", 1, 2)],
        "item_id string, leaf_category string, buyers long, category_rank int",
    )
    chosen = spark.createDataFrame([("u", "toys")], "user_id string, leaf_category string")
    no_transitions = spark.createDataFrame(
        [], "user_id string, leaf_category string, category_transition double"
    )
    cc = CandidatesConf(bestseller_per_category=1, bestseller_categories=1, overall_bestsellers=1)
    got = candidates.bestseller_channel(_users(spark, "u", "new"), chosen, no_transitions, best, cc).collect()
    rows = {(r.user_id, r.item_id): r for r in got}
    # u: toys' best-seller (score 1 / rank 1) above the catalog's (1 / (1 + per category));
    # a buyer without history (no chosen category) gets the catalog's best-seller only.
    assert set(rows) == {("u", "t1"), ("u", "c1"), ("new", "c1")}
    assert (rows[("u", "t1")].channel_rank, rows[("u", "c1")].channel_rank) == (1, 2)
    assert rows[("u", "c1")].channel_score == pytest.approx(0.5)
    assert rows[("u", "t1")].reason == "Best-seller in toys"


def test_the_overall_bestsellers_are_ranked_by_buyers_then_item_id_for_a_buyer_without_history(spark):
    best = spark.createDataFrame(
        [("t2", "toys", 9, 1), ("t1", "toys", 9, 2), ("c1", "cups", 20, 1), ("c2", "cups", 1, 2)],
        "item_id string, leaf_category string, buyers long, category_rank int",
    )
    nothing = spark.createDataFrame([], "user_id string, leaf_category string")
    no_transitions = spark.createDataFrame(
        [], "user_id string, leaf_category string, category_transition double"
    )
    cc = CandidatesConf(bestseller_per_category=2, overall_bestsellers=3)
    got = candidates.bestseller_channel(_users(spark, "new"), nothing, no_transitions, best, cc).collect()
    # The three with most buyers, t1 before t2 (as many buyers, smaller id); c2 not among them.
    assert [(r.item_id, r.channel_rank) for r in sorted(got, key=lambda r: r.channel_rank)] == [
        ("c1", 1), ("t1", 2), ("t2", 3),
    ]  # fmt: skip
    assert [r.channel_score for r in sorted(got, key=lambda r: r.channel_rank)] == pytest.approx(
        [1 / 3, 1 / 4, 1 / 5]
    )


def test_the_spark_normalised_title_is_the_python_one(spark):
    titles = ["Regular Garden 10 Oz", "SET OF 3 CAKE TINS", "Frozen Pizza, 4 pack", "12 oz", "Mug"]
    df = spark.createDataFrame([(t,) for t in titles], "title string")
    got = [r[0] for r in df.select(features.normalised_title(F.col("title"))).collect()]
    assert got == [features.normalise_title(t) for t in titles]


@pytest.mark.slow
def test_the_features_are_stored_in_row_groups_by_user_so_a_lookup_skips_the_rest(
    spark, conf_factory, monkeypatch
):
    import pyarrow.parquet as pq

    from core import tables

    conf = conf_factory(["tracking.enabled=false", "spark.shuffle_partitions=2"])
    # A tiny row group, so that 2,000 rows make several of them (the real size is 1 MB).
    monkeypatch.setattr(candidates, "FEATURES_PROPERTIES", {"parquet.block.size": 2048})
    # Small files too (the real cap is 250,000 rows): two tasks of 1,000 rows each.
    monkeypatch.setattr(candidates, "FEATURES_MAX_ROWS_PER_FILE", 300)
    users = [f"u{i:03d}" for i in range(100)]
    rows = [(u, f"i{j}", float(j), D) for j in range(20) for u in reversed(users)]
    feats = spark.createDataFrame(rows, "user_id string, item_id string, score double, as_of date")
    candidates.write_features(spark, conf, feats, D)

    path = tables.location(conf, candidates.FEATURES)
    ranges, file_ranges = [], []
    for f in spark.read.format("delta").load(path).inputFiles():
        meta = pq.ParquetFile(f.removeprefix("file:")).metadata
        assert meta.num_rows <= 300
        first, last = (
            meta.row_group(0).column(0).statistics,
            meta.row_group(meta.num_row_groups - 1).column(0).statistics,
        )
        file_ranges.append((first.min, last.max))
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(0).statistics  # user_id
            ranges.append((stats.min, stats.max))
    assert len(ranges) >= 4
    # Sorted by user within each file: the row groups' user ranges do not overlap, so a
    # reader of one buyer opens one or two of them.
    ranges.sort()
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    hits = [r for r in ranges if r[0] <= "u042" <= r[1]]
    assert 1 <= len(hits) <= 2 and len(hits) < len(ranges) / 2
    # And files of at most the cap, each a narrow user range: one buyer is in one or two.
    assert len(file_ranges) >= 7
    assert len([r for r in file_ranges if r[0] <= "u042" <= r[1]]) in (1, 2)
    assert spark.read.format("delta").load(path).count() == len(rows)
