"""Paired bootstrap over users: a 95 % interval for every metric and every difference.

Every per-user metric is a mean over the users for whom it is defined (a null, NaN here,
marks a user the metric does not apply to, e.g. ``new_category_hit`` for a buyer with no
test purchase in a new category). A bootstrap resample draws ``n`` users with replacement
(``n`` the evaluation users of the cut) and recomputes each mean over the drawn users
where it is defined. The *same* draws serve every method, so a difference between two
methods is resampled pairwise, user by user (a paired test: the user-to-user variation
that both methods share cancels).

Several cuts: the users of each cut are resampled independently; the mean over cuts of
resample ``b`` is one draw of the mean over cuts.

The interval is the percentile interval of the draws (2.5 % and 97.5 % for 95 %). A
difference is called ``better`` (``worse``) only when its whole interval lies above
(below) zero, otherwise ``not distinguishable``: never from the point value alone.

Memory: the draws are made in blocks of resamples with at most ``MAX_BLOCK_CELLS``
(resamples x users) counts each, so a million users need about 160 MB per block, never
``n_resamples x n`` at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

BETTER, WORSE, SAME = "better", "worse", "not distinguishable"
MAX_BLOCK_CELLS = 20_000_000


def resample_means(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(point, draws) for the column means of ``values`` (users x series, NaN = undefined).

    ``point[j]``: mean of column ``j`` over its defined values (NaN when none);
    ``draws[b, j]``: the same mean over the users of resample ``b`` (NaN when no drawn
    user has a defined value). Every column shares the same resamples; a given ``seed``
    and number of users always give the same resamples.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be users x series, got shape {values.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    n, m = values.shape
    defined = ~np.isnan(values)
    filled = np.where(defined, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = filled.sum(axis=0) / defined.sum(axis=0)
    draws = np.full((n_resamples, m), np.nan)
    if n == 0:
        return point, draws
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, MAX_BLOCK_CELLS // n))
    probabilities = np.full(n, 1.0 / n)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        # counts[b, u]: how often user u is drawn in resample b (a multinomial of n draws).
        counts = rng.multinomial(n, probabilities, size=size).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws[start : start + size] = (counts @ filled) / (counts @ defined)
    return point, draws


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of ``draws`` (NaN draws ignored; NaN if all are)."""
    tail = (1.0 - level) / 2.0 * 100.0
    draws = np.asarray(draws, dtype=np.float64)
    lo = np.full(draws.shape[1:], np.nan)
    hi = np.full(draws.shape[1:], np.nan)
    some = ~np.all(np.isnan(draws), axis=0)
    if np.any(some):
        lo[some] = np.nanpercentile(draws[:, some], tail, axis=0)
        hi[some] = np.nanpercentile(draws[:, some], 100.0 - tail, axis=0)
    return lo, hi


def verdict(lo: float, hi: float) -> str:
    """``better`` when the difference's interval is above 0, ``worse`` below, else not distinguishable."""
    if np.isnan(lo) or np.isnan(hi):
        return SAME
    if lo > 0:
        return BETTER
    if hi < 0:
        return WORSE
    return SAME


MEAN = "mean"
SUMMARY_COLUMNS = (
    "cut", "method", "k", "metric", "value", "lo", "hi", "diff", "diff_lo", "diff_hi", "verdict",
)  # fmt: skip


def summarize(
    per_user: pd.DataFrame,
    metrics: Sequence[str],
    reference: str,
    n_resamples: int = 1000,
    seed: int = 7,
    level: float = 0.95,
    higher_is_better: Iterable[str] = (),
) -> pd.DataFrame:
    """Every metric of every (cut, method, k) with its interval, and its difference to ``reference``.

    ``per_user``: one row per (cut, method, k, user_id) with the ``metrics`` columns (NaN
    where a metric is undefined for the user). Users are resampled across all cuts at
    once (a buyer evaluated at two cuts is drawn or not in both), which keeps the
    dependence between cuts that share buyers in the interval of their mean.

    Returns ``SUMMARY_COLUMNS``: ``value`` is the mean over the defined users (exactly the
    mean of the per-user table), ``lo``/``hi`` its interval; ``diff = reference - method``
    with its paired interval and ``verdict`` (null on the reference's own rows). For the
    metrics in ``higher_is_better`` the verdict is ``better`` / ``worse`` (for the
    reference); for the others, whose direction is no quality (list length, repeat share),
    ``higher`` / ``lower``. The rows with ``cut = "mean"`` average the cuts: the point
    values, and draw by draw for the interval.
    """
    keys = ["cut", "method", "k"]
    missing = {"user_id", *keys, *metrics} - set(per_user.columns)
    if missing:
        raise ValueError(f"per_user lacks the columns {sorted(missing)}")
    if per_user.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    frame = per_user.assign(cut=per_user["cut"].astype(str))
    wide = frame.set_index(["user_id", *keys])[list(metrics)].unstack(keys)
    point, draws = resample_means(wide.to_numpy(dtype=np.float64), n_resamples, seed)
    columns = list(wide.columns)  # (metric, cut, method, k)

    # Per cut, then the mean over cuts of every (metric, method, k).
    series: dict[tuple, tuple[float, np.ndarray]] = {}
    for j, (metric, cut, method, k) in enumerate(columns):
        series[(cut, method, k, metric)] = (point[j], draws[:, j])
    by_rest: dict[tuple, list[tuple[float, np.ndarray]]] = {}
    for (_cut, method, k, metric), pair in list(series.items()):
        by_rest.setdefault((method, k, metric), []).append(pair)
    for (method, k, metric), pairs in by_rest.items():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric undefined at every cut
            value = float(np.nanmean([p for p, _ in pairs]))
            mean_draws = np.nanmean(np.stack([d for _, d in pairs], axis=1), axis=1)
        series[(MEAN, method, k, metric)] = (value, mean_draws)

    labels = list(series)
    values = np.array([series[key][0] for key in labels])
    all_draws = np.stack([series[key][1] for key in labels], axis=1)
    lo, hi = interval(all_draws, level)
    index = {key: i for i, key in enumerate(labels)}
    better = set(higher_is_better)
    rows = []
    for i, (cut, method, k, metric) in enumerate(labels):
        row = {"cut": cut, "method": method, "k": int(k), "metric": metric,
               "value": values[i], "lo": lo[i], "hi": hi[i],
               "diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan, "verdict": None}  # fmt: skip
        ref = index.get((cut, reference, k, metric))
        if method != reference and ref is not None:
            diff_draws = all_draws[:, ref] - all_draws[:, i]
            d_lo, d_hi = interval(diff_draws[:, None], level)
            call = verdict(float(d_lo[0]), float(d_hi[0]))
            if metric not in better:
                call = {BETTER: "higher", WORSE: "lower"}.get(call, call)
            row.update(diff=values[ref] - values[i], diff_lo=d_lo[0], diff_hi=d_hi[0], verdict=call)
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return out.sort_values(["cut", "k", "method", "metric"], key=_mean_last).reset_index(drop=True)


def _mean_last(column: pd.Series) -> pd.Series:
    """Sort key: the ``mean`` rows after the dated cuts."""
    if column.name == "cut":
        return column.map(lambda c: (c == MEAN, c))
    return column
