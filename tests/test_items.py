"""jobs/items.py: silver.item_profiles, price bands, incremental re-profiling, LLM fallback."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from core import tables
from jobs import items as items_job
from testing import answers
from testing.scripted_server import ScriptedLLMServer
from udfs.agents import item_profile as ip

ITEMS_SCHEMA = "item_id string, title string, price double, leaf_category string, image_url string"


def write_items(spark, conf, rows):
    tables.overwrite(spark.createDataFrame(rows, ITEMS_SCHEMA), conf, "bronze.items")


def profiles(spark, conf):
    return {r["item_id"]: r for r in tables.read(spark, conf, items_job.PROFILES).collect()}


def test_price_band_is_the_tercile_within_the_category(spark):
    df = spark.createDataFrame(
        [("a", 1.0, "mugs", None), ("b", 2.0, "mugs", None), ("c", 9.0, "mugs", None),
         ("d", 5.0, None, "bags"), ("e", None, None, "bags")],
        "item_id string, price double, leaf_category string, rule_category string",
    )  # fmt: skip
    got = {r["item_id"]: r["price_band"] for r in df.transform(items_job.price_bands).collect()}
    # percent_rank 0, 0.5, 1 -> budget, mid, premium; a lone priced item ranks 0.
    assert got == {"a": "budget", "b": "mid", "c": "premium", "d": "budget", "e": None}


@pytest.mark.slow
def test_heuristic_profiles_and_incremental_rerun(spark, conf_factory):
    conf = conf_factory()
    write_items(
        spark,
        conf,
        [
            ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 2.55, None, None),
            ("22720", "SET OF 3 CAKE TINS PANTRY DESIGN", 4.95, None, None),
            ("X1", "RED MUG", 1.0, "kitchen and storage", "https://img.example/x1.jpg"),
        ],
    )
    counts = items_job.run(spark, conf)
    assert counts == {"items": 3, "profiled": 3, "unchanged": 0, "failed": 0}
    got = profiles(spark, conf)
    heart = got["85123A"]
    assert heart["short_title"] == "White Hanging Heart T-light Holder"
    assert heart["leaf_category"] == "candles and holders" and heart["category_source"] == "rules_v1"
    assert ("theme", "heart") in [(f["kind"], f["value"]) for f in heart["decision_factors"]]
    assert heart["status"] == "heuristic" and heart["profile_source"] == "heuristic"
    assert heart["model"] == "heuristic" and heart["prompt_version"] == "h1"
    assert got["X1"]["leaf_category"] == "kitchen and storage" and got["X1"]["category_source"] == "catalog"
    assert ("pack", "pack of 3") in [(f["kind"], f["value"]) for f in got["22720"]["decision_factors"]]

    # Nothing changed: nothing profiled, no row touched.
    before = sorted(tables.read(spark, conf, items_job.PROFILES).collect())
    assert items_job.run(spark, conf)["profiled"] == 0
    assert sorted(tables.read(spark, conf, items_job.PROFILES).collect()) == before

    # One title changed: only that item is profiled again.
    write_items(
        spark,
        conf,
        [
            ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 2.55, None, None),
            ("22720", "SET OF 3 CAKE TINS PANTRY DESIGN", 4.95, None, None),
            ("X1", "BLUE MUG", 1.0, "kitchen and storage", "https://img.example/x1.jpg"),
        ],
    )
    assert items_job.run(spark, conf)["profiled"] == 1
    after = profiles(spark, conf)
    assert after["X1"]["short_title"] == "Blue Mug"
    assert after["85123A"]["profiled_at"] == got["85123A"]["profiled_at"]


@pytest.mark.slow
def test_llm_failures_fall_back_to_the_heuristic_and_are_retried(spark, conf_factory):
    rows = [
        (f"i{k}", f"{t} {k}", 1.0 + k, None, None)
        for k, t in enumerate(["RED MUG", "PINK BAG", "GLASS JAR"] * 4)
    ]
    with ScriptedLLMServer(responder=answers.item_profile, faults={"server_error": 0.5}, seed=5) as server:
        conf = conf_factory(
            [
                "llm.agents.item_profile.backend=openai",
                f"llm.endpoints.default.base_url={server.base_url}",
                "llm.endpoints.default.api_key_env=null",
                "llm.endpoints.default.model=scripted-model",
                "llm.runtime.max_retries=0",
                "llm.runtime.backoff_initial_s=0",
            ]
        )
        write_items(spark, conf, rows)
        first = items_job.run(spark, conf)
        got = profiles(spark, conf)
        failed = {k for k, r in got.items() if r["status"] == "failed"}
        assert 0 < len(failed) < 12 and first["failed"] == len(failed)
        for k, r in got.items():
            if k in failed:
                assert r["profile_source"] == "heuristic_fallback" and r["error_class"] == "server_error"
                assert r["short_title"] and r["prompt_version"] == "h1"  # the heuristic's profile
                assert r["category_source"] == "rules_v1"
            else:
                assert r["profile_source"] == "llm" and r["model"] == "scripted-model"
                assert r["category_source"] == "llm" and r["prompt_version"] == "v2"

        server.faults = None
        second = items_job.run(spark, conf)
        assert second["profiled"] == len(failed) and second["failed"] == 0
        assert {r["status"] for r in profiles(spark, conf).values()} == {"ok"}
    assert tables.read(spark, conf, items_job.PROFILES).filter(F.col("status") == "ok").count() == 12


@pytest.mark.slow
def test_items_without_title_or_image_are_not_sent_to_the_llm(spark, conf_factory):
    rows = [
        ("t1", "RED MUG", 2.0, None, None),
        ("t2", None, 3.0, "cat_42", None),  # a Taobao-style item: an id and a category only
        ("t3", "   ", 4.0, None, None),
        ("t4", None, 5.0, None, "http://127.0.0.1:1/img.jpg"),  # an image is something to read
    ]
    vase = ip.heuristic({"title": "BLUE GLASS VASE", "price_band": None}, ip.context()).model_dump_json()

    def answer(body):  # the image-only item: what a vision model could say about the picture
        return vase if "img.jpg" in str(body["messages"]) else answers.item_profile(body)

    with ScriptedLLMServer(responder=answer, record_bodies=True) as server:
        conf = conf_factory(
            [
                "llm.agents.item_profile.backend=openai",
                f"llm.endpoints.default.base_url={server.base_url}",
                "llm.endpoints.default.api_key_env=null",
                "llm.endpoints.default.model=scripted-model",
            ]
        )
        write_items(spark, conf, rows)
        counts = items_job.run(spark, conf)
        sent = [message for body in server.bodies for message in body["messages"]]
        assert len(server.bodies) == 2
    text = " ".join(str(m["content"]) for m in sent)
    assert "RED MUG" in text and "img.jpg" in text
    got = profiles(spark, conf)
    assert set(got) == {"t1", "t2", "t3", "t4"} and counts["profiled"] == 4
    assert got["t1"]["profile_source"] == "llm" and got["t4"]["profile_source"] == "llm"
    for k in ("t2", "t3"):
        assert got[k]["status"] == "failed" and got[k]["error_class"] == "heuristic_error"
    assert got["t2"]["leaf_category"] == "cat_42" and got["t2"]["category_source"] == "catalog"
    # heuristic failures are not retried: a second run sends nothing
    assert items_job.run(spark, conf)["profiled"] == 0
