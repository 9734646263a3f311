"""The LLM runtime on Spark against the scripted OpenAI-compatible server.

Fault matrix, accounting, the Delta response cache (re-run, crash and resume), secrets,
multimodal request format and the shared rate limit, all through real Spark tasks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from core import tables
from core.config import ConfigError
from jobs.agents import RESPONSES_TABLE, run_agent
from testing import answers
from testing.scripted_server import ScriptedLLMServer
from tests.conftest import REPO
from udfs.agents import item_profile as ip

CTX = ip.context()
TITLES = [
    "WHITE HANGING HEART T-LIGHT HOLDER",
    "SET OF 3 CAKE TINS PANTRY DESIGN",
    "JUMBO BAG RED RETROSPOT",
    "PACK OF 72 RETROSPOT CAKE CASES",
    "ASSORTED COLOUR BIRD ORNAMENT",
    "RED WOOLLY HOTTIE WHITE HEART",
    "VINTAGE BILLBOARD DRINK ME MUG",
    "GLASS STAR FROSTED T-LIGHT HOLDER",
]


def items_df(spark, n: int, image: bool = False, distinct: int | None = None, offset: int = 0):
    """``n`` items whose titles are unique unless ``distinct`` caps them."""
    rows = []
    for i in range(offset, offset + n):
        k = i if distinct is None else i % distinct
        title = f"{TITLES[k % len(TITLES)]} {k:04d}"  # the number keeps prompts distinct
        url = f"https://img.example/{k}.jpg" if image else None
        rows.append((f"item-{i:04d}", title, 1.0 + k % 7, "mid", None, url))
    return spark.createDataFrame(
        rows,
        "item_id string, title string, price double, price_band string, leaf_category string, image_url string",
    )


def llm_conf(conf_factory, server: ScriptedLLMServer, *extra: str, api_key_env: str | None = None):
    return conf_factory(
        [
            "llm.agents.item_profile.backend=openai",
            f"llm.endpoints.default.base_url={server.base_url}",
            "llm.endpoints.default.model=scripted-model",
            f"llm.endpoints.default.api_key_env={api_key_env or 'null'}",
            "llm.runtime.timeout_s=1",
            "llm.runtime.max_retries=3",
            "llm.runtime.backoff_initial_s=0.05",
            "llm.runtime.backoff_max_s=0.3",
            "llm.runtime.tasks=4",
            *extra,
        ]
    )


def rows_by_id(df):
    return {r["item_id"]: r for r in df.collect()}


def test_heuristic_backend_is_the_default_and_fails_bad_rows_without_losing_them(spark, conf_factory):
    items = spark.createDataFrame(
        [("a", "SET OF 3 RED CAKE TINS", 4.95, "mid", None, None), ("b", None, 1.0, None, None, None)],
        "item_id string, title string, price double, price_band string, leaf_category string, image_url string",
    )
    run = run_agent(items, ip.AGENT, conf_factory(), ["item_id"], CTX)
    assert run.backend == "heuristic"
    out = rows_by_id(run.output)
    assert set(out) == {"a", "b"}
    assert out["a"]["status"] == "heuristic" and out["a"]["model"] == "heuristic"
    assert out["a"]["prompt_version"] == "h1" and out["a"]["attempts"] == 0
    assert out["a"]["output"]["short_title"] == "Red Cake Tins"
    assert out["a"]["output"]["leaf_category"] == "cake and baking"
    assert out["b"]["status"] == "failed" and out["b"]["error_class"] == "heuristic_error"
    assert "no title" in out["b"]["error_message"] and out["b"]["output"] is None


def test_fault_matrix_every_input_ends_as_exactly_one_row(spark, conf_factory):
    faults = {"rate_limit": 0.2, "server_error": 0.1, "hang": 0.05, "invalid_json": 0.1}
    with ScriptedLLMServer(
        responder=answers.item_profile, faults=faults, seed=11, retry_after_s=0.05, hang_s=5
    ) as server:
        conf = llm_conf(conf_factory, server, "llm.runtime.max_in_flight=8")
        run = run_agent(items_df(spark, 200), ip.AGENT, conf, ["item_id"], CTX, fallback=None)
        out = run.output.collect()
        received = server.count
        outcomes = dict(server.by_outcome)

    assert len(out) == 200 and len({r["item_id"] for r in out}) == 200
    bound = (3 + 1) * 2  # (max_retries + 1) x (answer + repair)
    by_status: dict[str, int] = {}
    for r in out:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        assert 1 <= r["attempts"] <= bound
        if r["status"] == "ok":
            assert r["output"]["leaf_category"] in CTX["categories"]
            assert r["error_class"] is None and r["input_tokens"] > 0 and r["output_tokens"] > 0
        else:
            assert r["status"] == "failed" and r["output"] is None
            assert r["error_class"] in {"rate_limited", "server_error", "timeout", "not_json"}
            assert r["error_message"]
    # Every request the server saw is accounted in exactly one row's attempts.
    assert sum(r["attempts"] for r in out) == received
    # All four faults were met and retried or repaired; most inputs ended ok.
    assert {"rate_limit", "server_error", "hang", "invalid_json"} <= set(outcomes)
    assert by_status["ok"] >= 180
    repaired = [r for r in out if r["status"] == "ok" and r["attempts"] >= 2]
    assert repaired


def test_ok_rows_carry_the_answer_the_server_gave(spark, conf_factory):
    with ScriptedLLMServer(responder=answers.item_profile) as server:
        conf = llm_conf(conf_factory, server)
        out = rows_by_id(run_agent(items_df(spark, 12), ip.AGENT, conf, ["item_id"], CTX).output)
        bodies = list(server.bodies)
    assert len(bodies) == 12
    titles = {r["item_id"]: r for r in items_df(spark, 12).collect()}
    for item_id, row in out.items():
        want = ip.heuristic({"title": titles[item_id]["title"], "price_band": "mid"}, CTX)
        assert ("price_band", "mid") in [(f.kind, f.value) for f in want.decision_factors]
        got = row["output"]
        assert got["short_title"] == want.short_title
        assert got["leaf_category"] == want.leaf_category
        assert [(f["kind"], f["value"]) for f in got["decision_factors"]] == [
            (f.kind, f.value) for f in want.decision_factors
        ]
        assert row["status"] == "ok" and row["model"] == "scripted-model" and row["prompt_version"] == "v2"
    body = bodies[0]
    assert body["model"] == "scripted-model" and body["response_format"] == {"type": "json_object"}
    # max_tokens from the answer schema's bounds (a short title, 6 factors, a category of the
    # vocabulary), not a fixed number
    assert body["temperature"] == 0.0 and body["max_tokens"] == 299


def test_second_run_sends_nothing_and_gives_identical_output(spark, conf_factory):
    items = items_df(spark, 30, distinct=20)  # 30 rows, 20 distinct prompts
    with ScriptedLLMServer(responder=answers.item_profile) as server:
        conf = llm_conf(conf_factory, server)
        first = run_agent(items, ip.AGENT, conf, ["item_id"], CTX)
        first_rows = sorted(first.output.collect())
        assert server.count == 20  # duplicate prompts sent once
        assert (first.inputs, first.distinct_requests, first.cached, first.sent) == (30, 20, 0, 20)
        second = run_agent(items, ip.AGENT, conf, ["item_id"], CTX)
        second_rows = sorted(second.output.collect())
        assert server.count == 20
    assert second.cached == 20 and second.sent == 0
    assert second_rows == first_rows and len(second_rows) == 30


@pytest.mark.slow
def test_failed_answers_are_sent_again_on_the_next_run(spark, conf_factory):
    items = items_df(spark, 10)
    with ScriptedLLMServer(responder=answers.item_profile, faults={"server_error": 1.0}) as server:
        conf = llm_conf(conf_factory, server, "llm.runtime.max_retries=1")
        failed = run_agent(items, ip.AGENT, conf, ["item_id"], CTX).output.collect()
        assert {r["status"] for r in failed} == {"failed"} and server.count == 20
        # The default fallback: each failed row carries the heuristic's answer, written by
        # "heuristic", and keeps the call's error.
        heuristic = rows_by_id(run_agent(items, ip.AGENT, conf_factory(), ["item_id"], CTX).output)
        for r in failed:
            assert r["output"] == heuristic[r["item_id"]]["output"] and r["output"] is not None
            assert r["model"] == "heuristic" and r["error_class"] == "server_error"
            assert r["prompt_version"] == heuristic[r["item_id"]]["prompt_version"]
        server.faults = None
        ok = run_agent(items, ip.AGENT, conf, ["item_id"], CTX).output.collect()
        assert server.count == 30
    assert {r["status"] for r in ok} == {"ok"}
    assert len(tables.read(spark, conf, RESPONSES_TABLE).collect()) == 20  # the log keeps both


_KILLED_RUN = """
import sys
from core.config import load_config
from core.session import get_spark
from udfs.agents import item_profile as ip
from jobs.agents import run_agent
from tests.test_llm_runner import items_df
conf = load_config(overrides=sys.argv[1:])
spark = get_spark(conf)
run = run_agent(items_df(spark, 100), ip.AGENT, conf, ["item_id"], ip.context())
print("finished", run.sent, flush=True)
"""


@pytest.mark.slow
def test_run_killed_halfway_resends_only_unanswered_inputs(spark, tmp_path):
    root = tmp_path / "warehouse"
    log_dir = root / "silver" / "llm_responses" / "_delta_log"
    with ScriptedLLMServer(responder=answers.item_profile, latency_s=0.15) as server:
        overrides = [
            f"storage.root={root}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "llm.agents.item_profile.backend=openai",
            f"llm.endpoints.default.base_url={server.base_url}",
            "llm.endpoints.default.api_key_env=null",
            "llm.runtime.tasks=2",
            "llm.runtime.max_in_flight=2",
            "llm.runtime.commit_every=20",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_RUN, *overrides],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 240
            # Kill after the second commit of answers (of five), mid-way through the run.
            while time.time() < deadline and len(list(log_dir.glob("*.json"))) < 2:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        sent_before_kill = server.count
        from core.config import load_config

        conf = load_config(overrides=overrides[:1] + overrides[3:])
        answered = tables.read(spark, conf, RESPONSES_TABLE).select("cache_key").distinct().count()
        assert 0 < answered < 100, answered  # killed part-way: some chunks committed, not all
        assert sent_before_kill >= answered
        resumed = run_agent(items_df(spark, 100), ip.AGENT, conf, ["item_id"], CTX)
        out = resumed.output.collect()
        sent_on_resume = server.count - sent_before_kill
    assert sent_on_resume == 100 - answered
    assert resumed.cached == answered
    assert len(out) == 100 and {r["status"] for r in out} == {"ok"}


@pytest.mark.slow
def test_api_key_never_leaves_the_request_header(spark, conf_factory, tmp_path, monkeypatch, capfd, caplog):
    key = "sk-test-5ecret-7f3a9c1e2b"
    wrong = "sk-wrong-0d9e8f7a6b"
    monkeypatch.setenv("DISCOVERY_TEST_LLM_KEY", key)
    with ScriptedLLMServer(
        responder=answers.item_profile, api_key=key, faults={"server_error": 0.3}
    ) as server:
        conf = llm_conf(conf_factory, server, api_key_env="DISCOVERY_TEST_LLM_KEY")
        run = run_agent(items_df(spark, 20), ip.AGENT, conf, ["item_id"], CTX)
        tables.overwrite(run.output, conf, "gold.secret_check")
        assert server.auth_ok == server.count > 0  # the key was sent, and used
        # A wrong key: 401 answers become failed rows whose messages do not carry it.
        monkeypatch.setenv("DISCOVERY_TEST_LLM_KEY", wrong)
        bad = run_agent(items_df(spark, 3, offset=100), ip.AGENT, conf, ["item_id"], CTX).output.collect()
        assert {r["error_class"] for r in bad} == {"client_error"}
        assert all("401" in r["error_message"] for r in bad)

    root = Path(conf.storage.root)
    haystacks = []
    for layer in ("silver", "gold"):
        for table_dir in (root / layer).iterdir():
            df = spark.read.format("delta").load(str(table_dir))
            haystacks += [json.dumps(r.asDict(recursive=True), default=str) for r in df.collect()]
    haystacks += [p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()]
    haystacks.append(json.dumps(spark.sparkContext.getConf().getAll()))
    haystacks.append(json.dumps(dict(spark.conf.getAll)))
    haystacks.append(repr(conf.model_dump()))
    captured = capfd.readouterr()
    haystacks += [captured.out, captured.err, caplog.text]
    for secret in (key, wrong, key[8:], wrong[9:]):
        assert not any(secret in h for h in haystacks), f"found {secret[:6]}... in an output"


def test_missing_api_key_variable_is_a_clear_error(spark, conf_factory, monkeypatch):
    monkeypatch.delenv("DISCOVERY_NO_SUCH_KEY", raising=False)
    with ScriptedLLMServer() as server:
        conf = llm_conf(conf_factory, server, api_key_env="DISCOVERY_NO_SUCH_KEY")
        with pytest.raises(ConfigError, match="DISCOVERY_NO_SUCH_KEY is not set"):
            run_agent(items_df(spark, 1), ip.AGENT, conf, ["item_id"], CTX)


def test_image_urls_reach_the_server_as_content_parts(spark, conf_factory):
    with ScriptedLLMServer(responder=answers.item_profile) as server:
        conf = llm_conf(conf_factory, server, "llm.endpoints.default.response_format=json_schema")
        out = run_agent(items_df(spark, 3, image=True), ip.AGENT, conf, ["item_id"], CTX).output.collect()
        bodies = list(server.bodies)
    assert {r["status"] for r in out} == {"ok"}
    urls = set()
    for body in bodies:
        system, user = body["messages"]
        assert system["role"] == "system" and isinstance(system["content"], str)
        text, image = user["content"]
        assert text["type"] == "text" and "<input>" in text["text"]
        assert image["type"] == "image_url" and set(image["image_url"]) == {"url"}
        urls.add(image["image_url"]["url"])
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["required"] == [
            "short_title",
            "leaf_category",
            "decision_factors",
        ]
    assert urls == {f"https://img.example/{k}.jpg" for k in range(3)}


@pytest.mark.slow
def test_rate_limit_is_shared_by_all_tasks(spark, conf_factory):
    with ScriptedLLMServer(responder=answers.item_profile, latency_s=0.05) as server:
        conf = llm_conf(
            conf_factory,
            server,
            "llm.endpoints.default.requests_per_minute=600",
            "llm.runtime.max_in_flight=16",
        )
        run_agent(items_df(spark, 61), ip.AGENT, conf, ["item_id"], CTX).output.count()
        span = server.last_response_at - server.first_request_at
        count = server.count
    # 61 requests at 10/s: 6 s from the first to the last (plus one latency), never faster.
    assert count == 61
    assert span == pytest.approx(6.0 + 0.05, rel=0.05)


def test_agent_inputs_are_checked(spark, conf_factory):
    with pytest.raises(ValueError, match=r"input columns missing: \['price'"):
        run_agent(
            spark.createDataFrame([("a", "t")], "item_id string, title string"),
            ip.AGENT,
            conf_factory(),
            ["item_id"],
            CTX,
        )


def test_unknown_endpoint_is_named(spark, conf_factory):
    conf = conf_factory(["llm.agents.item_profile.backend=openai", "llm.agents.item_profile.endpoint=qwen"])
    with pytest.raises(ConfigError, match="unknown endpoint 'qwen'"):
        run_agent(items_df(spark, 1), ip.AGENT, conf, ["item_id"], CTX)


def test_output_columns(spark, conf_factory):
    run = run_agent(items_df(spark, 1), ip.AGENT, conf_factory(), ["item_id"], CTX)
    assert run.output.columns == [
        "item_id",
        "output",
        "status",
        "error_class",
        "error_message",
        "model",
        "prompt_version",
        "input_tokens",
        "output_tokens",
        "latency_ms",
        "attempts",
        "answered_at",
        "cache_key",
    ]
    assert run.output.filter(F.col("status") == "heuristic").count() == 1


def _buyer(user_id: str) -> dict:
    personal = [
        {
            "category": "mugs",
            "share": 0.6,
            "long_term": [{"factor": "enamel"}],
            "recent": [],
            "potential": [],
        },
        {"category": "bags", "share": 0.4, "long_term": [{"factor": "jute"}], "recent": [], "potential": []},
    ]
    trend = [{"trend_query_id": "t1", "query": "paper lamps for spring", "category": "lamps",
              "selling_points": ["paper"], "growth": 1.4}]  # fmt: skip
    explore = [{"category": "candles", "from_category": "mugs", "buyers_share": 0.3, "factors": ["scented"]}]
    return {"user_id": user_id, "buyer_type": "gift shop", "summary": f"{user_id}: buys mugs and bags",
            "personal_json": json.dumps(personal), "trend_json": json.dumps(trend),
            "exploration_json": json.dumps(explore)}  # fmt: skip


def test_u2q_answer_cut_off_keeps_its_complete_queries_and_a_copied_example_is_rejected(spark, conf_factory):
    from prompts import load_prompt
    from udfs.agents import u2q

    def q(kind, query, category):
        return {"kind": kind, "query": query, "category": category, "reason": f"because of {query}"}

    long_answer = json.dumps({"queries": [
        q("personal", "white enamel mugs for a cafe", "mugs"), q("personal", "blue enamel mugs", "mugs"),
        q("personal", "natural jute shopping bags", "bags"), q("trend", "paper lamps for the spring window", "lamps"),
        q("trend", "folding paper lamps", "lamps"), q("exploration", "scented soy candles", "candles"),
        q("exploration", "tea light candles in bulk", "candles"),
    ]})  # fmt: skip
    # The server stops generating inside the fourth query (4 characters a token).
    cut_tokens = (long_answer.index("paper lamps for the spring") + 8) // 4
    example = json.dumps(load_prompt("u2q").example)

    def responder(body):
        return example if "copycat" in body["messages"][1]["content"] else long_answer

    inputs = spark.createDataFrame([_buyer("cut-off"), _buyer("copycat")])
    context = {"counts": u2q.DEFAULT_COUNTS}
    with ScriptedLLMServer(responder=responder, max_output_tokens=cut_tokens) as server:
        conf = llm_conf(conf_factory, server, "llm.agents.u2q.backend=openai")
        run = run_agent(inputs, u2q.AGENT, conf, ["user_id"], context)
        out = rows_by_id_of(run.output, "user_id")
        sent = list(server.bodies)
    cut = out["cut-off"]
    assert (cut["status"], cut["error_class"], cut["model"]) == ("partial", "cut_off", "scripted-model")
    queries = [(x["kind"], x["query"]) for x in cut["output"]["queries"]]
    # the three complete queries, then the heuristic's trend and exploration queries
    heuristic = u2q.AGENT.heuristic(_buyer("cut-off"), context).queries
    assert queries == [
        ("personal", "white enamel mugs for a cafe"), ("personal", "blue enamel mugs"),
        ("personal", "natural jute shopping bags"),
        *[(h.kind, h.query) for h in heuristic if h.kind != "personal"],
    ]  # fmt: skip
    assert [k for k, _ in queries[3:]] == ["trend", "exploration"]
    assert "3 complete item(s) kept, 2 added by the heuristic" in cut["error_message"]
    copy = out["copycat"]
    # answered with the example twice (answer and repair): failed, the heuristic's queries kept
    assert (copy["status"], copy["error_class"], copy["model"]) == ("failed", "copied_example", "heuristic")
    fallback = u2q.AGENT.heuristic(_buyer("copycat"), context).queries
    assert [x["query"] for x in copy["output"]["queries"]] == [h.query for h in fallback]
    assert run.summary()["partial"] == 1 and len(sent) == 3  # the cut-off answer is not repaired
    # The request carried this buyer's bounds: 7 queries at most, its categories only.
    schema = sent[0]["response_format"]
    assert schema == {"type": "json_object"}  # the default format sends no schema
    assert sent[0]["max_tokens"] > cut_tokens


def rows_by_id_of(df, key):
    return {r[key]: r for r in df.collect()}
