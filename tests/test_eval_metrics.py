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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_novelty_and_reason_share_are_means_over_lists(spark):
    # 3 distinct train buyers; A bought by all 3, B by p1 only, Z never
    train = [("p1", "A"), ("p2", "A"), ("p3", "A"), ("p1", "B")]
    test = [("u1", "A"), ("u2", "Q")]
    rows = [("m", "u1", "A", 1, True), ("m", "u1", "B", 2, False), ("m", "u2", "Z", 1, True)]
    m = run(spark, rows, test, train=train)[0]["m"]
    # A 0, B 1, Z 2 bits: u1 (0 + 1) / 2 = 0.5, u2 2 -> (0.5 + 2) / 2 = 1.25 (not 3 / 3 over rows)
    assert m.novelty == pytest.approx(1.25)
    # u1 1/2, u2 1/1 -> 0.75 (not 2/3 over rows)
    assert m.reason_share == pytest.approx(0.75)


CATEGORIES_SCHEMA = "item_id string, leaf_category string"
VECTORS_SCHEMA = "item_id string, vector array<float>"


def frames(spark, rec_rows, test, history=(), categories=(), vectors=(), train=()):
    """The inputs of ``per_user`` (everything but ``ks``)."""
    return (
        recs(spark, rec_rows),
        pairs(spark, list(test)),
        pairs(spark, list(history)),
        spark.createDataFrame(list(categories), CATEGORIES_SCHEMA),
        spark.createDataFrame(list(vectors), VECTORS_SCHEMA),
        pairs(spark, list(train)),
    )


def by_user(per_user_df):
    """{(method, user_id, k): row}"""
    return {(r.method, r.user_id, r.k): r for r in per_user_df.collect()}


def test_repeat_and_explore_breakdown(spark):
    categories = [("A", "mugs"), ("B", "mugs"), ("X", "mugs"), ("C", "lamps"), ("E", "lamps"), ("D", "rugs")]
    history = [("u1", "A"), ("u2", "D"), ("u3", "A")]
    test = [
        ("u1", "A"),  # repeat item
        ("u1", "B"),  # new item, known category (mugs)
        ("u1", "C"),  # new item, new category (lamps)
        ("u2", "D"),  # repeat item only
        ("u3", "C"),  # new item, new category only
    ]  # fmt: skip
    rows = [
        # u1: A (history, mugs), X (mugs), C (lamps, new), E (lamps, new), F (no category)
        ("m", "u1", "A", 1), ("m", "u1", "X", 2), ("m", "u1", "C", 3), ("m", "u1", "E", 4), ("m", "u1", "F", 5),
        ("m", "u2", "B", 1),  # mugs: new to u2, a miss
        ("m", "u3", "B", 1),  # mugs: known to u3, a miss
    ]  # fmt: skip
    got = by_user(metrics.per_user(*frames(spark, rows, test, history, categories), ks=[20]))

    u1 = got[("m", "u1", 20)]
    assert u1.n_test == 3
    assert u1.recall == pytest.approx(2 / 3)  # A and C hit, B missed
    assert u1.recall_repeat == pytest.approx(1.0)  # repeat test items {A}: A hit
    assert u1.recall_new_item == pytest.approx(0.5)  # new items {B, C}: C hit
    assert u1.recall_new_category == pytest.approx(1.0)  # new-category items {C}: C hit
    assert (u1.new_item_hit, u1.new_category_hit) == (1.0, 1.0)
    assert u1.list_length == 5.0 and u1.has_list == 1.0
    assert u1.repeat_share == pytest.approx(0.2)  # A of 5 items
    assert u1.discovery_slots == 2.0  # C and E (lamps); X, A mugs are known, F has no category
    assert u1.discovery_precision == pytest.approx(0.5)  # 1 new-category hit (C) / 2 slots
    assert u1.category_width == 2.0  # mugs, lamps

    u2 = got[("m", "u2", 20)]
    assert u2.recall == 0.0 and u2.recall_repeat == 0.0  # D not listed
    # no new test item, no new-category test item: not eligible
    assert u2.recall_new_item is None and u2.recall_new_category is None
    assert u2.new_item_hit is None and u2.new_category_hit is None
    assert u2.repeat_share == 0.0  # B is not in u2's history
    assert u2.discovery_slots == 1.0 and u2.discovery_precision == 0.0  # B (mugs new to u2), a miss

    u3 = got[("m", "u3", 20)]
    assert u3.recall_repeat is None  # no repeat test item
    assert (u3.recall_new_item, u3.recall_new_category) == (0.0, 0.0)
    assert (u3.new_item_hit, u3.new_category_hit) == (0.0, 0.0)
    assert u3.discovery_slots == 0.0 and u3.discovery_precision is None  # B: mugs known to u3


