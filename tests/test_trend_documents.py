"""Trend documents: folder, Delta, derived and http sources -> bronze.trend_documents."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pyspark.sql import types as T

from core import tables
from jobs.trends import documents as docs
from jobs.trends.documents import (
    DOCUMENT_SCHEMA,
    load_documents,
    parse_csv,
    parse_markdown,
    record_fields,
    staged_from_frame,
)

AS_OF = dt.date(2024, 6, 1)
UTC = dt.timezone.utc


def _sources(*sources: dict) -> list[str]:
    # JSON is YAML: the override parser reads the list as it is.
    return [f"trends.sources={json.dumps(list(sources))}"]


# ---------------------------------------------------------------------------------------
# Parsers (no Spark)


def test_markdown_title_front_matter_then_heading_then_file_stem():
    fm = parse_markdown(
        "---\ntitle: Linen is back\npublished_at: 2024-05-02\ncategories: [bedding, linen]\n---\n# Other\nBody.\n",
        "c",
        "a.md",
        "a",
    )
    assert (fm["title"], fm["published_at"], fm["categories"], fm["reason"]) == (
        "Linen is back",
        "2024-05-02",
        ["bedding", "linen"],
        None,
    )
    assert fm["text"] == "# Other\nBody.\n"  # the body without the front matter
    heading = parse_markdown("intro\n# Rattan chairs\n\nmore", "c", "b.md", "b")
    assert heading["title"] == "Rattan chairs"
    bare = parse_markdown("## not a title heading\ntext", "c", "c.md", "c-notes")
    assert bare["title"] == "c-notes"
    broken = parse_markdown("---\ntitle: [unclosed\n---\ntext", "c", "d.md", "d")
    assert broken["reason"] == "invalid_front_matter"
    unclosed = parse_markdown("---\ntitle: x\ntext without end", "c", "e.md", "e")
    assert unclosed["reason"] == "invalid_front_matter"


def test_csv_rows_categories_and_bad_rows():
    rows = parse_csv(
        'title,text,categories\nA,"first, text",toys| games |\nB,only two\n\nC,t,x,extra\n', "c", "f.csv"
    )
    assert [r["reason"] for r in rows] == [None, "bad_csv_row", "bad_csv_row"]
    assert rows[0]["text"] == "first, text"
    assert rows[0]["categories"] == ["toys", "games"]
    assert [r["row_number"] for r in rows] == [2, 3, 5]  # file lines, header = 1, blank line skipped


def test_record_fields_rejects_wrong_types():
    assert record_fields({"text": 5})["reason"] == "bad_field"
    assert record_fields({"text": "t", "categories": [1, 2]})["reason"] == "bad_categories"
    assert record_fields({"text": "t", "published_at": 1714000000})["reason"] == "bad_published_at"
    ok = record_fields({"text": "t", "id": 7, "categories": "a|b", "extra": {"x": 1}})
    assert (ok["reason"], ok["id"], ok["categories"]) == (None, "7", ["a", "b"])


# ---------------------------------------------------------------------------------------
# Configuration mistakes


def test_conf_mistakes_fail_with_the_source_named(spark, conf_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("TREND_DOCS_NO_SUCH_KEY", raising=False)
    cases = [
        ({"name": "corpus", "kind": "folder", "path": str(tmp_path / "nowhere")}, ["corpus", "nowhere"]),
        ({"name": "corpus", "kind": "folder"}, ["corpus", "path"]),
        ({"name": "social", "kind": "http"}, ["social", "url"]),
        ({"name": "social", "kind": "http", "url": "ftp://x"}, ["social", "http"]),
        ({"name": "lake", "kind": "delta"}, ["lake", "path", "table"]),
        (
            {"name": "social", "kind": "http", "url": "http://x", "api_key_env": "TREND_DOCS_NO_SUCH_KEY"},
            ["social", "TREND_DOCS_NO_SUCH_KEY"],
        ),
    ]
    for source, words in cases:
        with pytest.raises(ValueError) as err:
            load_documents(spark, conf_factory(_sources(source)), AS_OF, seeds=[])
        for word in words:
            assert word in str(err.value), (source, str(err.value))
    twice = conf_factory(_sources({"name": "d", "kind": "derived"}, {"name": "d", "kind": "derived"}))
    with pytest.raises(ValueError, match="unique"):
        load_documents(spark, twice, AS_OF)


# ---------------------------------------------------------------------------------------
# Folder source


def _write_corpus(folder) -> None:
    folder.mkdir()
    long_text = "Headline of a long piece\n" + "x" * 25_000
    lines = [
        json.dumps(
            {
                "id": "n1",
                "title": "Pastel planters",
                "text": "Pastel planters sell out.",
                "url": "https://news.example.com/1",
                "published_at": "2024-05-01T10:00:00Z",
                "categories": ["garden", " pots ", ""],
                "lang": "en",
            }
        ),
        "{not json",
        json.dumps({"title": "no text here"}),
        json.dumps({"text": long_text, "published_at": "2024-06-20"}),  # after as_of
        json.dumps({"text": "when?", "published_at": "yesterday"}),
        json.dumps({"text": "cats", "categories": 5}),
    ]
    (folder / "news.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "sheet.csv").write_text(
        "title,text,published_at,categories\n"
        "Glass jars,Glass jars with cork lids,2024-05-10T12:00:00+02:00,kitchen|storage\n"
        "broken,row\n"
        "Undated,An undated note,,\n",
        encoding="utf-8",
    )
    sub = folder / "notes"
    sub.mkdir()
    (sub / "front.md").write_text(
        "---\ntitle: Linen is back\npublished_at: 2024-05-02\ncategories: [bedding]\n---\n# Ignored\nLinen sheets.\n",
        encoding="utf-8",
    )
    (sub / "rattan.md").write_text("# Rattan chairs\n\nRattan chairs trend on social.\n", encoding="utf-8")
    (sub / "plain-note.md").write_text("Just a note.\n", encoding="utf-8")
    (folder / "latin1.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    # Not documents: another extension, and hidden / underscore names.
    (folder / "readme.txt").write_text("ignore me", encoding="utf-8")
    (folder / "_draft.jsonl").write_text(json.dumps({"text": "draft"}) + "\n", encoding="utf-8")


def test_folder_source_validates_merges_once_and_filters_as_of(spark, conf_factory, tmp_path, caplog):
    folder = tmp_path / "corpus"
    _write_corpus(folder)
    conf = conf_factory(_sources({"name": "corpus", "kind": "folder", "path": str(folder)}))

    load = load_documents(spark, conf, AS_OF)
    c = load.sources["corpus"]
    assert (c.read, c.accepted, c.quarantined) == (13, 7, 6)
    assert c.by_reason == {
        "bad_encoding": 1,
        "invalid_json": 1,
        "missing_text": 1,
        "bad_published_at": 1,
        "bad_categories": 1,
        "bad_csv_row": 1,
    }
    assert load.inserted == 7
    out = caplog.text
    assert f"trends: source corpus (folder {folder}): 13 read, 7 accepted, 6 quarantined" in out

    stored = {r["title"]: r for r in tables.read(spark, conf, docs.DOCUMENTS_TABLE).collect()}
    assert set(stored) == {
        "Pastel planters",
        "Headline of a long piece",  # no title: the text's first line
        "Glass jars",
        "Undated",
        "Linen is back",
        "Rattan chairs",
        "plain-note",
    }
    first = stored["Pastel planters"]
    assert first["doc_id"] == "n1"
    assert first["categories"] == ["garden", "pots"]
    assert first["published_at"] == dt.datetime(2024, 5, 1, 10, 0)  # session time zone is UTC
    assert (first["url"], first["lang"], first["source"], first["seed_query"]) == (
        "https://news.example.com/1",
        "en",
        "corpus",
        None,
    )
    assert stored["Glass jars"]["categories"] == ["kitchen", "storage"]
    assert stored["Glass jars"]["published_at"] == dt.datetime(2024, 5, 10, 10, 0)  # +02:00 -> UTC
    assert stored["Linen is back"]["categories"] == ["bedding"]
    assert stored["Linen is back"]["published_at"] == dt.datetime(2024, 5, 2)
    assert stored["Undated"]["published_at"] is None
    assert len(stored["Headline of a long piece"]["text"]) == docs.MAX_TEXT_CHARS
    hashed = stored["Glass jars"]["doc_id"]
    assert len(hashed) == 24 and int(hashed, 16) >= 0

    quarantine = tables.read(spark, conf, docs.QUARANTINE_TABLE).collect()
    by_reason = {r["reason"]: r for r in quarantine}
    assert by_reason["invalid_json"]["row_number"] == 2
    assert by_reason["invalid_json"]["raw"] == "{not json"
    assert by_reason["invalid_json"]["origin"].endswith("news.jsonl")
    assert by_reason["bad_published_at"]["detail"] == "yesterday"
    assert by_reason["bad_csv_row"]["row_number"] == 3
    assert all(r["loaded_at"] is not None and r["source"] == "corpus" for r in quarantine)

    # As of 2024-06-01: the note published on 2024-06-20 is not visible yet; undated ones are.
    visible = {r["title"] for r in load.documents.collect()}
    assert visible == set(stored) - {"Headline of a long piece"}

    again = load_documents(spark, conf, AS_OF)
    assert again.inserted == 0
    assert tables.read(spark, conf, docs.DOCUMENTS_TABLE).count() == 7
    assert (again.sources["corpus"].accepted, again.sources["corpus"].quarantined) == (7, 6)


# ---------------------------------------------------------------------------------------
# Delta and derived sources


def test_delta_sources_by_path_and_table_and_derived_frame(spark, conf_factory, tmp_path, caplog):
    lake = str(tmp_path / "lake_docs")
    spark.createDataFrame(
        [
            ("a1", "Boho rugs", "Boho rugs trend", dt.datetime(2024, 5, 3, 8, 0), ["home"], 0.9),
            ("a2", None, None, None, None, 0.1),
        ],
        "id string, title string, text string, published_at timestamp, categories array<string>, score double",
    ).write.format("delta").save(lake)
    conf = conf_factory(
        _sources(
            {"name": "lake", "kind": "delta", "path": lake},
            {"name": "shelf", "kind": "delta", "table": "bronze.shelf_docs"},
            {"name": "derived", "kind": "derived"},
            # No seed queries given: asked nothing (nothing listens on port 9).
            {"name": "social", "kind": "http", "url": "http://127.0.0.1:9/search"},
        )
    )
    tables.overwrite(
        spark.createDataFrame(
            [("Cork boards are rising", dt.date(2024, 5, 4), "office|decor")],
            "text string, published_at date, categories string",
        ),
        conf,
        "bronze.shelf_docs",
    )
    derived = spark.createDataFrame(
        [
            (
                None,
                "x",
                "Rising: candles",
                "Candles rose 40%.",
                None,
                dt.datetime(2024, 5, 27),
                ["candles"],
                "en",
                None,
                None,
            )
        ],
        T.StructType([T.StructField(f.name, f.dataType, True) for f in DOCUMENT_SCHEMA.fields]),
    )

    load = load_documents(spark, conf, AS_OF, derived=derived)
    got = {n: (c.read, c.accepted, c.quarantined) for n, c in load.sources.items()}
    assert got == {"lake": (2, 1, 1), "shelf": (1, 1, 0), "derived": (1, 1, 0)}
    assert load.http_failures == []
    out = caplog.text
    assert "trends: source social (http http://127.0.0.1:9/search): skipped, no seed queries" in out
    assert f"trends: source lake (delta {lake}): 2 read, 1 accepted, 1 quarantined (missing_text 1)" in out
    assert load.sources["lake"].by_reason == {"missing_text": 1}
    rows = {r["source"]: r for r in load.documents.collect()}
    assert rows["lake"]["doc_id"] == "a1"
    assert rows["lake"]["categories"] == ["home"]
    assert rows["shelf"]["published_at"] == dt.datetime(2024, 5, 4)
    assert rows["shelf"]["categories"] == ["office", "decor"]
    assert rows["shelf"]["title"] == "Cork boards are rising"
    assert rows["derived"]["source"] == "derived"  # the conf name, not the frame's
    assert rows["derived"]["title"] == "Rising: candles"
    q = tables.read(spark, conf, docs.QUARANTINE_TABLE).collect()
    assert [(r["source"], r["reason"], r["origin"]) for r in q] == [("lake", "missing_text", lake)]
    assert '"id":"a2"' in q[0]["raw"]

    wrong = spark.createDataFrame([("t", 3)], "text string, categories int")
    with pytest.raises(ValueError, match="categories"):
        staged_from_frame(wrong, "lake", lake)
    with pytest.raises(ValueError, match="no text column"):
        staged_from_frame(wrong.drop("text"), "lake", lake)


# ---------------------------------------------------------------------------------------
# http source against a scripted local server

KEY = "sk-trend-test-5f2c9e71a4"


class _Script:
    """Per query: how the server answers its n-th request; records every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, list[dict]] = {}

    def record(self, query: str, auth: str | None, body: dict) -> int:
        with self.lock:
            seen = self.requests.setdefault(query, [])
            seen.append({"at": time.monotonic(), "auth": auth, "body": body})
            return len(seen)


