"""The nearline's two commits, by either engine: the per-user MERGE with its batch guard,
and the once-per-batch log append. delta-rs and Spark must leave the same tables. And its
lookups of a few buyers' rows, which either engine answers from the files that may hold
them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from core import tables
from jobs import nearline

T0 = dt.datetime(2026, 11, 26, 9, 0, 0)


def _item(item_id: str, score: float) -> dict:
    return {
        "position": 1, "item_id": item_id, "title": f"title {item_id}", "leaf_category": "bags",
        "score": score, "channel": "query", "reason": "You buy bags", "query_kind": "personal",
        "query": "jute bags", "bought": False, "is_new_category": True,
    }  # fmt: skip


def _record(user: str, batch: int, event: str, item: str) -> tuple:
    ts = T0 + dt.timedelta(seconds=batch)
    return (user, [_item(item, 1.0 + batch)], event, "purchase", ts, batch, ts, "ok", "scripted", None, 3)


def _table(spark, conf) -> dict:
    rows = tables.read(spark, conf, nearline.RECOMMENDATIONS).collect()
    return {
        r["user_id"]: (r["trigger_event_id"], r["batch_id"], r["event_ts"], [i.asDict() for i in r["items"]])
        for r in rows
    }


@pytest.mark.parametrize("engine", ["spark", "delta-rs"])
@pytest.mark.slow
def test_merge_replaces_a_row_only_from_a_later_batch(spark, conf_factory, engine):
    conf = conf_factory(["tracking.enabled=false"])
    if engine == "delta-rs":
        assert nearline.commit_engine(conf) == "delta-rs"  # a local storage.root
    nearline.create_tables(spark, conf)

    def version():
        return tables.last_commit(spark, conf, nearline.RECOMMENDATIONS)["version"]

    v1, at1 = nearline.commit_lists(
        spark, conf, [_record("a", 1, "e1", "i1"), _record("b", 1, "e2", "i2")], engine
    )
    assert v1 == version() and isinstance(at1, dt.datetime)
    nearline.commit_lists(spark, conf, [_record("b", 2, "e3", "i3"), _record("c", 2, "e4", "i4")], engine)
    after_two = version()
    # A replay of batch 1 (other content, same batch id) and the warm-up row change no row;
    # delta-rs commits no version for them (Spark's MERGE rewrites the matched file as is).
    replay = [_record("b", 1, "e9", "i9"), _record("a", 1, "e9", "i9")]
    v, _ = nearline.commit_lists(spark, conf, replay, engine)
    assert v == version()
    warm_up = [("__warm_up__", [], None, None, None, -1, T0, None, None, None, 0)]
    v, _ = nearline.commit_lists(spark, conf, warm_up, engine)
    assert v == version()
    if engine == "delta-rs":
        assert version() == after_two

    got = _table(spark, conf)
    assert {u: (e, b) for u, (e, b, _, _) in got.items()} == {"a": ("e1", 1), "b": ("e3", 2), "c": ("e4", 2)}
    assert got["b"][2] == T0 + dt.timedelta(seconds=2)  # timestamps are UTC wall times either way
    assert got["b"][3] == [_item("i3", 3.0)]


@pytest.mark.slow
def test_both_engines_leave_the_same_rows(spark, conf_factory, tmp_path):
    results = []
    for engine in ("spark", "delta-rs"):
        conf = conf_factory(["tracking.enabled=false", f"storage.root={tmp_path / engine}"])
        nearline.create_tables(spark, conf)
        for batch in range(3):
            records = [_record(u, batch, f"e{batch}{u}", f"i{batch}{u}") for u in ("a", "b", "c")[batch:]]
            nearline.commit_lists(spark, conf, records, engine)
        results.append(_table(spark, conf))
    assert results[0] == results[1]
    assert len(results[0]) == 3


@pytest.mark.parametrize("engine", ["spark", "delta-rs"])
def test_batch_log_appends_once_per_batch_across_engines(spark, conf_factory, engine):
    conf = conf_factory(["tracking.enabled=false"])
    nearline.create_tables(spark, conf)
    other = "delta-rs" if engine == "spark" else "spark"

    def row(batch):
        return [(batch, 3, 1, 1, 0, 0, "e1", "e3", T0, T0, 1, 0.01, 0.5, 0.05)]

    nearline.log_batch(spark, conf, row(0), "nearline:ck", 0, engine)
    nearline.log_batch(spark, conf, row(0), "nearline:ck", 0, engine)  # replay: skipped
    nearline.log_batch(spark, conf, row(0), "nearline:ck", 0, other)  # the other engine sees the txn
    nearline.log_batch(spark, conf, row(1), "nearline:ck", 1, other)
    nearline.log_batch(spark, conf, row(0), "nearline:other", 0, engine)  # another stream
    log = tables.read(spark, conf, nearline.BATCHES)
    assert sorted(r["batch_id"] for r in log.collect()) == [0, 0, 1]


@pytest.mark.parametrize("engine", ["spark", "delta-rs"])
def test_a_lookup_reads_only_the_files_that_may_hold_the_buyers(spark, conf_factory, engine):
    """Files are chosen by their partition value and user_id range before any is opened:
    with the files of other buyers and of the other run date deleted from disk, the lookup
    still answers, and with exactly the rows of its filters."""
    import pyarrow.parquet as pq

    from jobs.nearline.state import lookup

    conf = conf_factory(
        ["tracking.enabled=false", f"nearline.commit={'auto' if engine == 'delta-rs' else engine}"]
    )
    assert nearline.commit_engine(conf) == engine
    days = [dt.date(2026, 11, 1), dt.date(2026, 11, 8)]
    rows = [(f"u{u}", f"i{u}-{k}", day) for day in days for u in range(9) for k in range(2)]
    path = tables.location(conf, "gold.lookup_probe")
    (
        spark.createDataFrame(rows, "user_id string, item_id string, as_of date")
        .repartitionByRange(3, "user_id")  # files of u0-u2, u3-u5, u6-u8 per run date
        .sortWithinPartitions("as_of", "user_id")
        .write.format("delta")
        .partitionBy("as_of")
        .save(path)
    )
    kept = [f for f in tables.read(spark, conf, "gold.lookup_probe").inputFiles() if "2026-11-08" in f]
    holds = {
        f: set(pq.read_table(f.removeprefix("file:"), columns=["user_id"])["user_id"].to_pylist())
        for f in kept
    }
    wanted = next(f for f, users in holds.items() if "u4" in users)
    assert holds[wanted] == {"u3", "u4", "u5"}  # the layout the probe relies on
    for f in tables.read(spark, conf, "gold.lookup_probe").inputFiles():
        if f != wanted:
            Path(f.removeprefix("file:")).unlink()

    got = lookup(
        spark, conf, "gold.lookup_probe", ["user_id", "item_id"], ["u4", "u5"], equal=("as_of", days[1])
    )
    assert sorted(map(tuple, got.to_numpy().tolist())) == [
        ("u4", "i4-0"),
        ("u4", "i4-1"),
        ("u5", "i5-0"),
        ("u5", "i5-1"),
    ]
    later = lookup(spark, conf, "gold.lookup_probe", ["item_id"], ["u3"], after=("as_of", days[0]))
    assert sorted(later["item_id"]) == ["i3-0", "i3-1"]
    assert lookup(spark, conf, "gold.lookup_probe", ["item_id"], ["u3"], after=("as_of", days[1])).empty
    none = lookup(spark, conf, "gold.lookup_probe", ["user_id", "item_id"], [], equal=("as_of", days[1]))
    assert none.empty and list(none.columns) == ["user_id", "item_id"]