def test_several_k_in_one_pass(spark):
    test = [("u1", "A"), ("u1", "B"), ("u1", "C")]
    rows = [
        ("m", "u1", "A", 1, True), ("m", "u1", "X", 2, False), ("m", "u1", "B", 3, False),
        ("m", "u1", "B", 5, True),  # again: counts once, at 3 (without a reason)
        ("m", "u1", "C", 6, False),  # beyond every k
    ]  # fmt: skip
    got = by_user(metrics.per_user(*frames(spark, rows, test), ks=[1, 2, 5]))
    at1, at2, at5 = (got[("m", "u1", k)] for k in (1, 2, 5))
    # k=1: {A}; 1 of 3 hit; DCG 1/log2(2) = 1, IDCG over min(3, 1) = 1 item = 1
    assert (at1.recall, at1.hit, at1.ndcg, at1.list_length) == (
        pytest.approx(1 / 3),
        1.0,
        pytest.approx(1.0),
        1.0,
    )
    # k=2: {A, X}; DCG 1, IDCG 1 + 1/log2(3)
    assert at2.recall == pytest.approx(1 / 3) and at2.hit == 1.0 and at2.list_length == 2.0
    assert at2.ndcg == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # k=5: {A, X, B}; DCG 1 + 1/log2(4) = 1.5, IDCG 1 + 1/log2(3) + 1/log2(4)
    assert at5.recall == pytest.approx(2 / 3) and at5.hit == 1.0 and at5.list_length == 3.0
    assert at5.ndcg == pytest.approx(1.5 / (1.5 + 1 / math.log2(3)))
    # reasons: A yes, X no, B no (its best position) -> 1/1, 1/2, 1/3
    assert [r.reason_share for r in (at1, at2, at5)] == pytest.approx([1.0, 0.5, 1 / 3])


@pytest.mark.slow
def test_a_user_without_a_list_gets_rows_at_every_k(spark):
    test = [("u1", "A"), ("u2", "B")]
    rows = [("m", "u1", "A", 1), ("lost", "outsider", "A", 1)]
    categories = [("A", "mugs"), ("B", "mugs")]
    inputs = frames(spark, rows, test, categories=categories)
    table = metrics.per_user(*inputs, ks=[3, 1]).cache()  # cached: summarize reads it again
    assert table.columns == ["method", "user_id", "k", "n_test", *metrics.PER_USER_METRICS]
    types = dict(table.dtypes)
    assert [types[c] for c in ("method", "user_id", "k", "n_test")] == ["string", "string", "int", "int"]
    assert {types[m] for m in metrics.PER_USER_METRICS} == {"double"}
    got = by_user(table)
    # every (method, user of U, k): methods m, lost x users u1, u2 x ks 1, 3
    assert sorted(got) == [(m, u, k) for m in ("lost", "m") for u in ("u1", "u2") for k in (1, 3)]
    for key in [("m", "u2", 1), ("m", "u2", 3), ("lost", "u1", 1), ("lost", "u1", 3)]:
        row = got[key]
        assert (row.recall, row.hit, row.ndcg, row.list_length, row.has_list, row.discovery_slots) == (0,) * 6
        for name in (
            "repeat_share", "discovery_precision", "category_width", "intra_list_diversity", "novelty", "reason_share",
        ):  # fmt: skip
            assert getattr(row, name) is None, (key, name)
    summary = {(r.method, r.k): r for r in metrics.summarize(table, inputs[0], 10, [1, 3]).collect()}
    for k in (1, 3):
        # u1 1/1, u2 0 -> 0.5; only u1 has a list (width 1)
        m = summary[("m", k)]
        assert (m.recall, m.has_list, m.category_width, m.coverage, m.users) == (0.5, 0.5, 1.0, 0.1, 2)
        lost = summary[("lost", k)]
        assert (lost.recall, lost.hit, lost.has_list, lost.coverage, lost.users) == (0, 0, 0, 0, 2)
        assert lost.novelty is None and lost.category_width is None
    table.unpersist()