def _answer(*documents: object) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"documents": list(documents)}).encode()


def _doc(query: str, n: int = 1) -> dict:
    return {
        "title": f"{query} {n}",
        "text": f"About {query}, item {n}.",
        "url": f"https://s.example/{query}/{n}",
    }


def _respond(query: str, attempt: int, auth: str | None) -> tuple[int, dict, bytes] | float:
    """(status, headers, body), or seconds to stall without answering."""
    if query == "normal":
        return _answer({**_doc(query, 1), "id": "soc-1"}, _doc(query, 2), {"title": "empty"}, "not an object")
    if query == "ratelimit":
        return (429, {"Retry-After": "1"}, b"slow down") if attempt == 1 else _answer(_doc(query))
    if query == "flaky":
        return (500, {}, b"oops") if attempt <= 2 else _answer(_doc(query))
    if query == "slow":
        return 1.2 if attempt == 1 else _answer(_doc(query))
    if query == "garbage":
        return 200, {"Content-Type": "text/html"}, b"<html>maintenance</html>"
    if query == "echo":  # an adapter that echoes the request headers into a document
        return _answer({"title": "echo", "text": f"you sent {auth}"})
    if query == "missing":
        return 404, {}, b"no such index"
    return 503, {}, b"down"  # "down": never answers


