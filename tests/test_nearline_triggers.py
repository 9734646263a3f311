"""jobs/nearline/triggers.py: which fresh events trigger a refresh (pure pandas, no Spark)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from jobs.nearline.triggers import ViewWindow, find_triggers

T0 = dt.datetime(2026, 1, 5, 12, 0, 0)
TRIGGERS, VIEWS = ["search", "purchase"], ["view", "click"]


def _events(rows):
    return pd.DataFrame(
        [
            {"event_id": e, "user_id": u, "event_type": t, "ts": T0 + dt.timedelta(seconds=s)}
            for e, u, t, s in rows
        ]
    )


def test_search_and_purchase_trigger_and_the_last_one_per_user_wins():
    window = ViewWindow(5, 600)
    got = find_triggers(
        _events([("e1", "a", "search", 1), ("e2", "a", "purchase", 5), ("e3", "b", "cart", 2), ("e4", "c", "search", 3)]),
        window, TRIGGERS, VIEWS,
    )  # fmt: skip
    assert [(t.user_id, t.event_id, t.event_type) for t in got] == [
        ("c", "e4", "search"),
        ("a", "e2", "purchase"),
    ]
    assert isinstance(got[0].ts, dt.datetime)


def test_the_fifth_view_in_the_window_triggers_once():
    window = ViewWindow(5, 600)
    views = [(f"v{i}", "a", "view" if i % 2 else "click", 10 * i) for i in range(1, 8)]
    got = find_triggers(_events(views), window, TRIGGERS, VIEWS)
    assert [t.event_id for t in got] == ["v5"]  # not v6, v7: the count passed 5 there


def test_views_spread_over_batches_count_together_and_old_ones_slide_out():
    window = ViewWindow(5, 600)
    assert (
        find_triggers(_events([(f"v{i}", "a", "view", i) for i in range(1, 4)]), window, TRIGGERS, VIEWS)
        == []
    )
    # two more within 10 minutes of the first three: the fifth fires
    got = find_triggers(
        _events([("v4", "a", "view", 100), ("v5", "a", "view", 200)]), window, TRIGGERS, VIEWS
    )
    assert [t.event_id for t in got] == ["v5"]
    # 15 minutes later the first three have left the window: 4 in it, no trigger
    later = _events([("v6", "a", "view", 700), ("v7", "a", "view", 800)])
    assert find_triggers(later, window, TRIGGERS, VIEWS) == []


def test_a_replayed_batch_triggers_the_same_users_even_after_later_events_were_seen():
    first = _events([(f"v{i}", "a", "view", i) for i in range(1, 6)])
    window = ViewWindow(5, 600)
    assert [t.event_id for t in find_triggers(first, window, TRIGGERS, VIEWS)] == ["v5"]
    # a restart seeds the window from the table, which already holds a later view
    restarted = ViewWindow(5, 600)
    restarted.add("a", "v9", T0 + dt.timedelta(seconds=50))
    assert [t.event_id for t in find_triggers(first, restarted, TRIGGERS, VIEWS)] == ["v5"]
    # the same events twice count once
    assert find_triggers(first, restarted, TRIGGERS, VIEWS)[0].event_id == "v5"


def test_views_of_other_users_do_not_count_and_no_events_no_triggers():
    window = ViewWindow(3, 600)
    rows = [("a1", "a", "view", 1), ("b1", "b", "view", 2), ("a2", "a", "view", 3), ("b2", "b", "view", 4)]
    assert find_triggers(_events(rows), window, TRIGGERS, VIEWS) == []
    assert (
        find_triggers(
            _events([]).reindex(columns=["event_id", "user_id", "event_type", "ts"]), window, TRIGGERS, VIEWS
        )
        == []
    )