@pytest.mark.slow
def test_summary_is_the_mean_of_the_per_user_table(spark):
    categories = [("A", "mugs"), ("B", "mugs"), ("C", "lamps"), ("D", "rugs"), ("E", "lamps")]
    vectors = [("A", [1.0, 0.0]), ("B", [0.0, 1.0]), ("C", [0.6, 0.8]), ("D", [1.0, 0.0])]
    train = [("p1", "A"), ("p2", "A"), ("p1", "B"), ("p3", "C")]
    history = [("u1", "A"), ("u2", "D"), ("u3", "B")]
    test = [("u1", "A"), ("u1", "C"), ("u2", "B"), ("u3", "E"), ("u4", "D")]  # u4: no history, no list
    rows = [
        ("m1", "u1", "A", 1, True), ("m1", "u1", "B", 2), ("m1", "u1", "C", 3), ("m1", "u1", "E", 4, True),
        ("m1", "u2", "B", 1), ("m1", "u2", "D", 2, True),
        ("m1", "u3", "C", 1), ("m1", "u3", "E", 2), ("m1", "u3", "F", 3, True),
        ("m1", "outsider", "Z", 1),
        ("m2", "u1", "C", 1, True),
        ("m2", "u2", "D", 1), ("m2", "u2", "A", 2), ("m2", "u2", "B", 3),
        ("m2", "outsider", "Q", 1),
    ]  # fmt: skip
    inputs = frames(spark, rows, test, history, categories, vectors, train)
    table = metrics.per_user(*inputs, ks=[2, 4]).cache()  # cached: summarize reads it again
    expected = table.toPandas().groupby(["method", "k"])[list(metrics.PER_USER_METRICS)].mean()
    summary = metrics.summarize(table, inputs[0], 10, [2, 4])
    assert summary.columns == ["method", "k", *metrics.PER_USER_METRICS, "coverage", "users"]
    got = {(r.method, r.k): r for r in summary.collect()}
    assert sorted(got) == [("m1", 2), ("m1", 4), ("m2", 2), ("m2", 4)]
    for key, row in got.items():
        for name in metrics.PER_USER_METRICS:
            want = expected.loc[key, name]
            if math.isnan(want):
                assert getattr(row, name) is None, (key, name)
            else:
                assert getattr(row, name) == pytest.approx(want, rel=0, abs=1e-12), (key, name)
        assert row.users == 4
    # coverage, users of U only (Z, Q are the outsider's), over 10:
    # m1 k=2: u1 {A, B}, u2 {B, D}, u3 {C, E} -> 5; k=4: + u1 C, E, u3 F -> 6
    # m2 k=2: u1 {C}, u2 {D, A} -> 3; k=4: + u2 B -> 4
    coverage = {key: row.coverage for key, row in got.items()}
    assert coverage == pytest.approx({("m1", 2): 0.5, ("m1", 4): 0.6, ("m2", 2): 0.3, ("m2", 4): 0.4})
    table.unpersist()


def test_bad_arguments_raise_value_error(spark):
    inputs = frames(spark, [("m", "u1", "A", 1)], [("u1", "A")])
    table = metrics.per_user(*inputs, ks=[1])
    for ks in ([], [0, 5]):
        with pytest.raises(ValueError, match="k"):
            metrics.per_user(*inputs, ks=ks)
        with pytest.raises(ValueError, match="k"):
            metrics.summarize(table, inputs[0], 10, ks)
    with pytest.raises(ValueError, match="catalog_size"):
        metrics.summarize(table, inputs[0], 0, [1])
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.evaluate(*inputs, catalog_size=10, k=0)