class _Handler(BaseHTTPRequestHandler):
    script: _Script

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        attempt = self.script.record(body["query"], auth, body)
        reply = _respond(body["query"], attempt, auth)
        if isinstance(reply, float):
            time.sleep(reply)  # past the client's timeout; the client has gone by now
            return
        status, headers, payload = reply
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # the stalled answer's broken pipe
        pass


@pytest.fixture
def scripted_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    script = _Script()
    handler = type("Handler", (_Handler,), {"script": script})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/search", script
    server.shutdown()
    server.server_close()


def test_http_source_retries_records_failures_and_never_leaks_the_key(
    spark, conf_factory, scripted_server, monkeypatch, capsys, caplog
):
    url, script = scripted_server
    monkeypatch.setenv("TREND_DOCS_TEST_KEY", KEY)
    monkeypatch.setattr(docs.http_search, "BACKOFF_BASE_S", 0.01)
    source = {
        "name": "social",
        "kind": "http",
        "url": url,
        "api_key_env": "TREND_DOCS_TEST_KEY",
        "timeout_s": 0.4,
        "max_retries": 2,
        "per_query": 3,
    }
    conf = conf_factory(
        _sources({"name": "derived", "kind": "derived"}, source) + ["trends.document_days=30"]
    )
    queries = ["normal", "ratelimit", "flaky", "slow", "garbage", "echo", "missing", "down"]
    seeds = [
        {"seed_id": f"s{i}", "text": q, "category": "toys" if i else None} for i, q in enumerate(queries)
    ]

    load = load_documents(spark, conf, AS_OF, seeds=seeds)  # derived configured, none given: skipped

    # What the server saw: retries as scripted, the protocol's body, the key every time.
    attempts = {q: len(r) for q, r in script.requests.items()}
    assert attempts == {
        "normal": 1, "ratelimit": 2, "flaky": 3, "slow": 2, "garbage": 1, "echo": 1, "missing": 1, "down": 3,
    }  # fmt: skip
    rate = script.requests["ratelimit"]
    assert rate[1]["at"] - rate[0]["at"] >= 1.0  # Retry-After honoured (the backoff alone is ms)
    every = [r for rs in script.requests.values() for r in rs]
    assert all(r["auth"] == f"Bearer {KEY}" for r in every)
    assert script.requests["flaky"][0]["body"] == {
        "query": "flaky", "category": "toys", "since": "2024-05-02", "until": "2024-06-01", "limit": 3,
    }  # fmt: skip
    assert script.requests["normal"][0]["body"]["category"] is None

    failures = {f.seed_query: (f.seed_id, f.error_class, f.attempts) for f in load.http_failures}
    assert failures == {
        "garbage": ("s4", "bad_response", 1),
        "missing": ("s6", "client_error", 1),
        "down": ("s7", "server_error", 3),
    }
    c = load.sources["social"]
    assert (c.read, c.accepted, c.quarantined) == (8, 6, 2)
    assert c.by_reason == {"missing_text": 1, "invalid_json": 1}
    assert "derived" not in load.sources

    rows = load.documents.collect()
    assert sorted(r["seed_query"] for r in rows) == ["echo", "flaky", "normal", "normal", "ratelimit", "slow"]
    assert all(r["source"] == "social" and r["fetched_at"] is not None for r in rows)
    assert "soc-1" in {r["doc_id"] for r in rows}
    echo = next(r for r in rows if r["seed_query"] == "echo")
    assert echo["text"] == "you sent Bearer ***"
    quarantine = tables.read(spark, conf, docs.QUARANTINE_TABLE).collect()
    assert {(r["reason"], r["seed_query"], r["origin"]) for r in quarantine} == {
        ("missing_text", "normal", url),
        ("invalid_json", "normal", url),
    }

    # The key is in no row of either table, no failure record and no output.
    everything = tables.read(spark, conf, docs.DOCUMENTS_TABLE).collect() + quarantine
    assert all(KEY not in str(r.asDict()) for r in everything)
    assert all(KEY not in repr(f) for f in load.http_failures)
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err + caplog.text
    assert "trends: source derived (derived): skipped" in caplog.text
    assert "trends: source social (http " in caplog.text
    assert "8 read, 6 accepted, 2 quarantined" in caplog.text
    assert "3 seed(s) failed" in caplog.text


def test_visible_as_of_keeps_the_whole_day_and_undated_documents(spark):
    frame = spark.createDataFrame(
        [
            ("day end", dt.datetime(2024, 6, 1, 23, 59, 59)),
            ("next day", dt.datetime(2024, 6, 2, 0, 0, 0)),
            ("undated", None),
        ],
        "title string, published_at timestamp",
    )
    assert {r["title"] for r in docs.visible_as_of(frame, AS_OF).collect()} == {"day end", "undated"}
