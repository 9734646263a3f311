"""The real-model path: SmolLM2-135M through llama.cpp's OpenAI-compatible server, via Spark.

The model is tiny and its answers are often unusable; the test pins down that every input
still ends as exactly one row (ok, repaired, or failed with its reason) and nothing crashes.
Skipped only where the local-llm extra is not installed, and never in CI
(``DISCOVERY_REQUIRE_LOCAL_LLM=1`` turns the skip into a failure).
"""

from __future__ import annotations

import csv
import gzip
import os

import pytest

from jobs.agents import run_agent
from tests.conftest import BUNDLED_ONLINE_RETAIL
from udfs.agents import item_profile as ip
from udfs.llm.local_server import LlamaCppServer, LocalModelUnavailable, smollm2_gguf


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    try:
        gguf = smollm2_gguf()
        server = LlamaCppServer(gguf, log_path=str(tmp_path_factory.mktemp("llama") / "server.log"))
    except LocalModelUnavailable as e:
        if os.environ.get("DISCOVERY_REQUIRE_LOCAL_LLM") == "1":
            pytest.fail(f"local model required here: {e}")
        pytest.skip(str(e))
    with server:
        yield server


def real_items(n: int) -> list[tuple[str, str, float]]:
    """The first ``n`` distinct products of the bundled online_retail sample."""
    seen: dict[str, tuple[str, str, float]] = {}
    with gzip.open(BUNDLED_ONLINE_RETAIL / "2010-12-01.csv.gz", "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["StockCode"] not in seen and row["Description"]:
                seen[row["StockCode"]] = (row["StockCode"], row["Description"], float(row["UnitPrice"]))
            if len(seen) == n:
                break
    return list(seen.values())


@pytest.mark.real_data
@pytest.mark.parametrize("response_format", ["json_object", "json_object_schema"])
def test_smollm2_answers_every_row_through_spark(spark, conf_factory, smollm2, response_format):
    # Three products: each free-form (json_object) answer takes the model ~30 s here.
    items = spark.createDataFrame(
        [(code, title, price, None, None, None) for code, title, price in real_items(3)],
        "item_id string, title string, price double, price_band string, leaf_category string, image_url string",
    )
    conf = conf_factory(
        [
            "llm.agents.item_profile.backend=openai",
            f"llm.endpoints.default.base_url={smollm2.base_url}",
            "llm.endpoints.default.model=smollm2",
            "llm.endpoints.default.api_key_env=null",
            f"llm.endpoints.default.response_format={response_format}",
            "llm.runtime.timeout_s=120",
            "llm.runtime.max_in_flight=1",
            "llm.runtime.tasks=2",
        ]
    )
    # The transport itself: a failed answer stays failed, without the heuristic's output.
    run = run_agent(items, ip.AGENT, conf, ["item_id"], ip.context(), fallback=None)
    out = run.output.collect()

    assert sorted(r["item_id"] for r in out) == sorted(r[0] for r in real_items(3))
    for r in out:
        assert r["model"] == "smollm2" and r["prompt_version"] == "v2"
        assert 1 <= r["attempts"] <= 2 * (conf.llm.runtime.max_retries + 1)
        assert r["input_tokens"] > 100  # real usage from the server: the prompt is ~380 tokens
        if r["status"] in ("ok", "partial"):  # partial: some factors left out (Agent.prune)
            assert r["output"]["leaf_category"] in ip.context()["categories"]
            assert 2 <= len(r["output"]["short_title"]) <= 60
            assert r["status"] == "ok" or r["error_class"] == "pruned"
        else:
            # A weak model's answers fail validation; they must not fail the transport.
            assert r["status"] == "failed"
            assert r["error_class"] in {"not_json", "wrong_schema", "out_of_vocabulary"}, r["error_message"]
    summary = run.summary()
    assert summary["rows"] == 3 and summary["ok"] + summary["partial"] + summary["failed"] == 3
    print(f"smollm2 ({response_format}):", summary)


def small_real_buyers(folder, n: int) -> list[str]:
    """Copy the last 8 weeks of online_retail lines of ``n`` small real buyers into ``folder``."""
    import datetime as dt

    days = [dt.date(2011, 12, 9) - dt.timedelta(days=d) for d in range(56)]
    lines: dict[str, list[dict]] = {}
    header = None
    for day in sorted(days):
        path = BUNDLED_ONLINE_RETAIL / f"{day}.csv.gz"
        if not path.exists():
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            for row in reader:
                if row["CustomerID"]:
                    lines.setdefault(row["CustomerID"], []).append(row)
    buyers = sorted(c for c, rows in lines.items() if 3 <= len(rows) <= 8)[:n]  # e.g. "12367.0"
    with gzip.open(folder / "2011-12-09.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for c in buyers:
            writer.writerows(lines[c])
    return [c.removesuffix(".0") for c in buyers]  # user ids as ingest writes them


@pytest.mark.real_data
def test_smollm2_compresses_three_real_buyers_without_a_crash(spark, conf_factory, smollm2, tmp_path):
    from core import tables
    from jobs import aggregate, compress, ingest, items

    raw = tmp_path / "raw"
    raw.mkdir()
    # Three buyers: each answer takes the model tens of seconds on 2 cores.
    buyers = small_real_buyers(raw, 3)
    assert len(buyers) == 3
    conf = conf_factory(
        [
            f"ingest.sources=[{{name: online_retail, format: online_retail, path: '{raw}', timezone: Europe/London}}]",
            "compress.mode=llm",
            "compress.max_raw_lines=40",
            "llm.agents.behavior_compression.backend=openai",
            f"llm.endpoints.default.base_url={smollm2.base_url}",
            "llm.endpoints.default.model=smollm2",
            "llm.endpoints.default.api_key_env=null",
            # Grammar mode: the answer cannot outgrow its schema (one row per week and
            # category of the log), so max_tokens, derived from it, is never reached.
            "llm.endpoints.default.response_format=json_object_schema",
            "llm.runtime.timeout_s=180",
            "llm.runtime.max_in_flight=1",
            "llm.runtime.tasks=2",
        ]
    )
    for stage in (ingest, items, aggregate):
        stage.run(spark, conf)
    counts = compress.run(spark, conf)
    digests = tables.read(spark, conf, compress.DIGESTS).collect()
    # Every buyer has a digest row, whatever the model answered; failures say why.
    assert sorted(d["user_id"] for d in digests) == sorted(buyers)
    assert counts["users"] == 3
    for d in digests:
        assert d["mode"] == "llm" and d["digest_rows"]
        assert 0.0 <= d["fidelity"] <= 1.0
        if d["status"] == "failed":
            assert d["error_class"], d
        else:
            assert d["status"] == "ok" and d["model"] == "smollm2"
    print(
        "smollm2 compress:", [(d["user_id"], d["status"], d["error_class"], d["fidelity"]) for d in digests]
    )


def test_llama_cpp_turns_every_bound_of_the_u2q_schema_into_grammar():
    """The keywords the request schemas use (enum, const, prefixItems, pattern, maxLength, $ref)
    reach llama.cpp's grammar as hard limits, so a grammar-constrained model cannot write
    more queries, longer strings or other categories than the prompt asks for."""
    import json

    grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python (local-llm extra)")
    from udfs.agents import u2q

    row = {
        "buyer_type": "gift shop", "summary": "",
        "personal_json": json.dumps([{"category": "mugs", "share": 1.0, "long_term": [], "recent": [], "potential": []}]),
        "trend_json": "[]",
        "exploration_json": json.dumps([{"category": "candles", "from_category": "mugs", "buyers_share": 0.3, "factors": []}]),
    }  # fmt: skip
    schema = u2q.AGENT.schema_for(row, {"counts": {"personal": 2, "trend": 2, "exploration": 1}})
    rules = dict(
        line.split(" ::= ", 1)
        for line in grammar.json_schema_to_gbnf(json.dumps(schema)).splitlines()
        if line
    )
    # exactly 2 + 1 queries (no trend candidate), each slot with its kind and categories
    assert (
        rules["queries"]
        == '"[" space queries-tuple-0 "," space queries-tuple-1 "," space queries-tuple-2 "]" space'
    )
    assert [rules[f"queries-tuple-{i}"] for i in range(3)] == [
        "personal-query",
        "personal-query",
        "exploration-query",
    ]
    assert rules["personal-query-kind"] == '"\\"personal\\""'
    assert rules["personal-query-category"] == '"\\"mugs\\""'
    assert rules["exploration-query-category"] == '"\\"candles\\""'
    # the category comes before the query
    assert rules["personal-query"].index("category-kv") < rules["personal-query"].index("query-query-kv")
    # a query is 2 to 120 characters of one line, no "<" (no placeholder), no quote or
    # backslash: two required, 118 optional, each from that character class
    query = rules["personal-query-query"]
    char = query.split()[1]
    assert query.count(char) == 120 and query.count("?") == 118
    assert rules[char] == '[^\\n\\r\\t<>"\\\\]'


def test_llama_cpp_bounds_a_portraits_shares_and_categories():
    """A portrait's main categories are the buyer's own and their shares numbers from 0 to
    1 in the grammar (SmolLM2 wrote shares of 2 without that bound)."""
    import json

    grammar = pytest.importorskip("llama_cpp.llama_grammar", reason="llama-cpp-python (local-llm extra)")
    from udfs.agents import portrait

    facts = {"categories": [{"category": "mugs", "share": 0.76}, {"category": "bags", "share": 0.24}]}
    schema = portrait.AGENT.schema_for({"facts_json": json.dumps(facts)}, {"top_categories": 2})
    rules = dict(
        line.split(" ::= ", 1)
        for line in grammar.json_schema_to_gbnf(json.dumps(schema)).splitlines()
        if line
    )
    shares = [float(json.loads(x.strip())) for x in rules["CategoryShare-share"].split("|")]
    assert 0.24 in shares and 0.76 in shares and min(shares) == 0 and max(shares) == 1
    assert rules["CategoryShare-category"] == '"\\"bags\\"" | "\\"mugs\\""'
    # one or two main categories
    assert (
        rules["main-categories"]
        == '"[" space main-categories-item ("," space main-categories-item)? "]" space'
    )
