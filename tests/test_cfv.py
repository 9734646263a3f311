"""jobs/cfv.py: gold.cfv (long-term, recent, potential) and the cfv_potential agent.

A tiny warehouse, run date 2011-12-09, half-lives 10 days (long term) and 5 days (recent),
default event weights (purchase 5, click 1). Every expected value is worked out by hand
in the comments.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from core import tables
from core.config import load_config
from jobs import cfv as cfv_job
from testing import answers
from testing.scripted_server import ScriptedLLMServer
from udfs.agents import cfv_potential as cp
from udfs.llm.agent import AnswerError, parse_answer

EVENTS_SCHEMA = (
    "event_id string, user_id string, item_id string, event_type string, ts timestamp, dt date, "
    "query string, quantity long, amount double, order_id string, source string, extras map<string,string>"
)
CATS_SCHEMA = "item_id string, title string, leaf_category string, category_source string"
PROFILES_SCHEMA = "item_id string, decision_factors array<struct<kind:string,value:string>>"
RUN_DATE = dt.date(2011, 12, 9)
C, M = "candles and holders", "mugs and cups"


def ev(eid, user, item, kind, age_days):
    day = RUN_DATE - dt.timedelta(days=age_days)
    ts = dt.datetime.combine(day, dt.time(10))
    return (eid, user, item, kind, ts, day, None, 1, 1.0, f"o{eid}", "test", {})


def f(*pairs):
    return [{"kind": k, "value": v} for k, v in pairs]


ITEMS = [  # item, category, factors
    ("A", C, f(("colour", "red"), ("theme", "heart"), ("price_band", "mid"))),
    ("B", C, f(("colour", "white"), ("theme", "heart"))),
    ("D", C, f(("colour", "black"), ("material", "glass"))),
    ("E", C, f(("colour", "white"), ("pattern", "floral"))),
    ("M1", M, f(("colour", "red"), ("material", "enamel"))),
]
EVENTS = [
    # u1: candles A bought today, B clicked 10 days ago and bought 20 days ago; a search
    # (no item); mugs M1 bought today.
    ev("1", "u1", "A", "purchase", 0),
    ev("2", "u1", "B", "click", 10),
    ev("3", "u1", "B", "purchase", 20),
    ev("4", "u1", None, "search", 1),
    ev("5", "u1", "M1", "purchase", 0),
    # u2, u3: A and E today. u4: A and D today.
    ev("6", "u2", "A", "purchase", 0),
    ev("7", "u2", "E", "purchase", 0),
    ev("8", "u3", "A", "purchase", 0),
    ev("9", "u3", "E", "purchase", 0),
    ev("10", "u4", "A", "purchase", 0),
    ev("11", "u4", "D", "purchase", 0),
    # u5: only a purchase 30 days ago (outside the recent window), and one 400 days ago
    # (outside the long-term window).
    ev("12", "u5", "M1", "purchase", 30),
    ev("13", "u5", "A", "purchase", 400),
    # after the run date: ignored
    ev("14", "u1", "D", "purchase", -1),
]


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cfv") / "warehouse"
    base = [
        f"storage.root={root}",
        "spark.shuffle_partitions=2",
        f"run.date={RUN_DATE}",
        "cfv.half_life_days={long_term: 10.0, recent: 5.0}",
    ]

    def make(overrides=()):
        return load_config(overrides=base + list(overrides))

    conf = make()
    tables.overwrite(spark.createDataFrame(EVENTS, EVENTS_SCHEMA), conf, "bronze.events")
    tables.overwrite(
        spark.createDataFrame([(i, i, c, "catalog") for i, c, _ in ITEMS], CATS_SCHEMA),
        conf,
        "silver.item_categories",
    )
    tables.overwrite(
        spark.createDataFrame([(i, fs) for i, _, fs in ITEMS], PROFILES_SCHEMA), conf, "silver.item_profiles"
    )
    return make


def cfv_rows(spark, conf):
    return {
        (r["user_id"], r["leaf_category"], r["horizon"]): r
        for r in tables.read(spark, conf, cfv_job.CFV).collect()
    }


@pytest.fixture(scope="module")
def heuristic_rows(spark, warehouse):
    conf = warehouse()
    counts = cfv_job.run(spark, conf)
    return counts, cfv_rows(spark, conf)


def test_long_term_decay_weights_and_text(heuristic_rows):
    _, rows = heuristic_rows
    u1 = rows[("u1", C, "long_term")]
    # heart: A purchase 5 * 0.5^0 + B click 1 * 0.5^(10/10) + B purchase 5 * 0.5^(20/10) = 6.75
    # red: 5; white: 0.5 + 1.25 = 1.75; price_band left out.
    # weights: 10, round(10 * 5 / 6.75) = 7, round(10 * 1.75 / 6.75) = 3
    assert u1["cfv_text"] == "heart:10|red:7|white:3"
    assert [(x["factor"], x["weight"]) for x in u1["factors"]] == [("heart", 10), ("red", 7), ("white", 3)]
    assert u1["as_of"] == RUN_DATE and u1["source"] == "heuristic" and u1["status"] == "heuristic"
    # Ties rank by value: enamel and red both 5.
    assert rows[("u1", M, "long_term")]["cfv_text"] == "enamel:10|red:10"
    # u5: the 400-day-old purchase is outside the long-term window.
    assert ("u5", C, "long_term") not in rows
    # The event after the run date (u1 buys D) counts nowhere.
    assert "black" not in rows[("u1", C, "long_term")]["cfv_text"]


def test_recent_excludes_old_events(heuristic_rows):
    _, rows = heuristic_rows
    # 14-day window: the B purchase 20 days ago is out. heart 5 + 1 * 0.5^(10/5) = 5.25,
    # red 5, white 0.25 -> 10, round(9.52) = 10, round(0.48) = 0 -> at least 1.
    assert rows[("u1", C, "recent")]["cfv_text"] == "heart:10|red:10|white:1"
    assert rows[("u5", M, "long_term")]["cfv_text"] == "enamel:10|red:10"
    assert ("u5", M, "recent") not in rows


def test_potential_cooccurring_factor_the_user_lacks(heuristic_rows):
    counts, rows = heuristic_rows
    # u1's seeds heart (10), red (7), white (3). floral appears with each of them in u2's
    # and u3's CFV (support 2, weight 10 each): cooc 20. Score 1.0*20 + 0.7*20 + 0.3*20.
    # black and glass appear with them only for u4 (support 1 < 2).
    assert rows[("u1", C, "potential")]["cfv_text"] == "floral:10"
    # u4 (black, glass, heart, red all 10; seeds black, glass, heart): white with heart in
    # u1 (3), u2 (10), u3 (10) = 23; floral with heart in u2, u3 = 20; black and glass have
    # no partner with support 2. Weights 10, round(10 * 20 / 23) = 9.
    assert rows[("u4", C, "potential")]["cfv_text"] == "white:10|floral:9"
    # u2 and u3 have every factor with support >= 2 already.
    assert ("u2", C, "potential") not in rows and ("u3", C, "potential") not in rows
    assert rows[("u4", C, "potential")]["prompt_version"] == cfv_job.COOC_VERSION
    assert counts == {"long_term": 6, "recent": 5, "potential": 2, "failed": 0}


def test_potential_never_returns_a_factor_the_user_has(heuristic_rows):
    _, rows = heuristic_rows
    for (user, cat, horizon), r in rows.items():
        if horizon == "potential":
            own = {x["factor"] for x in rows[(user, cat, "long_term")]["factors"]}
            assert own.isdisjoint(x["factor"] for x in r["factors"]), (user, cat)


def test_min_support_one_admits_single_buyer_pairs(spark, warehouse):
    conf = warehouse(["cfv.potential_min_support=1"])
    rows, _ = cfv_job.compute(spark, conf, RUN_DATE)
    got = {
        r["user_id"]: r["cfv_text"]
        for r in rows.filter("horizon = 'potential' and leaf_category = 'candles and holders'").collect()
    }
    # black: with heart (u4: 10) + 0.7 * with red (u4: 10) = 17; glass the same; floral 40.
    # round(10 * 17 / 40) = 4.
    assert got["u1"] == "floral:10|black:4|glass:4"


def test_idempotent_rerun(spark, warehouse, heuristic_rows):
    conf = warehouse()
    _, before = heuristic_rows
    cfv_job.run(spark, conf)
    after = cfv_rows(spark, conf)
    assert {k: r.asDict(recursive=True) for k, r in after.items()} == {
        k: r.asDict(recursive=True) for k, r in before.items()
    }


# --- the agent ----------------------------------------------------------------------------


def agent_row(**over):
    row = {
        "leaf_category": C,
        "long_term_json": json.dumps([{"factor": "heart", "weight": 10}]),
        "recent_json": "[]",
        "vocabulary_json": json.dumps([{"factor": "heart", "buyers": 4}, {"factor": "floral", "buyers": 2}]),
        "user_factors_json": json.dumps(["heart", "red"]),
        "heuristic_json": json.dumps([{"factor": "floral", "weight": 10}]),
    }
    row.update(over)
    return row


def test_agent_check_rejects_own_and_unknown_factors():
    ctx = {"max_factors": 2}
    ok = parse_answer('{"factors": [{"factor": "floral", "weight": 8}]}', cp.AGENT, agent_row(), ctx)
    assert [(x.factor, x.weight) for x in ok.factors] == [("floral", 8)]
    for answer, needle in [
        ('{"factors": [{"factor": "heart", "weight": 8}]}', "already"),
        ('{"factors": [{"factor": "red", "weight": 8}]}', "already"),  # touched, not in the vocabulary
        ('{"factors": [{"factor": "tartan", "weight": 8}]}', "not one of the candidate"),
        ('{"factors": [{"factor": "floral", "weight": 8}, {"factor": "floral", "weight": 7}]}', "repeated"),
    ]:
        with pytest.raises(AnswerError, match=needle) as e:
            parse_answer(answer, cp.AGENT, agent_row(), ctx)
        assert e.value.kind == "out_of_vocabulary"
    # The prompt offers only candidates the user lacks.
    assert cp.template_values(agent_row(), ctx)["candidates"] == "floral:2"


@pytest.mark.slow
def test_llm_potential_and_fallback_for_rejected_answers(spark, warehouse, heuristic_rows):
    _, heuristic = heuristic_rows

    def responder(body):
        user = body["messages"][1]["content"]
        if "heart:10|red:7|white:3" in user:  # u1's candles: answers a factor u1 has
            return '{"factors": [{"factor": "heart", "weight": 9}]}'
        return answers.cfv_potential(body)

    with ScriptedLLMServer(responder=responder) as server:
        conf = warehouse(
            [
                "llm.agents.cfv_potential.backend=openai",
                f"llm.endpoints.default.base_url={server.base_url}",
                "llm.endpoints.default.api_key_env=null",
                "llm.endpoints.default.model=scripted-cfv",
                "llm.runtime.max_retries=0",
                "llm.runtime.backoff_initial_s=0",
            ]
        )
        rows, cached = cfv_job.compute(spark, conf, RUN_DATE)
        got = {(r["user_id"], r["leaf_category"]): r for r in rows.filter("horizon = 'potential'").collect()}
        for df in cached:
            df.unpersist()
    # u1 candles: rejected twice (answer + repair) -> the heuristic's factors, status failed.
    u1 = got[("u1", C)]
    assert u1["status"] == "failed" and u1["error_class"] == "out_of_vocabulary"
    assert u1["cfv_text"] == heuristic[("u1", C, "potential")]["cfv_text"] == "floral:10"
    assert u1["source"] == "heuristic" and u1["prompt_version"] == cfv_job.COOC_VERSION
    # u4 candles: vocabulary by buyers heart 4, red 4, white 3, floral 2, black 1, glass 1;
    # u4 has black, glass, heart, red -> candidates white, floral -> weights 10, 9.
    u4 = got[("u4", C)]
    assert u4["status"] == "ok" and u4["source"] == "scripted-cfv" and u4["prompt_version"] == "v1"
    assert u4["cfv_text"] == "white:10|floral:9"
    # u2 candles: the model is not bound by the heuristic's min support: candidates black 1,
    # glass 1 (u2 has heart, red, white, floral).
    assert got[("u2", C)]["cfv_text"] == "black:10|glass:9"
    # u1 mugs: every factor of the category (enamel, red) is u1's -> empty answer -> no row.
    assert ("u1", M) not in got


def test_scores_equal_but_for_the_order_of_addition_tie_and_round_alike(spark):
    """0.6 and 0.1 + 0.2 + 0.3 (0.6000000000000001) are one score: the tie goes to the
    smaller value; 0.7 - 0.55 (0.1499999999999999) is a quarter of 0.6, so its weight is
    round(2.5) = 3. Summed in another order (other input files), the same events must give
    the same CFV."""
    rows = [
        ("u1", "cups", "b", 0.1 + 0.2 + 0.3),
        ("u1", "cups", "a", 0.6),
        ("u1", "cups", "c", 0.7 - 0.55),
    ]
    scored = spark.createDataFrame(rows, "user_id string, leaf_category string, factor string, score double")
    got = [
        (r["factor"], r["rank"], r["weight"])
        for r in cfv_job.top_factors(scored, 3).orderBy("rank").collect()
    ]
    assert got == [("a", 1, 10), ("b", 2, 10), ("c", 3, 3)]
