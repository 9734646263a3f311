"""jobs/evaluate/bootstrap.py: paired bootstrap intervals and the verdicts drawn from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.evaluate import bootstrap


def _per_user(values: dict[str, list[float]], cut="2024-01-01", k=20, metric="recall") -> pd.DataFrame:
    rows = []
    for method, per_user in values.items():
        for u, v in enumerate(per_user):
            rows.append({"cut": cut, "method": method, "k": k, "user_id": f"u{u:03d}", metric: v})
    return pd.DataFrame(rows)


def _row(summary, method, cut="2024-01-01", metric="recall", k=20):
    hit = summary[
        (summary.method == method) & (summary.cut == cut) & (summary.metric == metric) & (summary.k == k)
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def test_point_value_is_the_mean_over_defined_users_and_nan_means_undefined():
    values = np.array([[1.0, np.nan], [0.0, 1.0], [0.5, np.nan], [0.5, 0.0]])
    point, draws = bootstrap.resample_means(values, n_resamples=50, seed=1)
    # column 0: (1 + 0 + 0.5 + 0.5) / 4; column 1: over the two defined users (1 + 0) / 2
    assert point.tolist() == [0.5, 0.5]
    assert draws.shape == (50, 2)
    # every draw is a mean of drawn values, so it stays within their range
    assert np.nanmin(draws) >= 0.0 and np.nanmax(draws) <= 1.0
    # the same seed gives the same draws, another seed others
    assert np.array_equal(bootstrap.resample_means(values, 50, 1)[1], draws, equal_nan=True)
    assert not np.array_equal(bootstrap.resample_means(values, 50, 2)[1], draws, equal_nan=True)


def test_identical_methods_are_not_distinguishable():
    rng = np.random.default_rng(0)
    same = rng.binomial(1, 0.3, 300).astype(float).tolist()
    summary = bootstrap.summarize(
        _per_user({"pipeline": same, "copy": same}), ["recall"], "pipeline", higher_is_better=["recall"]
    )
    row = _row(summary, "copy")
    assert row["diff"] == 0.0 and row["diff_lo"] <= 0.0 <= row["diff_hi"]
    assert row["verdict"] == bootstrap.SAME


def test_same_mean_on_different_users_covers_zero():
    # Each method hits exactly the users the other misses: equal means, opposite users.
    first = [1.0, 0.0] * 150
    second = [0.0, 1.0] * 150
    summary = bootstrap.summarize(
        _per_user({"pipeline": first, "other": second}), ["recall"], "pipeline", higher_is_better=["recall"]
    )
    row = _row(summary, "other")
    assert row["diff"] == 0.0
    assert row["diff_lo"] < 0.0 < row["diff_hi"] and row["verdict"] == bootstrap.SAME


def test_a_method_better_for_every_user_is_better():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.5, 200)
    summary = bootstrap.summarize(
        _per_user({"pipeline": (base + 0.01).tolist(), "baseline": base.tolist()}),
        ["recall"],
        "pipeline",
        higher_is_better=["recall"],
    )
    row = _row(summary, "baseline")
    assert row["diff"] == pytest.approx(0.01)
    assert row["diff_lo"] > 0.0 and row["verdict"] == bootstrap.BETTER
    # the same data with the roles swapped: worse
    swapped = bootstrap.summarize(
        _per_user({"pipeline": base.tolist(), "baseline": (base + 0.01).tolist()}),
        ["recall"],
        "pipeline",
        higher_is_better=["recall"],
    )
    assert _row(swapped, "baseline")["verdict"] == bootstrap.WORSE
    # a metric without a quality direction is called higher / lower, not better / worse
    plain = bootstrap.summarize(
        _per_user({"pipeline": (base + 0.01).tolist(), "baseline": base.tolist()}), ["recall"], "pipeline"
    )
    assert _row(plain, "baseline")["verdict"] == "higher"


def test_the_95_percent_interval_covers_the_true_mean_about_95_times_in_100():
    # Bernoulli(0.3) per-user hits for 200 users, 200 independent samples: the interval of
    # a correct bootstrap covers 0.3 in about 95 % of them (binomial sd ~1.5 points).
    rng = np.random.default_rng(11)
    covered = 0
    for trial in range(200):
        sample = rng.binomial(1, 0.3, (200, 1)).astype(float)
        _, draws = bootstrap.resample_means(sample, n_resamples=400, seed=trial)
        lo, hi = bootstrap.interval(draws)
        covered += bool(lo[0] <= 0.3 <= hi[0])
    assert 0.89 <= covered / 200 <= 0.99


def test_cuts_share_the_users_draws_and_their_mean_is_averaged_draw_by_draw():
    a = _per_user({"pipeline": [1.0, 0.0, 1.0, 0.0], "base": [0.0, 0.0, 1.0, 0.0]}, cut="2024-01-01")
    b = _per_user({"pipeline": [1.0, 1.0, 0.0, np.nan], "base": [1.0, 0.0, 0.0, np.nan]}, cut="2024-02-01")
    summary = bootstrap.summarize(pd.concat([a, b]), ["recall"], "pipeline", n_resamples=200)
    # per cut: pipeline 2/4 and 2/3 (the fourth user is undefined at the second cut)
    assert _row(summary, "pipeline", "2024-01-01")["value"] == 0.5
    assert _row(summary, "pipeline", "2024-02-01")["value"] == pytest.approx(2 / 3)
    mean = _row(summary, "pipeline", bootstrap.MEAN)
    assert mean["value"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert mean["lo"] <= mean["value"] <= mean["hi"]
    # the reference has no difference to itself
    assert pd.isna(_row(summary, "pipeline", bootstrap.MEAN)["diff"])
    assert _row(summary, "base", bootstrap.MEAN)["diff"] == pytest.approx(
        ((0.5 - 0.25) + (2 / 3 - 1 / 3)) / 2
    )
    # the mean rows come after the dated cuts
    assert summary["cut"].tolist()[-1] == bootstrap.MEAN


def test_bad_input_is_refused_or_empty():
    with pytest.raises(ValueError, match="users x series"):
        bootstrap.resample_means(np.zeros(3))
    with pytest.raises(ValueError, match="lacks the columns"):
        bootstrap.summarize(pd.DataFrame({"method": ["a"]}), ["recall"], "a")
    empty = pd.DataFrame(columns=["cut", "method", "k", "user_id", "recall"])
    assert bootstrap.summarize(empty, ["recall"], "a").empty
    # no user at all: the point value and its interval are undefined, not zero
    point, draws = bootstrap.resample_means(np.zeros((0, 2)), n_resamples=5)
    assert np.isnan(point).all() and np.isnan(draws).all()
