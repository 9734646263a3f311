"""Which fresh events trigger a refresh, and of whom.

A user is triggered by an event of a trigger type (``nearline.trigger_types``: search and
purchase by default), or by a detail view (``nearline.view_types``) that brings the user's
detail views within the last ``nearline.view_window_s`` seconds to exactly
``nearline.views`` (5 by default, the source's real-time window). Counting to *exactly* the
threshold fires once per burst of browsing, not on every view after the fifth; once older
views have slid out of the window, a new burst fires again.

The decision for an event depends only on the user's views at or before it (ordered by
time, then event id), so a micro-batch replayed after a crash triggers the same users
even when later events have arrived since. Per user and micro-batch one refresh runs, for
the user's last triggering event.

Example
-------
>>> window = ViewWindow(views=5, window_s=600)
>>> triggers = find_triggers(events_pdf, window, ["search", "purchase"], ["view", "click"])
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Trigger:
    user_id: str
    event_id: str
    event_type: str
    ts: dt.datetime


class ViewWindow:
    """Each user's recent detail views (event id -> (ts, event id)), deduplicated by id.

    Parameters
    ----------
    views : int
        Views in the window that fire a trigger.
    window_s : float
        Length of the sliding window in seconds.
    """

    def __init__(self, views: int, window_s: float):
        self.views = views
        self.window = dt.timedelta(seconds=window_s)
        self._by_user: dict[str, dict[str, dt.datetime]] = {}

    def add(self, user_id: str, event_id: str, ts: dt.datetime) -> None:
        self._by_user.setdefault(user_id, {})[event_id] = ts

    def count(self, user_id: str, event_id: str, ts: dt.datetime) -> int:
        """Views of the user in ``(ts - window, ts]``, up to and including this event."""
        seen = self._by_user.get(user_id, {})
        start = ts - self.window
        return sum(1 for eid, t in seen.items() if start < t and (t, eid) <= (ts, event_id))

    def prune(self, before: dt.datetime) -> None:
        """Forget views older than ``before - window`` (they can never count again)."""
        cutoff = before - self.window
        for user_id in list(self._by_user):
            kept = {e: t for e, t in self._by_user[user_id].items() if t > cutoff}
            if kept:
                self._by_user[user_id] = kept
            else:
                del self._by_user[user_id]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_user.values())


def find_triggers(
    events: pd.DataFrame, window: ViewWindow, trigger_types: list[str], view_types: list[str]
) -> list[Trigger]:
    """The triggering event of each triggered user in ``events`` (one micro-batch).

    ``events`` holds event_id, user_id, event_type, ts. Its views are added to ``window``
    first; then every event is judged in (ts, event id) order. Returns one
    :class:`Trigger` per user (the user's last triggering event), ordered by time.
    """
    if events.empty:
        return []
    ordered = events.sort_values(["ts", "event_id"], kind="stable")
    views = ordered[ordered["event_type"].isin(view_types)]
    for row in views.itertuples(index=False):
        window.add(row.user_id, row.event_id, row.ts)
    last: dict[str, Trigger] = {}
    for row in ordered.itertuples(index=False):
        fires = row.event_type in trigger_types or (
            row.event_type in view_types and window.count(row.user_id, row.event_id, row.ts) == window.views
        )
        if fires:
            ts = pd.Timestamp(row.ts).to_pydatetime()
            last[row.user_id] = Trigger(row.user_id, row.event_id, row.event_type, ts)
    if not ordered.empty:
        window.prune(ordered["ts"].max())
    return sorted(last.values(), key=lambda t: (t.ts, t.event_id))
