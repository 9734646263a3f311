"""jobs/evaluate.tune_baselines: settings are chosen on the validation split only."""

from __future__ import annotations

import datetime as dt

import pytest

from core.config import EvaluateConf
from jobs import evaluate

D0 = dt.date(2024, 3, 1)
SCHEMA = "user_id string, item_id string, event_type string, quantity long, amount double, dt date"


def _events(spark, rows):
    """rows: (user, item, day offset); every row a purchase of 1."""
    return spark.createDataFrame(
        [(u, i, "purchase", 1, 1.0, D0 + dt.timedelta(days=d)) for u, i, d in rows], SCHEMA
    )


def _conf() -> EvaluateConf:
    # repeat with a 1-day half-life (recent first) or none (frequent first), K = 1
    return EvaluateConf(
        baselines=["repeat", "popularity"],
        k=1,
        validation_days=5,
        tuning={"grids": {"repeat": {"half_life_days": [1.0, None]}}},
    )


# Before the validation window (day 15): u bought A three times long ago, B once recently;
# in the validation window [15, 20) u buys B again: the recent item is the right guess.
HISTORY = [("u", "A", 0), ("u", "A", 1), ("u", "A", 2), ("u", "B", 14), ("u", "B", 16)]
# In the test period (from day 20, the first cut, on): u goes back to A on days 25-29.
TEST_PERIOD = [("u", "A", d) for d in range(25, 30)]


@pytest.mark.slow
def test_no_test_period_purchase_moves_the_choice_or_any_score(spark):
    first_cut = D0 + dt.timedelta(days=20)
    chosen, table = evaluate.tune_baselines(spark, _conf(), _events(spark, HISTORY), first_cut, D0)
    # popularity has nothing to tune; repeat: half-life 1 lists B (a hit), none lists A (a miss)
    assert chosen == {"repeat": {"half_life_days": 1.0}}
    assert table["score"].tolist() == [1.0, 0.0] and table["chosen"].tolist() == [True, False]

    poisoned = _events(spark, HISTORY + TEST_PERIOD)
    chosen_p, table_p = evaluate.tune_baselines(spark, _conf(), poisoned, first_cut, D0)
    assert chosen_p == chosen
    assert table_p.equals(table)


@pytest.mark.slow
def test_the_same_purchases_inside_the_validation_window_would_change_the_choice(spark):
    # The check above can fail: with the first cut at day 30 the validation window
    # [25, 30) holds the A purchases, and the frequent item wins.
    poisoned = _events(spark, HISTORY + TEST_PERIOD)
    chosen, table = evaluate.tune_baselines(spark, _conf(), poisoned, D0 + dt.timedelta(days=30), D0)
    assert chosen == {"repeat": {"half_life_days": None}}
    assert table["score"].tolist() == [0.0, 1.0]


def test_tuning_off_or_no_validation_window_keeps_the_defaults(spark):
    events = _events(spark, HISTORY)
    off = EvaluateConf(**{**_conf().model_dump(), "tuning": {"enabled": False}})
    assert evaluate.tune_baselines(spark, off, events, D0 + dt.timedelta(days=20), D0)[0] == {}
    # the validation window would start before the data
    chosen, table = evaluate.tune_baselines(spark, _conf(), events, D0 + dt.timedelta(days=3), D0)
    assert chosen == {} and table.empty
