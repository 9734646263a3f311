"""udfs/ranking.py: the one list-filling rule of batch and nearline (quotas on every
prefix, near-duplicates, category cap), and udfs/features.normalise_title."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from udfs.features import normalise_title
from udfs.ranking import ListRules, Ranker, fill, rank_users, score


def _cands(rows):
    """rows: (item_id, score, own, new_category, category[, title])."""
    out = []
    for r in rows:
        item, s, own, new, cat = r[:5]
        out.append(
            {
                "user_id": "u",
                "item_id": item,
                "own_events": float(own),
                "is_new_category": float(new),
                "leaf_category": cat,
                "norm_title": r[5] if len(r) > 5 else item,
                "s": s,
            }  # fmt: skip
        )
    df = pd.DataFrame(out)
    return df.drop(columns="s"), df["s"].to_numpy(dtype=float)


def _items(listed):
    return listed["item_id"].tolist()


def test_without_quotas_the_list_is_the_top_k_by_score_ties_by_item_id():
    c, s = _cands(
        [("b", 0.5, 0, 0, "x"), ("a", 0.5, 0, 0, "y"), ("c", 0.9, 0, 0, "z"), ("d", 0.1, 0, 0, "w")]
    )
    listed = fill(c, s, ListRules(top_k=3))
    assert _items(listed) == ["c", "a", "b"]
    assert listed["position"].tolist() == [1, 2, 3]


def test_repeat_share_caps_own_items_on_every_prefix():
    # Own items score highest; repeat share 0.5: at most floor(0.5 n + 0.5) of the first n.
    c, s = _cands(
        [("o1", 0.9, 1, 0, "a"), ("o2", 0.8, 1, 0, "b"), ("o3", 0.7, 1, 0, "c"),
         ("n1", 0.2, 0, 0, "d"), ("n2", 0.1, 0, 0, "e")]
    )  # fmt: skip
    listed = fill(c, s, ListRules(top_k=4, repeat_share=0.5))
    # n=1: 1 own allowed -> o1; n=2: floor(1.5)=1 -> n1; n=3: floor(2)=2 -> o2; n=4: floor(2.5)=2 -> n2.
    assert _items(listed) == ["o1", "n1", "o2", "n2"]


def test_discovery_share_reserves_new_category_slots_on_every_prefix():
    c, s = _cands(
        [("k1", 0.9, 0, 0, "a"), ("k2", 0.8, 0, 0, "b"), ("k3", 0.7, 0, 0, "c"), ("k4", 0.6, 0, 0, "d"),
         ("new1", 0.2, 0, 1, "e"), ("new2", 0.1, 0, 1, "f")]
    )  # fmt: skip
    listed = fill(c, s, ListRules(top_k=5, discovery_share=0.4))
    # n=1: floor(0.4)=0 -> k1; n=2: floor(0.8)=0 -> k2; n=3: floor(1.2)=1 -> new1;
    # n=4: floor(1.6)=1 -> k3; n=5: floor(2.0)=2 -> new2.
    assert _items(listed) == ["k1", "k2", "new1", "k3", "new2"]


def test_reserved_discovery_slots_follow_the_explore_heads_order():
    c, s = _cands(
        [("k1", 0.9, 0, 0, "a"), ("k2", 0.8, 0, 0, "b"), ("new1", 0.5, 0, 1, "e"), ("new2", 0.1, 0, 1, "f")]
    )
    explore = np.array([0.0, 0.0, 0.2, 0.7])  # the explore head prefers new2
    listed = fill(c, s, ListRules(top_k=3, discovery_share=0.5), explore)
    # n=1: no slot reserved -> k1 (general order); n=2: floor(1.0)=1 -> new2 (explore order);
    # n=3: none reserved -> k2 beats new1 in the general order.
    assert _items(listed) == ["k1", "new2", "k2"]


def test_a_quota_no_candidate_meets_is_relaxed_rather_than_leaving_a_slot_empty():
    c, s = _cands([("o1", 0.9, 1, 0, "a"), ("o2", 0.8, 1, 0, "b"), ("o3", 0.7, 1, 0, "c")])
    listed = fill(c, s, ListRules(top_k=3, repeat_share=0.0, discovery_share=1.0))
    assert _items(listed) == ["o1", "o2", "o3"]


def test_near_duplicates_count_once_and_the_best_scoring_is_kept():
    c, s = _cands(
        [("a", 0.5, 0, 0, "x", "regular garden"), ("b", 0.9, 0, 0, "x", "regular garden"),
         ("c", 0.7, 0, 0, "y", "pizza"), ("d", 0.1, 0, 0, "z", None), ("e", 0.05, 0, 0, "z", None)]
    )  # fmt: skip
    listed = fill(c, s, ListRules(top_k=5))
    assert _items(listed) == ["b", "c", "d", "e"]  # untitled items are never merged
    assert _items(fill(c, s, ListRules(top_k=5, dedup_titles=False))) == ["b", "c", "a", "d", "e"]


def test_at_most_max_per_category_items_of_one_category():
    c, s = _cands(
        [("a", 0.9, 0, 0, "x"), ("b", 0.8, 0, 0, "x"), ("c", 0.7, 0, 0, "x"), ("d", 0.1, 0, 0, "y")]
    )
    assert _items(fill(c, s, ListRules(top_k=4, max_per_category=2))) == ["a", "b", "d"]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Regular Garden 10 Oz", "REGULAR GARDEN 12oz"),
        ("SET OF 3 CAKE TINS PANTRY DESIGN", "set of 6 cake tins pantry design"),
        ("Frozen Pizza Pepperoni 2 x 350 g", "Frozen Pizza Pepperoni, 4 pack"),
    ],
)
def test_the_same_product_in_another_size_or_pack_has_the_same_normalised_title(a, b):
    assert normalise_title(a) == normalise_title(b) is not None


def test_different_products_keep_different_normalised_titles():
    assert normalise_title("Frozen Pizza Pepperoni") != normalise_title("Frozen Pizza Margherita")
    assert normalise_title("12 oz") is None and normalise_title(None) is None


def test_the_model_scores_rows_from_its_own_feature_columns_and_ranks_each_user_apart():
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] > 0).astype(float)  # only feature "good" matters
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 2}, xgboost.DMatrix(x, y), 20)
    model = bytes(booster.save_raw("json"))
    c = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "b", "c", "d"],
            "noise": [0.0, 0.0, 0.0, 0.0],
            "good": [-2.0, 2.0, 2.0, -2.0],
            "own_events": 0.0,
            "is_new_category": 0.0,
            "leaf_category": "x",
            "norm_title": ["a", "b", "c", "d"],
        }  # fmt: skip
    )
    s = score(c, model, ["good", "noise"])
    assert s[1] > s[0] and s[2] > s[3]
    listed = rank_users(c, Ranker(model, None, ("good", "noise")), ListRules(top_k=1))
    assert list(zip(listed["user_id"], listed["item_id"], strict=True)) == [("u1", "b"), ("u2", "c")]


def test_the_channel_order_puts_own_items_first_by_repeat_score_then_the_best_ranked_rest():
    from udfs.features import FEATURE_COLUMNS
    from udfs.ranking import CHANNELS, channel_order

    nan = float("nan")
    # item: repeat_score, then the other channels' ranks (collaborative, query, trend, bestseller)
    spec = {
        "own_weak": (0.5, 1, nan, nan, nan),   # own, proposed first by collaborative too
        "own_strong": (9.0, nan, nan, nan, nan),
        "collab_2": (nan, 2, nan, nan, nan),
        "best_1": (nan, nan, nan, nan, 1),     # rank 1 of the bestseller channel
        "query_3_trend_5": (nan, nan, 3, 5, nan),
        "unranked": (nan, nan, nan, nan, nan),
    }  # fmt: skip
    rows = []
    for item, (rep, *ranks) in spec.items():
        row = dict.fromkeys(FEATURE_COLUMNS, nan)
        row.update(repeat_score=rep, **{f"{c}_rank": r for c, r in zip(CHANNELS[1:], ranks, strict=True)})
        row.update(user_id="u", item_id=item, own_events=float(rep == rep), is_new_category=0.0,
                   leaf_category=item, norm_title=item)  # fmt: skip
        rows.append(row)
    c = pd.DataFrame(rows)
    s = channel_order(c)
    assert s[0] < s[1] and min(s[:2]) >= 2 > max(s[2:])
    expected = ["own_strong", "own_weak", "best_1", "collab_2", "query_3_trend_5", "unranked"]
    assert _items(fill(c, s, ListRules(top_k=6))) == expected
    # A ranker in channel order ignores its model, which here prefers the last item.
    import xgboost

    x = np.zeros((2, len(FEATURE_COLUMNS)))
    x[1, FEATURE_COLUMNS.index("n_channels")] = 1.0
    booster = xgboost.train({"max_depth": 1}, xgboost.DMatrix(x, np.array([1.0, 0.0])), 3)
    c["n_channels"] = 1.0
    c.loc[c["item_id"] == "unranked", "n_channels"] = 0.0
    model = bytes(booster.save_raw("json"))
    assert _items(rank_users(c, Ranker(model, None, FEATURE_COLUMNS), ListRules(top_k=1))) == ["unranked"]
    in_order = rank_users(c, Ranker(model, None, FEATURE_COLUMNS, order="channels"), ListRules(top_k=6))
    assert _items(in_order) == expected
    with pytest.raises(ValueError, match="order"):
        Ranker(model, None, FEATURE_COLUMNS, order="learned")


def test_the_shown_channel_is_repeat_for_an_own_item_else_the_one_ranking_it_highest():
    from udfs.ranking import shown_channel, with_reason

    nan = float("nan")
    assert shown_channel({"repeat_rank": 40.0, "query_rank": 1.0}) == "repeat"
    assert shown_channel({"repeat_rank": nan, "query_rank": 3.0, "bestseller_rank": 2.0}) == "bestseller"
    # A tie goes to the earlier channel of CHANNELS (collaborative before query).
    assert (
        shown_channel({"collaborative_rank": 2.0, "query_rank": 2.0, "trend_rank": None}) == "collaborative"
    )
    listed = pd.DataFrame([{"query_rank": 1.0, "reasons": {"query": "You buy bags", "trend": "Rising"}}])
    assert with_reason(listed)[["channel", "reason"]].values.tolist() == [["query", "You buy bags"]]


def test_buyers_ranked_together_get_the_lists_they_get_alone():
    # rank_users sorts and de-duplicates every buyer at once: a title one buyer has twice
    # counts once for them, but another buyer's copy of it is theirs to keep.
    rng = np.random.default_rng(7)
    rows = []
    for u in ("u1", "u2", "u3"):
        for j in range(12):
            rows.append(
                {"user_id": u, "item_id": f"{u}-{j:02d}", "own_events": float(j % 3 == 0),
                 "is_new_category": float(j % 4 == 1), "leaf_category": f"c{j % 3}",
                 "norm_title": "shared" if j < 2 else f"{u}-t{j}", "good": float(rng.integers(0, 4))}
            )  # fmt: skip
    c = pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)  # buyers interleaved
    model = _one_feature_model()
    rules = ListRules(top_k=6, repeat_share=0.5, discovery_share=0.34, max_per_category=3)
    together = rank_users(c, Ranker(model, None, ("good",)), rules)
    for u, g in c.groupby("user_id"):
        alone = fill(g, score(g, model, ["good"]), rules)
        assert together.loc[together["user_id"] == u, "item_id"].tolist() == alone["item_id"].tolist()
        assert together.loc[together["user_id"] == u, "position"].tolist() == list(range(1, 7))
    shared = together[together["norm_title"] == "shared"]
    assert sorted(shared["user_id"]) == ["u1", "u2", "u3"]  # once per buyer, not once overall


def _one_feature_model() -> bytes:
    """A model whose score rises with the feature ``good`` (ties stay ties)."""
    import xgboost

    x = np.arange(8, dtype=float).reshape(-1, 1) % 4
    booster = xgboost.train(
        {"objective": "reg:squarederror", "max_depth": 2}, xgboost.DMatrix(x, x[:, 0]), 10
    )
    return bytes(booster.save_raw("json"))
