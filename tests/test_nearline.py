"""jobs/nearline end to end on a small synthetic warehouse: the stream refreshes triggered
users, and a crash in the middle of a micro-batch (before the MERGE, and after the MERGE
but before the batch is committed) loses no event and writes nothing twice on restart."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from core import tables
from jobs import nearline
from jobs.stages import run_stages
from testing import answers
from tests.conftest import NO_CODEGEN


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def warehouse(pipeline_warehouse):
    return pipeline_warehouse


def _append(spark, conf, rows):
    events = tables.read(spark, conf, "bronze.events")
    template = events.first().asDict()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    full = [dict(template, dt=now.date(), ts=now, query=None, **r) for r in rows]
    tables.append(spark.createDataFrame(full, events.schema), conf, "bronze.events")


def _wait(query, predicate, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not query.isActive:
            return False
        time.sleep(0.5)
    return False


def _committed_a_batch(query) -> bool:
    """Whether the stream has committed a micro-batch with events since it started."""
    return any(p["numInputRows"] > 0 for p in query.recentProgress)


def _copy(conf, root):
    """The config of a copy of the batch tables (the nearline's tables and checkpoint left out)."""
    import shutil
    from pathlib import Path

    for layer in ("bronze", "silver", "gold"):
        shutil.copytree(
            Path(conf.storage.root) / layer,
            root / layer,
            ignore=shutil.ignore_patterns("nearline_recommendations", "nearline_batches"),
        )
    return conf.model_copy(update={"storage": conf.storage.model_copy(update={"root": str(root)})})


def _users_and_item(spark, conf, n):
    events = tables.read(spark, conf, "bronze.events")
    users = [r[0] for r in events.select("user_id").distinct().orderBy("user_id").limit(n).collect()]
    item = tables.read(spark, conf, "silver.item_vectors").orderBy("item_id").first()["item_id"]
    return users, item


def test_triggered_users_get_a_list_and_a_crash_mid_batch_loses_and_duplicates_nothing(
    spark, warehouse, monkeypatch, caplog
):
    conf = warehouse
    users, item = _users_and_item(spark, conf, 3)
    a, b, c = users

    # 1. A normal batch: a purchase triggers a, a cart event alone does not trigger b.
    query, handler = nearline.start(spark, conf)
    try:
        _append(spark, conf, [
            {"event_id": "n1", "user_id": a, "event_type": "purchase", "item_id": item},
            {"event_id": "n2", "user_id": b, "event_type": "cart", "item_id": item},
        ])  # fmt: skip
        # Until Spark has committed the batch's offsets too (its progress is posted after
        # that): a stop between the handler's return and that commit would hand the batch
        # to the next start again, and step 3 would replay two events, not one.
        assert _wait(query, lambda: handler.batches >= 1 and _committed_a_batch(query)), query.exception()
    finally:
        query.stop()
    recs = tables.read(spark, conf, nearline.RECOMMENDATIONS)
    rows = {r["user_id"]: r for r in recs.collect()}
    assert set(rows) == {a}
    assert rows[a]["trigger_event_id"] == "n1" and rows[a]["trigger_type"] == "purchase"
    listed = rows[a]["items"]
    assert 0 < len(listed) <= 5 and [i["position"] for i in listed] == list(range(1, len(listed) + 1))
    assert all(i["reason"] and i["channel"] for i in listed)
    assert len({i["item_id"] for i in listed}) == len(listed)

    # 2. Crash before the MERGE: nothing is written, and the restart replays the batch.
    real_merge = nearline.BatchHandler._merge

    def crash_merge(self, records):
        raise Crash("killed before the MERGE")

    monkeypatch.setattr(nearline.BatchHandler, "_merge", crash_merge)
    query, handler = nearline.start(spark, conf)
    try:
        _append(spark, conf, [{"event_id": "n3", "user_id": b, "event_type": "search", "item_id": None}])
        assert _wait(query, lambda: not query.isActive, timeout=120)
    finally:
        query.stop()
    assert "killed before the MERGE" in str(query.exception())
    assert b not in {r["user_id"] for r in tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()}

    # 3. Crash after the MERGE committed, before the batch itself is: the replay changes nothing.
    monkeypatch.setattr(nearline.BatchHandler, "_merge", real_merge)
    real_log = nearline.BatchHandler._log
    crashes = []

    def crash_after_merge(self, rows, batch_id):
        if not crashes:
            crashes.append(rows)
            raise Crash("killed after the MERGE")
        return real_log(self, rows, batch_id)

    monkeypatch.setattr(nearline.BatchHandler, "_log", crash_after_merge)
    query, handler = nearline.start(spark, conf)
    try:
        assert _wait(query, lambda: not query.isActive, timeout=120)
    finally:
        query.stop()
    assert "killed after the MERGE" in str(query.exception())
    # The replayed batch: one event, one trigger, one list written (the log row says which
    # step failed otherwise: no trigger, or a refresh error printed above).
    (logged,) = crashes[0]
    assert logged[1:5] == (1, 1, 1, 0), (logged, caplog.text[-3000:])
    merged = {r["user_id"]: r for r in tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()}
    assert merged[b]["trigger_event_id"] == "n3"
    version_after_merge = tables.last_commit(spark, conf, nearline.RECOMMENDATIONS)["version"]

    # 4. Restart for real; a new event arrives while the stream is down.
    _append(spark, conf, [{"event_id": "n4", "user_id": c, "event_type": "purchase", "item_id": item}])
    query, handler = nearline.start(spark, conf)
    try:
        assert _wait(
            query,
            lambda: (
                c
                in {
                    r[0]
                    for r in tables.read(spark, conf, nearline.RECOMMENDATIONS).select("user_id").collect()
                }
            ),
        ), query.exception()
        assert _wait(query, lambda: handler.batches >= 2)
    finally:
        query.stop()
    final = tables.read(spark, conf, nearline.RECOMMENDATIONS)
    assert final.count() == final.select("user_id").distinct().count() == 3  # one row per user
    by_user = {r["user_id"]: r for r in final.collect()}
    assert {u: by_user[u]["trigger_event_id"] for u in (a, b, c)} == {a: "n1", b: "n3", c: "n4"}
    # The replayed batch of n3 left b's row as the first MERGE wrote it (same batch id).
    assert by_user[b]["batch_id"] == merged[b]["batch_id"]
    history = tables._delta_table(spark, conf, nearline.RECOMMENDATIONS).history().collect()
    # The replay of n3's batch committed nothing (the batch guard); c's batch one MERGE.
    later = sorted((h["version"], h["operation"]) for h in history if h["version"] > version_after_merge)
    assert later == [(version_after_merge + 1, "MERGE")]
    # Every event lands in exactly one logged batch: none lost, none logged twice.
    log = tables.read(spark, conf, nearline.BATCHES)
    assert log.count() == log.select("batch_id").distinct().count()
    assert log.agg(F.sum("events")).collect()[0][0] == 4


def test_a_buyer_without_fresh_events_gets_the_batch_list_from_the_nearline_refresh(spark, warehouse):
    """Batch and nearline rank through one function: the same buyer with the same inputs
    (no event after the batch run) gets the same list, channels and reasons from both."""
    import pandas as pd

    from jobs.nearline.state import load
    from udfs.nearline import INPUT_COLUMNS, refresh_users

    conf = warehouse
    features, items = load(spark, conf)
    run_date = features.run_date
    batch = tables.read(spark, conf, "gold.recommendations").toPandas()
    fresh = tables.read(spark, conf, "bronze.events").filter(F.col("dt") > F.lit(run_date))
    active = {r[0] for r in fresh.select("user_id").distinct().collect()}
    quiet = sorted(set(batch["user_id"]) - active)[-3:]
    assert quiet, "no buyer without fresh events"
    settings = nearline.settings_from_conf(spark, conf)
    stored = nearline.stored_candidates(spark, conf, run_date, quiet)
    state = features.users(spark, quiet)
    assert not any(state.fresh_items.get(u) or state.fresh_searches.get(u) for u in quiet)
    rows = pd.DataFrame([{**state.inputs(u, run_date), "candidates_json": stored[u]} for u in quiet])[
        list(INPUT_COLUMNS)
    ]
    out = refresh_users(rows, settings, items)
    assert out["u2q_error"].isna().all(), out["u2q_error"].tolist()
    for r in out.to_dict("records"):
        got = [(i["position"], i["item_id"], i["channel"], i["reason"]) for i in json.loads(r["items_json"])]
        mine = batch[batch["user_id"] == r["user_id"]].sort_values("position")
        expected = list(zip(mine["position"], mine["item_id"], mine["channel"], mine["reason"], strict=True))
        assert got == expected, r["user_id"]


def test_a_triggered_buyers_state_is_read_from_delta_with_the_events_since_the_batch_run(
    spark, warehouse, tmp_path, monkeypatch
):
    """No buyer's features stay on the driver: ``load`` keeps only what the catalog bounds,
    and the state of the buyers a micro-batch triggers is read from Delta, their events
    after the batch run folded in once (also when the micro-batch hands them in again)."""
    import pyarrow.parquet as pq

    from core.categories import UNKNOWN_CATEGORY, load_rules
    from jobs.nearline import state as nearline_state
    from jobs.nearline.state import USER_FEATURES, load

    rules = load_rules(warehouse.aggregate.category_rules)
    conf = _copy(warehouse, tmp_path / "warehouse")
    # Files of at most 7 buyers here (10,000 for real), so that the cap is exercised.
    monkeypatch.setattr(nearline_state, "USER_FEATURES_MAX_ROWS_PER_FILE", 7)
    features, _ = load(spark, conf)
    files = tables.read(spark, conf, USER_FEATURES).inputFiles()
    assert len(files) >= 3 and all(
        pq.ParquetFile(f.removeprefix("file:")).metadata.num_rows <= 7 for f in files
    )
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{tables.location(conf, USER_FEATURES)}`").collect()[0]
    assert detail["properties"]["parquet.block.size"] == str(1024 * 1024)
    assert sorted(vars(features)) == ["conf", "item_band", "item_category", "item_factors", "run_date"]
    n_items = tables.read(spark, conf, "silver.item_categories").count()
    assert len(features.item_category) == n_items and len(features.item_factors) == n_items
    stored = tables.read(spark, conf, USER_FEATURES)
    assert stored.filter(F.col("as_of") == F.lit(features.run_date)).count() == (
        stored.select("user_id").distinct().count()
    )  # one row per buyer of the run date

    # A buyer and an item of a category the buyer never met, with CFV factors.
    (user,), _ = _users_and_item(spark, conf, 1)
    before = features.users(spark, [user]).inputs(user, features.run_date)
    known = set(json.loads(before["history_json"])["known_categories"])
    item, category = next(
        (i, c)
        for i, c in sorted(features.item_category.items())
        if c not in known and features.item_factors.get(i) and c not in (rules.fallback, UNKNOWN_CATEGORY)
    )
    _append(spark, conf, [{"event_id": "f1", "user_id": user, "event_type": "purchase", "item_id": item}])
    today = dt.datetime.now(dt.timezone.utc).date()
    batch = tables.read(spark, conf, "bronze.events").filter(F.col("event_id") == "f1").toPandas()
    for state in (features.users(spark, [user]), features.users(spark, [user], batch)):
        after = state.inputs(user, today)
        history = json.loads(after["history_json"])
        assert category in history["known_categories"]
        assert item in history["touched"] and item in history["bought"]
        assert history["fresh_items"][item] == [1, 1]  # once, though the batch hands it in again
        personal = json.loads(after["personal_json"])
        assert personal[0]["category"] == category  # the fresh intent first
        recent = {f["factor"] for f in personal[0]["recent"]}
        assert recent and recent <= set(features.item_factors[item])
    # The other buyers' rows were not read: a state of one buyer holds one buyer.
    assert list(state.inputs_by_user) == [user]


def test_sigkill_of_the_whole_stream_mid_batch_loses_and_duplicates_nothing(spark, warehouse, tmp_path):
    """`discovery nearline` as its own process group (driver, JVM, Python workers), killed
    with SIGKILL while a micro-batch waits for the LLM; the restart replays the batch."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from testing.scripted_server import ScriptedLLMServer

    # A copy of the batch tables (the other test's nearline tables and checkpoint left out).
    source, root = Path(warehouse.storage.root), tmp_path / "warehouse"
    for layer in ("bronze", "silver", "gold"):
        shutil.copytree(
            source / layer,
            root / layer,
            ignore=shutil.ignore_patterns("nearline_recommendations", "nearline_batches"),
        )
    conf = warehouse.model_copy(update={"storage": warehouse.storage.model_copy(update={"root": str(root)})})
    users, item = _users_and_item(spark, conf, 2)
    a, b = users

    delay = [0.05]  # seconds per LLM answer: slow only while the batch is to be killed
    server = ScriptedLLMServer(latency_s=lambda body: delay[0], responder=answers.u2q).start()
    endpoint = {"base_url": server.base_url, "model": "scripted", "api_key_env": None}
    sets = [
        f"storage.root={root}", "spark.shuffle_partitions=2", "tracking.enabled=false", "rank.top_k=5",
        "q2i.k=10", "nearline.tasks=1", f"llm.endpoints.t={json.dumps(endpoint)}",
        "llm.agents.u2q.backend=openai", "llm.agents.u2q.endpoint=t", "nearline.llm_timeout_s=120",
        f"spark.extra={json.dumps({**NO_CODEGEN, 'spark.ui.enabled': 'false'})}",  # as the tests' session
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "jobs", "nearline", *[x for s in sets for x in ("--set", s)]]

    def launch(extra: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as fh:
            return subprocess.Popen(
                cmd + extra,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=os.environ.copy(),
            )

    def wait_for(predicate, timeout: float, what: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout}s\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    try:
        log1 = tmp_path / "first.log"
        first = launch(["--max-seconds", "600"], log1)
        try:
            wait_for(lambda: "nearline: ready" in log1.read_text(), 300, "first start ready", log1)
            calls = server.stats()["count"]  # the warm-up refresh called the LLM already
            delay[0] = 60.0
            _append(spark, conf, [
                {"event_id": "k1", "user_id": a, "event_type": "purchase", "item_id": item},
                {"event_id": "k2", "user_id": b, "event_type": "cart", "item_id": item},
            ])  # fmt: skip
            # The batch is in flight once its U2Q request reached the (slow) LLM.
            wait_for(lambda: server.stats()["count"] > calls, 120, "the batch's LLM request", log1)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
        time.sleep(2.0)  # let the orphaned JVM and workers go
        assert (
            not tables.exists(spark, conf, nearline.RECOMMENDATIONS)
            or not tables.read(spark, conf, nearline.RECOMMENDATIONS).count()
        )
        assert "nearline: batch 0" not in log1.read_text()

        delay[0] = 0.05
        log2 = tmp_path / "second.log"
        second = launch(["--stop-after-idle", "15", "--max-seconds", "400"], log2)
        try:
            assert second.wait(timeout=500) == 0, log2.read_text()[-3000:]
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        server.stop()

    recs = tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()
    assert [(r["user_id"], r["trigger_event_id"], r["batch_id"]) for r in recs] == [(a, "k1", 0)]
    log = tables.read(spark, conf, nearline.BATCHES).collect()
    assert [(r["batch_id"], r["events"], r["triggers"], r["users_written"]) for r in log] == [(0, 2, 1, 1)]


def test_a_new_batch_run_is_picked_up_without_a_restart(spark, warehouse, tmp_path):
    conf = _copy(warehouse, tmp_path / "warehouse")
    conf = conf.model_copy(update={"nearline": conf.nearline.model_copy(update={"reload_check_s": 2.0})})
    users, item = _users_and_item(spark, conf, 1)
    query, handler = nearline.start(spark, conf)
    try:
        first_run = handler.features.run_date
        # A batch run for the next day: candidates and rank rewrite gold.recommendations.
        next_day = first_run + dt.timedelta(days=1)
        run_stages(
            spark,
            conf.model_copy(update={"run": conf.run.model_copy(update={"date": next_day})}),
            ["candidates", "rank"],
        )
        assert _wait(query, lambda: handler.reloads == 1, timeout=180), query.exception()
        assert handler.features.run_date == next_day
        # The stream goes on with the new features.
        _append(
            spark, conf, [{"event_id": "r1", "user_id": users[0], "event_type": "purchase", "item_id": item}]
        )
        assert _wait(query, lambda: handler.batches >= 1), query.exception()
    finally:
        query.stop()
    rows = tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()
    assert [(r["user_id"], r["trigger_event_id"]) for r in rows] == [(users[0], "r1")]
    assert handler.reloads == 1  # gold.recommendations did not change again


def test_fresh_query_hits_take_their_items_from_the_catalog_and_unknown_vectors_are_left_out():
    """The refresh's item lookups, built once per catalog (``ItemCatalog``): hits join their
    items by vector id, a vector id the catalog lacks (an index newer than the batch run)
    gives no row, and ``by_item`` holds every item column once per item."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from core.config import Q2IConf
    from udfs.nearline import HIT_COLUMNS, ItemCatalog, fresh_query_candidates

    items = pd.DataFrame(
        {
            "vector_id": [10, 11, 12],
            "item_id": ["a", "b", "c"],
            "leaf_category": ["tea", "cups", "tea"],
            "price_band": ["mid", "budget", "premium"],
            "factors": [["green"], [], ["black"]],
            "log_buyers": [1.0, 2.0, 3.0],
        }
    ).set_index("vector_id")
    catalog = ItemCatalog.from_items(items)
    assert list(catalog.by_vector.columns) == HIT_COLUMNS
    assert catalog.by_item.loc["c", "log_buyers"] == 3.0 and catalog.by_item.index.is_unique

    queries = [{"kind": "personal", "query": "tea", "reason": "You buy tea"}]
    history = {"prefs": {"tea": {"black": 0.5}}, "bands": ["tea|premium"]}
    got = fresh_query_candidates(
        queries, np.array([[0.9, 0.8, 0.7]], np.float32), np.array([[12, 99, 10]]), catalog.by_vector,
        history, SimpleNamespace(q2i=Q2IConf()),
    )  # fmt: skip
    rows = {r["item_id"]: r for r in got.to_dict("records")}
    assert set(rows) == {"a", "c"}  # vector 99 is not in the catalog
    assert rows["c"]["leaf_category"] == "tea" and rows["c"]["relevance"] == pytest.approx(0.9)
    assert rows["a"]["relevance"] == pytest.approx(0.7)
    # c matches the buyer's CFV factor and price band in tea, a neither: c scores higher.
    assert rows["c"]["channel_score"] > rows["a"]["channel_score"]


def test_the_start_marker_reads_as_none_until_written_then_gives_the_record(spark, tmp_path):
    """The stream's first start records the events table's version beside the checkpoint;
    a missing marker is asked for first (no failed read, no stack trace in the log)."""
    from jobs.nearline.stream import _read_marker, _spark_path_exists, _write_marker

    marker = f"file://{tmp_path}/checkpoint/nearline_start.json"
    assert not _spark_path_exists(spark, marker)
    assert _read_marker(spark, marker) is None
    _write_marker(spark, marker, {"latest_version_at_first_start": 7})
    assert _spark_path_exists(spark, marker)
    assert _read_marker(spark, marker) == {"latest_version_at_first_start": 7}
