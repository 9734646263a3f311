"""One buyer's list from their scored candidates: the ranking both the batch ``rank`` stage
(through ``applyInPandas``) and the nearline refresh call, so the two cannot drift.

1. **Score**: the learned ranker (an xgboost ``Booster``) scores each candidate from the
   model's own feature columns, in the order it was trained on; or, for a ranker whose
   training had too few labelled buyers to validate a learned order (``order="channels"``,
   see ``jobs/ranker.py``), the *channel order*: the buyer's own items first, by the repeat
   channel's score, then the other candidates by their best rank in another channel.
2. **Near-duplicates**: items with the same normalised title (the same product in another
   size or pack) count once; the best-scoring one is kept.
3. **Slot-aware fill**, position by position in score order (ties by item id), so that
   every prefix of the list, not only the whole, keeps the quotas (a slot the discovery
   quota reserves is filled in the order of the *explore head*, a second model trained on
   new-category candidates only, when there is one):
   - at most ``floor(repeat_share x n + 0.5)`` of the first ``n`` items are the buyer's
     own (``own_events > 0``),
   - at least ``floor(discovery_share x n)`` of them are in a category new to the buyer
     (``is_new_category``),
   - at most ``max_per_category`` items of one category.
   A quota that no remaining candidate can meet is relaxed for that slot rather than
   leaving it empty (a full list beats an empty slot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# The candidate channels (jobs/candidates.py), in the order that breaks ties of the shown one.
CHANNELS = ("repeat", "collaborative", "query", "trend", "bestseller")

_BOOSTERS: dict[int, object] = {}  # hash of the model bytes -> Booster, per Python worker


@dataclass(frozen=True)
class ListRules:
    """The list's length and quotas (see the module docstring)."""

    top_k: int
    repeat_share: float = 1.0
    discovery_share: float = 0.0
    max_per_category: int = 5
    dedup_titles: bool = True


def booster(model: bytes):
    """The xgboost Booster of the model's raw bytes (``Booster.save_raw``), loaded once per worker."""
    key = hash(model)
    if key not in _BOOSTERS:
        import xgboost

        b = xgboost.Booster()
        b.load_model(bytearray(model))
        _BOOSTERS[key] = b
    return _BOOSTERS[key]


def score(candidates: pd.DataFrame, model: bytes, features: list[str]) -> np.ndarray:
    """The model's score of each candidate row (missing features as NaN)."""
    if candidates.empty:
        return np.zeros(0)
    x = candidates[list(features)].astype("float64").to_numpy()
    return np.asarray(booster(model).inplace_predict(x), dtype=np.float64)


def _ordered(candidates: pd.DataFrame, scores: np.ndarray, explore: np.ndarray | None, rules: ListRules):
    """The candidates with ``score`` and ``_explore``, each buyer's rows together in score
    order (ties by item id) and, with ``dedup_titles``, a normalised title once per buyer
    (the best-scoring row of it kept)."""
    c = candidates.assign(score=scores, _explore=scores if explore is None else explore)
    keys, ascending = ["score", "item_id"], [False, True]
    if "user_id" in c:
        keys, ascending = ["user_id", *keys], [True, *ascending]
    c = c.sort_values(keys, ascending=ascending, kind="mergesort")
    if rules.dedup_titles and "norm_title" in c:
        by = ["user_id", "norm_title"] if "user_id" in c else ["norm_title"]
        c = c[~(c["norm_title"].notna() & c.duplicated(by))]
    return c


def _choose(
    own: np.ndarray, new_cat: np.ndarray, cats: list, explore: np.ndarray, rules: ListRules
) -> list[int]:
    """Positions (into one buyer's rows in score order) of the list, slot by slot (see the
    module docstring)."""
    own_l, new_l = own.tolist(), new_cat.tolist()
    left = list(range(len(own_l)))
    # The new-category positions in the explore head's order (ties: the general order).
    new_pos = np.flatnonzero(new_cat)
    by_explore = new_pos[np.argsort(-explore[new_pos], kind="stable")].tolist()
    chosen: list[int] = []
    per_cat: dict = {}
    n_own = n_new = 0
    while len(chosen) < rules.top_k and left:
        n = len(chosen) + 1
        own_room = n_own < math.floor(rules.repeat_share * n + 0.5)
        need_new = n_new < math.floor(rules.discovery_share * n + 1e-9)
        left = [i for i in left if per_cat.get(cats[i], 0) < rules.max_per_category]
        pick = None
        if need_new:
            room = set(left)
            pick = next((i for i in by_explore if i in room), None)
        if pick is None:  # no reserved slot, or no new-category item left: the general order
            pick = next((i for i in left if own_room or not own_l[i]), None)
        if pick is None:  # only own items left and no room for them: relax the repeat quota
            pick = left[0] if left else None
        if pick is None:
            break
        left.remove(pick)
        chosen.append(pick)
        per_cat[cats[pick]] = per_cat.get(cats[pick], 0) + 1
        n_own += own_l[pick]
        n_new += new_l[pick]
    return chosen


