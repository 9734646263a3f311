"""jobs/u2q.py and the u2q agent: candidates, co-purchase, heuristic queries, the check."""

from __future__ import annotations

import json

import pytest

from jobs import u2q as uj
from udfs.agents import u2q
from udfs.llm.agent import AnswerError, parse_answer

UC_SCHEMA = "user_id string, leaf_category string"


def test_category_copurchase_shares_with_minimum_support(spark):
    uc = spark.createDataFrame(
        [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")], UC_SCHEMA
    )
    got = {
        (r.from_category, r.category): round(r.buyers_share, 4)
        for r in uj.category_copurchase(uc, 2).collect()
    }
    # a -> b: 2 of a's 3 buyers; b -> a: both of b's buyers; a -> c has 1 buyer only
    assert got == {("a", "b"): 0.6667, ("b", "a"): 1.0}


def test_exploration_picks_adjacent_categories_the_user_never_touched(spark):
    portraits = spark.createDataFrame(
        [("u4", [{"category": "a", "share": 0.8}, {"category": "d", "share": 0.2}])],
        "user_id string, main_categories array<struct<category:string,share:double>>",
    )
    uc = spark.createDataFrame([("u4", "a"), ("u4", "d"), ("u4", "e")], UC_SCHEMA)
    co = spark.createDataFrame(
        [("a", "b", 0.5), ("a", "e", 0.9), ("d", "b", 0.9), ("a", "c", 0.25), ("a", "other", 0.99)],
        "from_category string, category string, buyers_share double",
    )
    factors = spark.createDataFrame([("b", ["red", "owl"])], "category string, factors array<string>")
    phrases = spark.createDataFrame([("b", "owl lunch bag")], "category string, phrase string")
    [row] = uj.exploration_candidates(portraits, uc, co, factors, 2, ("other",), phrases).collect()
    got = [(e.category, e.from_category, e.buyers_share, list(e.factors), e.phrase) for e in row.exploration]
    # b: max(0.8 x 0.5 from a, 0.2 x 0.9 from d) = 0.4 via a; c: 0.8 x 0.25 = 0.2; e is the user's own
    assert got == [("b", "a", 0.5, ["red", "owl"], "owl lunch bag"), ("c", "a", 0.25, [], None)]


def agent_row(**over):
    row = {
        "buyer_type": "general gift shop",
        "summary": "A gift shop.",
        "personal_json": json.dumps(
            [
                {"category": "bags", "share": 0.34, "long_term": [{"factor": "jumbo", "weight": 10}],
                 "recent": [{"factor": "retrospot", "weight": 10}], "potential": [{"factor": "paisley", "weight": 10}]},
                {"category": "lighting", "share": 0.13, "long_term": [{"factor": "red", "weight": 10}],
                 "recent": [], "potential": []},
            ]
        ),
        "trend_json": json.dumps(
            [{"trend_query_id": "t1", "query": "easter candles 2012 trend", "category": "candles",
              "selling_points": ["easter theme"], "growth": 10.9}]
        ),
        "exploration_json": json.dumps(
            [{"category": "cards and wrap", "from_category": "bags", "buyers_share": 0.77, "factors": ["vintage"]}]
        ),
    }  # fmt: skip
    row.update(over)
    return row


CTX = {"counts": {"personal": 3, "trend": 2, "exploration": 2}}


def test_heuristic_queries_of_three_kinds_with_reasons():
    got = [(q.kind, q.query, q.category) for q in u2q.heuristic(agent_row(), CTX).queries]
    assert got == [
        ("personal", "retrospot jumbo bags", "bags"),
        ("personal", "red lighting", "lighting"),
        ("personal", "paisley bags", "bags"),
        ("trend", "easter candles 2012 trend", "candles"),
        ("exploration", "vintage cards and wrap", "cards and wrap"),
    ]
    reasons = [q.reason for q in u2q.heuristic(agent_row(), CTX).queries]
    assert reasons[0] == "You buy bags (34% of your spend), choosing retrospot, jumbo"
    assert reasons[4] == "New for you: 77% of bags buyers also buy cards and wrap"


def test_heuristic_exploration_query_is_the_categorys_phrase():
    explore = [
        {"category": "cards and wrap", "from_category": "bags", "buyers_share": 0.77, "factors": ["vintage"],
         "phrase": "vintage christmas wrap"},
        {"category": "toys", "from_category": "bags", "buyers_share": 0.5, "factors": [], "phrase": None},
    ]  # fmt: skip
    got = u2q.heuristic(agent_row(exploration_json=json.dumps(explore)), CTX).queries
    # the phrase of the category's busiest items; without one (no title words, no factor) the category
    assert [(q.query, q.category) for q in got if q.kind == "exploration"] == [
        ("vintage christmas wrap", "cards and wrap"), ("toys", "toys"),
    ]  # fmt: skip


def test_heuristic_for_a_user_with_no_history_is_empty_not_an_error():
    row = agent_row(personal_json="[]", trend_json="[]", exploration_json="[]")
    assert u2q.heuristic(row, CTX).queries == []


def test_check_rejects_foreign_categories_and_too_many_of_a_kind():
    ok = {"kind": "exploration", "query": "vintage cards", "category": "cards and wrap", "reason": "new"}
    assert parse_answer(json.dumps({"queries": [ok]}), u2q.AGENT, agent_row(), CTX).queries[0].category
    foreign = {**ok, "category": "bags"}  # a personal category used for exploration
    with pytest.raises(AnswerError, match="not a candidate"):
        parse_answer(json.dumps({"queries": [foreign]}), u2q.AGENT, agent_row(), CTX)
    three = [{**ok, "query": f"vintage cards {i}"} for i in range(3)]
    with pytest.raises(AnswerError, match="at most 2"):
        parse_answer(json.dumps({"queries": three}), u2q.AGENT, agent_row(), CTX)
