"""Validation rules, ids and item facts on tiny staged frames."""

import datetime as dt

import pytest
from chispa import assert_df_equality

from jobs.ingest import staging

T0 = dt.datetime(2011, 5, 1, 10, 0)


def staged(spark, rows):
    """Staged rows from dicts; unspecified columns are null."""
    base = {"source": "s", "raw": None, "ts_raw": "x", "ts": T0, "dt": T0.date(), "user_id": "u1",
            "item_id": "i1", "event_type": "view"}  # fmt: skip
    full = []
    for i, r in enumerate(rows):
        row = {**base, "raw": f"raw-{i}", **r}
        full.append(row)
    cols = sorted({k for r in full for k in r})
    df = spark.createDataFrame([tuple(r.get(c) for c in cols) for r in full], _schema(cols))
    return staging.conform(df)


def _schema(cols):
    fields = {f.name: f for f in staging.STAGED_SCHEMA.fields}
    from pyspark.sql.types import StructType

    return StructType([fields[c] for c in cols])


def reasons(df):
    out = df.transform(lambda d: staging.validate(d, now=dt.datetime(2012, 1, 1))).orderBy("raw")
    return [r["reason"] for r in out.collect()]


def test_good_rows_have_no_reason(spark):
    rows = [
        {"event_type": "purchase", "quantity": 12, "amount": 30.0, "price": 2.5},
        {"event_type": "cancel", "quantity": -12, "amount": -30.0},
        {"event_type": "search", "item_id": None, "query": "linen dress"},
        {"event_type": "view"},
    ]
    assert reasons(staged(spark, rows)) == [None, None, None, None]


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"ts": None, "ts_raw": "2011-13-45 99:00"}, "unparseable_timestamp"),
        ({"ts": None, "ts_raw": "  "}, "missing_timestamp"),
        ({"ts": dt.datetime(1970, 1, 2)}, "timestamp_out_of_range"),
        ({"ts": dt.datetime(2030, 1, 2)}, "timestamp_out_of_range"),
        ({"event_type": "teleport"}, "unknown_event_type"),
        ({"event_type": None}, "missing_event_type"),
        ({"user_id": " "}, "missing_user_id"),
        ({"user_id": None}, "missing_user_id"),
        ({"item_id": None}, "missing_item_id"),
        ({"event_type": "search", "item_id": None, "query": None}, "missing_query"),
        ({"event_type": "purchase", "quantity": 0, "amount": 0.0}, "impossible_quantity"),
        ({"event_type": "purchase", "quantity": -3, "amount": -3.0}, "impossible_quantity"),
        ({"event_type": "cancel", "quantity": 3, "amount": 3.0}, "impossible_quantity"),
        ({"event_type": "view", "quantity": -1}, "impossible_quantity"),
        ({"event_type": "purchase", "quantity": 20_000_000}, "impossible_quantity"),
        ({"event_type": "purchase", "quantity": 2, "amount": -4.0}, "impossible_amount"),
        ({"event_type": "purchase", "quantity": 2, "amount": 4.0, "price": -2.0}, "impossible_amount"),
        ({"event_type": "purchase", "quantity": 2, "amount": float("nan")}, "impossible_amount"),
        ({"event_type": "purchase", "quantity": 2, "amount": 5e9}, "impossible_amount"),
        ({"adapter_reason": "malformed_line", "ts": None}, "malformed_line"),
    ],
)
def test_each_bad_row_gets_its_reason(spark, row, reason):
    assert reasons(staged(spark, [row])) == [reason]


def test_first_failing_rule_names_the_reason(spark):
    # Bad timestamp and missing user: the timestamp is checked first.
    assert reasons(staged(spark, [{"ts": None, "ts_raw": "garbage", "user_id": None}])) == [
        "unparseable_timestamp"
    ]


def test_event_id_is_deterministic_and_depends_on_source_and_record(spark):
    rows = [{"raw": "a"}, {"raw": "b"}, {"raw": "a", "source": "other"}]
    ids1 = [
        r.event_id
        for r in staging.with_event_ids(staging.validate(staged(spark, rows)))
        .orderBy("source", "raw")
        .collect()
    ]
    ids2 = [
        r.event_id
        for r in staging.with_event_ids(staging.validate(staged(spark, rows)))
        .orderBy("source", "raw")
        .collect()
    ]
    assert ids1 == ids2
    assert len(set(ids1)) == 3
    assert all(len(i) == 32 for i in ids1)


def test_source_event_key_wins_and_conflicting_records_are_quarantined(spark):
    rows = [
        {"raw": "r1", "event_key": "E1"},
        {"raw": "r2", "event_key": "E1"},  # same source id, different record
        {"raw": "r3", "event_key": "E2"},
    ]
    out = staging.with_event_ids(staging.validate(staged(spark, rows))).orderBy("raw").collect()
    assert [r.reason for r in out] == [None, "conflicting_event_id", None]
    assert out[0].event_id == out[1].event_id != out[2].event_id


def test_to_events_keeps_only_accepted_rows_with_bronze_columns(spark):
    rows = [{"raw": "ok", "event_type": "view"}, {"raw": "bad", "event_type": "teleport"}]
    v = staging.with_event_ids(staging.validate(staged(spark, rows)))
    events = staging.to_events(v)
    assert events.columns == staging.EVENT_COLUMNS
    assert [r.event_type for r in events.collect()] == ["view"]
    q = staging.to_quarantine(v, "run-1").collect()
    assert [(r.raw, r.reason, r.detail, r.run_id) for r in q] == [
        ("bad", "unknown_event_type", "teleport", "run-1")
    ]


def test_items_take_the_latest_title_and_price_and_ignore_bad_rows(spark):
    t1, t2 = dt.datetime(2011, 1, 1), dt.datetime(2011, 2, 1)
    rows = [
        {"item_id": "A", "ts": t1, "title": "OLD NAME", "price": 2.0},
        {"item_id": "A", "ts": t2, "title": "NEW NAME", "price": 0.0},  # price 0: not a catalog price
        {"item_id": "A", "ts": t2, "title": None, "user_id": None},  # guest row still counts
        {"item_id": "B", "ts": t1, "title": "BROKEN", "event_type": "teleport"},  # rejected: no item facts
    ]
    items = staging.to_items(staging.validate(staged(spark, rows), now=dt.datetime(2012, 1, 1)))
    expected = spark.createDataFrame(
        [("A", "NEW NAME", 2.0, t1, t2)],
        "item_id string, title string, price double, first_seen timestamp, last_seen timestamp",
    )
    assert_df_equality(items.select(*expected.columns), expected, ignore_nullable=True)
