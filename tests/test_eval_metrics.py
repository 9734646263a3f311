"""jobs/evaluate/metrics.py: accuracy, discovery, diversity, novelty, coverage; expected values by hand."""

from __future__ import annotations

import math

import pytest

from jobs.evaluate import metrics

RECS_SCHEMA = "method string, user_id string, item_id string, position int, has_reason boolean"
PAIRS_SCHEMA = "user_id string, item_id string"


def recs(spark, rows):
    """rows: (method, user_id, item_id, position[, has_reason=False])."""
    full = [(*r, False) if len(r) == 4 else r for r in rows]
    return spark.createDataFrame(full, RECS_SCHEMA)


def pairs(spark, rows):
    return spark.createDataFrame(rows, PAIRS_SCHEMA)


def run(spark, rec_rows, test, history=(), categories=(), vectors=(), train=(), catalog_size=10, k=20):
    summary, per_user = metrics.evaluate(
        recs(spark, rec_rows),
        pairs(spark, list(test)),
        pairs(spark, list(history)),
        spark.createDataFrame(list(categories), "item_id string, leaf_category string"),
        spark.createDataFrame(list(vectors), "item_id string, vector array<float>"),
        pairs(spark, list(train)),
        catalog_size,
        k,
    )
    return {r.method: r for r in summary.collect()}, per_user


def test_recall_hit_rate_ndcg_count_a_user_without_a_list_as_zero(spark):
    test = [("u1", "A"), ("u1", "B"), ("u2", "C"), ("u2", "Z"), ("u3", "D")]
    rows = [
        ("m", "u1", "A", 1), ("m", "u1", "X", 2), ("m", "u1", "B", 3),
        ("m", "u2", "Y", 1), ("m", "u2", "C", 2),
        ("m", "u2", "Z", 4),  # beyond k = 3: not a hit
        # u3 has no list for m; "lost" only lists a user outside U
        ("lost", "outsider", "A", 1),
    ]  # fmt: skip
    categories = [(i, "mugs") for i in "ABCDXYZ"]
    got, _ = run(spark, rows, test, categories=categories, k=3)
    m = got["m"]
    # recall: u1 2/2, u2 1/2 (Z is at position 4), u3 0 -> 1.5 / 3
    assert m.recall == pytest.approx(0.5)
    # hits for u1 and u2, none for u3
    assert m.hit_rate == pytest.approx(2 / 3)
    # u1: DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3); u2: DCG = 1/log2(3), same IDCG
    idcg = 1 + 1 / math.log2(3)
    assert m.ndcg == pytest.approx((1.5 / idcg + (1 / math.log2(3)) / idcg + 0) / 3)
    assert m.users_with_list == pytest.approx(2 / 3)
    assert m.users == 3
    assert list(got) == ["lost", "m"]  # ordered by method, the listless method included
    lost = got["lost"]
    assert (lost.recall, lost.hit_rate, lost.ndcg, lost.users_with_list, lost.coverage) == (0, 0, 0, 0, 0)
    # no history: every test item and category is new, so all users are eligible and none is hit
    assert (lost.new_item_hit_rate, lost.new_category_hit_rate) == (0, 0)
    assert lost.category_width is None and lost.novelty is None and lost.reason_share is None
    assert lost.users == 3


def test_new_item_hits_and_new_category_hits_are_told_apart(spark):
    categories = [("A", "mugs"), ("B", "mugs"), ("C", "lamps"), ("D", "rugs")]
    history = [("u1", "A"), ("u2", "A"), ("u3", "D"), ("u4", "A")]
    test = [
        ("u1", "B"),  # new item in a known category
        ("u2", "C"),  # new item in a new category
        ("u3", "D"), ("u3", "A"),  # D known; A is a new item in a category new to u3
        ("u4", "A"),  # nothing new
    ]  # fmt: skip
    rows = [("m", "u1", "B", 1), ("m", "u2", "C", 1), ("m", "u3", "D", 1), ("m", "u4", "A", 1)]
    m = run(spark, rows, test, history, categories)[0]["m"]
    assert m.hit_rate == pytest.approx(1.0)
    # eligible for a new item: u1, u2, u3; hit on a new item: u1 (B), u2 (C) -> 2/3
    assert m.new_item_hit_rate == pytest.approx(2 / 3)
    # eligible for a new category: u2 (lamps), u3 (mugs); hit there: u2 only -> 1/2
    assert m.new_category_hit_rate == pytest.approx(0.5)


