"""jobs/rank.py: components, one row per item, bought handling, per-category cap, top-K."""

from __future__ import annotations

import pytest

from jobs import rank
from jobs.config import RankConf

CAND_SCHEMA = (
    "user_id string, query_id string, kind string, item_id string, leaf_category string, "
    "relevance double, cfv_match double, price_match double"
)


def cands(spark, rows):
    return spark.createDataFrame(rows, CAND_SCHEMA)


def pairs(spark, rows, cols="user_id string, leaf_category string"):
    return spark.createDataFrame(rows, cols)


def test_components_discovery_personalisation_and_trend(spark):
    c = cands(
        spark,
        [
            ("u", "q1", "personal", "A", "mugs", 0.8, 1.0, 1.0),  # known category, item touched
            ("u", "q1", "personal", "B", "mugs", 0.7, 0.5, 0.0),  # known category, new item
            ("u", "q2", "trend", "C", "lamps", 0.6, 0.0, 0.0),  # new category
        ],
    )
    known = pairs(spark, [("u", "mugs")])
    touched = pairs(spark, [("u", "A")], "user_id string, item_id string")
    got = {r.item_id: r for r in rank.components(c, known, touched).collect()}
    assert got["A"].discovery == 0.0 and got["B"].discovery == 0.5 and got["C"].discovery == 1.0
    assert got["A"].personalisation == pytest.approx(1.0) and got["B"].personalisation == pytest.approx(0.35)
    assert (got["A"].trend, got["C"].trend) == (0.0, 1.0)


def scored_rows(spark, rows, rc, bought=()):
    c = cands(spark, rows)
    comp = rank.components(
        c, pairs(spark, [("u", "mugs")]), pairs(spark, [], "user_id string, item_id string")
    )
    b = spark.createDataFrame(list(bought), "user_id string, item_id string")
    return rank.top_k(rank.score(comp, rc, b), rc).orderBy("user_id", "position").collect()


def test_an_item_found_by_two_queries_is_ranked_once_with_its_best_query(spark):
    rc = RankConf(weights={"relevance": 1.0, "personalisation": 0.0, "discovery": 0.0, "trend": 0.5})
    rows = [
        ("u", "q1", "personal", "A", "mugs", 0.9, 0.0, 0.0),  # 0.9
        ("u", "q2", "trend", "A", "mugs", 0.5, 0.0, 0.0),  # 0.5 + 0.5 = 1.0: the better one
        ("u", "q1", "personal", "B", "mugs", 0.8, 0.0, 0.0),
    ]
    got = scored_rows(spark, rows, rc)
    assert [(r.item_id, r.query_id, r.position) for r in got] == [("A", "q2", 1), ("B", "q1", 2)]
    assert got[0].score == pytest.approx(1.0)


def test_bought_items_excluded_demoted_or_kept(spark):
    rows = [
        ("u", "q", "personal", "A", "mugs", 0.9, 0.0, 0.0),
        ("u", "q", "personal", "B", "mugs", 0.6, 0.0, 0.0),
    ]
    w = {"relevance": 1.0, "personalisation": 0.0, "discovery": 0.0, "trend": 0.0}
    bought = [("u", "A")]
    excl = scored_rows(spark, rows, RankConf(weights=w, bought="exclude"), bought)
    assert [r.item_id for r in excl] == ["B"]
    demoted = scored_rows(spark, rows, RankConf(weights=w, bought="demote", bought_factor=0.5), bought)
    assert [(r.item_id, round(r.score, 3), r.bought) for r in demoted] == [
        ("B", 0.6, False),
        ("A", 0.45, True),
    ]
    kept = scored_rows(spark, rows, RankConf(weights=w, bought="keep"), bought)
    assert [r.item_id for r in kept] == ["A", "B"]


def test_per_category_cap_and_top_k(spark):
    w = {"relevance": 1.0, "personalisation": 0.0, "discovery": 0.0, "trend": 0.0}
    rows = [("u", "q", "personal", f"M{i}", "mugs", 0.9 - i / 100, 0.0, 0.0) for i in range(5)]
    rows += [("u", "q", "personal", f"L{i}", "lamps", 0.5 - i / 100, 0.0, 0.0) for i in range(3)]
    rows += [("v", "q9", "personal", "M0", "mugs", 0.1, 0.0, 0.0)]
    got = scored_rows(spark, rows, RankConf(weights=w, max_per_category=2, top_k=3))
    assert [(r.user_id, r.item_id) for r in got] == [("u", "M0"), ("u", "M1"), ("u", "L0"), ("v", "M0")]


def test_a_user_without_history_gets_discovery_everywhere(spark):
    c = cands(spark, [("new", "q", "exploration", "A", "mugs", 0.5, 0.0, 0.0)])
    empty_cats = pairs(spark, [("u", "mugs")])  # another user's history only
    got = rank.components(c, empty_cats, pairs(spark, [], "user_id string, item_id string")).collect()
    assert [(r.user_id, r.discovery, r.personalisation) for r in got] == [("new", 1.0, 0.0)]


def test_popularity_is_log_buyers_over_the_most_bought_and_lifts_the_score(spark):
    bought = spark.createDataFrame(
        [("u1", "A"), ("u2", "A"), ("u3", "A"), ("u1", "B")], "user_id string, item_id string"
    )
    pop = {r.item_id: r.popularity for r in rank.item_popularity(bought).collect()}
    # A: 3 buyers -> log(4)/log(4) = 1; B: 1 buyer -> log(2)/log(4) = 0.5
    assert pop == {"A": pytest.approx(1.0), "B": pytest.approx(0.5)}
    c = cands(spark, [("u", "q", "personal", i, "mugs", 0.5, 0.0, 0.0) for i in ("A", "B", "C")])
    comp = rank.components(
        c, pairs(spark, [("u", "mugs")]), pairs(spark, [], "user_id string, item_id string"),
        rank.item_popularity(bought),
    )  # fmt: skip
    rc = RankConf(
        weights={"relevance": 1.0, "personalisation": 0.0, "discovery": 0.0, "trend": 0.0, "popularity": 0.4}
    )
    none = spark.createDataFrame([], "user_id string, item_id string")
    got = {r.item_id: r.score for r in rank.score(comp, rc, none).collect()}
    # 0.5 + 0.4 x (1, 0.5, 0: C was never bought)
    assert got == {"A": pytest.approx(0.9), "B": pytest.approx(0.7), "C": pytest.approx(0.5)}
