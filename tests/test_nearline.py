"""jobs/nearline end to end on a small synthetic warehouse: the stream refreshes triggered
users, and a crash in the middle of a micro-batch (before the MERGE, and after the MERGE
but before the batch is committed) loses no event and writes nothing twice on restart."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from jobs import nearline, tables
from jobs.cli import STAGES, run_stages
from jobs.config import load_config


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nearline")
    source = {"name": "syn", "format": "synthetic", "users": 24, "days": 60, "seed": 5}
    conf = load_config(
        overrides=[
            f"storage.root={tmp / 'warehouse'}",
            "spark.shuffle_partitions=2",
            f"ingest.sources=[{json.dumps(source)}]",
            "trends.sources=[]",
            "tracking.enabled=false",
            "rank.top_k=5",
            "q2i.k=10",
            "nearline.tasks=1",
        ]
    )
    run_stages(spark, conf, [s for s, _ in STAGES if s != "evaluate"])
    return conf


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


def _users_and_item(spark, conf, n):
    events = tables.read(spark, conf, "bronze.events")
    users = [r[0] for r in events.select("user_id").distinct().orderBy("user_id").limit(n).collect()]
    item = tables.read(spark, conf, "silver.item_vectors").orderBy("item_id").first()["item_id"]
    return users, item


def test_triggered_users_get_a_list_and_a_crash_mid_batch_loses_and_duplicates_nothing(
    spark, warehouse, monkeypatch
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
        assert _wait(query, lambda: handler.batches >= 1), query.exception()
    finally:
        query.stop()
    recs = tables.read(spark, conf, nearline.RECOMMENDATIONS)
    rows = {r["user_id"]: r for r in recs.collect()}
    assert set(rows) == {a}
    assert rows[a]["trigger_event_id"] == "n1" and rows[a]["trigger_type"] == "purchase"
    listed = rows[a]["items"]
    assert 0 < len(listed) <= 5 and [i["position"] for i in listed] == list(range(1, len(listed) + 1))
    assert all(i["reason"] for i in listed)
    scores = [i["score"] for i in listed]
    assert scores == sorted(scores, reverse=True)

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
            crashes.append(1)
            raise Crash("killed after the MERGE")
        return real_log(self, rows, batch_id)

    monkeypatch.setattr(nearline.BatchHandler, "_log", crash_after_merge)
    query, handler = nearline.start(spark, conf)
    try:
        assert _wait(query, lambda: not query.isActive, timeout=120)
    finally:
        query.stop()
    assert "killed after the MERGE" in str(query.exception())
    merged = {r["user_id"]: r for r in tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()}
    assert merged[b]["trigger_event_id"] == "n3"
    version_after_merge = tables._last_commit(spark, conf, nearline.RECOMMENDATIONS)["version"]

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