def test_category_width_and_intra_list_diversity(spark):
    categories = [("A", "mugs"), ("B", "mugs"), ("C", "lamps"), ("D", "rugs")]
    # A and C identical, B orthogonal to both; D has no vector
    vectors = [("A", [1.0, 0.0]), ("B", [0.0, 1.0]), ("C", [1.0, 0.0])]
    test = [("u1", "Q"), ("u2", "Q")]
    rows = [
        ("orth", "u1", "A", 1), ("orth", "u1", "B", 2),
        ("same", "u1", "A", 1), ("same", "u1", "C", 2),
        ("three", "u1", "A", 1), ("three", "u1", "B", 2), ("three", "u1", "C", 3),
        ("three", "u2", "D", 1), ("three", "u2", "A", 2),  # one vector only: no diversity
    ]  # fmt: skip
    got, per_user = run(spark, rows, test, categories=categories, vectors=vectors)
    assert got["orth"].intra_list_diversity == pytest.approx(1.0)  # 1 - cos = 1 - 0
    assert got["same"].intra_list_diversity == pytest.approx(0.0)  # 1 - 1
    # pairs AB 1, AC 0, BC 1 -> 2/3; u2's list does not count
    assert got["three"].intra_list_diversity == pytest.approx(2 / 3)
    # orth: A, B both mugs -> 1; same: mugs, lamps -> 2
    assert got["orth"].category_width == pytest.approx(1.0)
    assert got["same"].category_width == pytest.approx(2.0)
    # three: u1 {mugs, lamps} = 2, u2 {rugs, mugs} = 2 -> 2
    assert got["three"].category_width == pytest.approx(2.0)
    widths = {(r.method, r.user_id): (r.category_width, r.hits) for r in per_user.collect()}
    assert widths == {
        ("orth", "u1"): (1, 0),
        ("same", "u1"): (2, 0),
        ("three", "u1"): (2, 0),
        ("three", "u2"): (2, 0),
    }


def test_novelty_coverage_reason_share_ignore_users_outside_the_test_set(spark):
    # 3 distinct train buyers; A bought by all 3 (p1 twice), B by p1 only, Z never
    train = [("p1", "A"), ("p1", "A"), ("p2", "A"), ("p3", "A"), ("p1", "B")]
    test = [("u1", "A"), ("u2", "Q")]
    rows = [
        ("m", "u1", "A", 1, True), ("m", "u1", "B", 2, False),
        ("m", "u2", "Z", 1, False), ("m", "u2", "A", 2, False),
        # outside U: would change every number below
        ("m", "outsider", "W", 1, True), ("m", "outsider", "V", 2, True),
    ]  # fmt: skip
    m = run(spark, rows, test, train=train, catalog_size=10)[0]["m"]
    # N = 3: A -log2(4/4) = 0, B -log2(2/4) = 1, Z -log2(1/4) = 2; rows A, B, Z, A -> 3 / 4
    assert m.novelty == pytest.approx(0.75)
    # distinct items A, B, Z out of 10
    assert m.coverage == pytest.approx(0.3)
    # 1 of 4 rows has a reason
    assert m.reason_share == pytest.approx(0.25)
    assert m.recall == pytest.approx(0.5)  # u1 1/1, u2 0/1
    assert m.users == 2 and m.users_with_list == pytest.approx(1.0)