def _lists(c: pd.DataFrame, rules: ListRules) -> pd.DataFrame:
    """The list of every buyer of :func:`_ordered`'s frame, ``position`` added."""
    own = c["own_events"].to_numpy() > 0
    new_cat = c["is_new_category"].to_numpy() > 0
    cats = c["leaf_category"].tolist()
    explore = c["_explore"].to_numpy(dtype=np.float64)
    if "user_id" in c:
        users = c["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    else:
        starts = np.array([0])
    ends = np.r_[starts[1:], len(c)]
    rows: list[int] = []
    positions: list[int] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        chosen = _choose(own[a:b], new_cat[a:b], cats[a:b], explore[a:b], rules)
        rows.extend(a + i for i in chosen)
        positions.extend(range(1, len(chosen) + 1))
    out = c.iloc[rows].drop(columns="_explore")
    out["position"] = np.asarray(positions, dtype=np.int32)
    return out


def fill(
    candidates: pd.DataFrame, scores: np.ndarray, rules: ListRules, explore: np.ndarray | None = None
) -> pd.DataFrame:
    """Each buyer's list from their candidates and scores (one buyer, or several told apart
    by ``user_id``); returns the chosen rows in list order, buyer by buyer, with ``score``
    and ``position`` (1..n per buyer) added.

    ``explore``: the explore head's scores; a slot the discovery quota reserves takes the
    new-category item it scores highest (without it, the one ``scores`` ranks highest).
    """
    if candidates.empty:
        return candidates.assign(score=pd.Series(dtype="float64"), position=pd.Series(dtype="int32"))
    return _lists(_ordered(candidates, scores, explore, rules), rules)


@dataclass(frozen=True)
class Ranker:
    """A trained ranker: the general head, the explore head (None: the general one fills
    the discovery slots too) and the feature columns both read, in order. ``order``:
    ``"model"`` (the general head orders the list) or ``"channels"`` (:func:`channel_order`
    does; the explore head, if any, still fills the reserved discovery slots)."""

    model: bytes
    explore: bytes | None
    features: tuple[str, ...]
    order: str = "model"

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"Ranker.order must be one of {ORDERS}, not {self.order!r}")


ORDERS = ("model", "channels")


def channel_order(candidates: pd.DataFrame) -> np.ndarray:
    """The untrained order: a score in [2, 3) for the buyer's own items (the repeat channel
    proposed them), rising with the repeat channel's score; in (0, 1) for the rest, falling
    with their best (lowest) rank in any other channel; 0 for a row no channel ranked."""
    if candidates.empty:
        return np.zeros(0)
    repeat = candidates["repeat_score"].astype("float64").to_numpy()
    others = candidates[[f"{c}_rank" for c in CHANNELS if c != "repeat"]].astype("float64")
    best = others.min(axis=1, skipna=True).to_numpy()
    rest = np.where(np.isnan(best), 0.0, 1.0 / (1.0 + np.nan_to_num(best, nan=0.0)))
    r = np.clip(np.nan_to_num(repeat, nan=0.0), 0, None)
    return np.where(~np.isnan(repeat), 2.0 + r / (1.0 + r), rest)


def shown_channel(row) -> str:
    """The channel a listed item is shown as coming from: ``repeat`` when the repeat channel
    proposed it (the buyer's own item), else the channel that ranks it highest, ties in
    ``CHANNELS`` order. ``row``: a mapping with each channel's ``<channel>_rank`` (NaN or
    None when the channel did not propose it)."""
    best, best_rank = None, math.inf
    for c in CHANNELS:
        r = row.get(f"{c}_rank")
        if r is None or (isinstance(r, float) and math.isnan(r)):
            continue
        if c == "repeat":
            return c
        if r < best_rank:
            best, best_rank = c, r
    return best or "bestseller"


def with_reason(listed: pd.DataFrame) -> pd.DataFrame:
    """+ ``channel`` (:func:`shown_channel`) and its ``reason`` from the row's ``reasons``
    (channel -> reason)."""
    records = listed.to_dict("records")
    channels = [shown_channel(r) for r in records]
    reasons = [dict(r.get("reasons") or {}).get(c) for r, c in zip(records, channels, strict=True)]
    return listed.assign(channel=channels, reason=reasons)


def rank_users(candidates: pd.DataFrame, ranker: Ranker, rules: ListRules) -> pd.DataFrame:
    """The lists of every buyer in ``candidates`` (grouped by ``user_id``), each row with the
    channel it is shown as coming from and that channel's reason."""
    if ranker.order == "channels":
        general = channel_order(candidates)
    else:
        general = score(candidates, ranker.model, list(ranker.features))
    explore = None if ranker.explore is None else score(candidates, ranker.explore, list(ranker.features))
    return with_reason(fill(candidates, general, rules, explore).reset_index(drop=True))
