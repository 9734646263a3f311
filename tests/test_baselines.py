"""jobs/evaluate/baselines.py: popularity, co-occurrence, ALS, filter bubble, repeat, item kNN, the registry."""

from __future__ import annotations

import datetime as dt

import pytest

from jobs.evaluate import baselines

TRAIN_SCHEMA = "user_id string, item_id string, event_type string, quantity long, amount double, dt date"
DAY = dt.date(2024, 1, 1)


def train(spark, rows):
    """rows: (user_id, item_id, event_type[, quantity]); a purchase without a quantity buys 1."""
    full = []
    for r in rows:
        user, item, event = r[:3]
        quantity = r[3] if len(r) > 3 else (1 if event == "purchase" else None)
        full.append((user, item, event, quantity, None, DAY))
    return spark.createDataFrame(full, TRAIN_SCHEMA)


def dated_train(spark, rows):
    """rows: (user_id, item_id, event_type, days before DAY); a purchase buys 1."""
    full = [
        (user, item, event, 1 if event == "purchase" else None, None, DAY - dt.timedelta(days=days))
        for user, item, event, days in rows
    ]
    return spark.createDataFrame(full, TRAIN_SCHEMA)


def users(spark, ids):
    return spark.createDataFrame([(u,) for u in ids], "user_id string")


def lists(recs, method=None):
    """{user: [item, ...]} in position order; checks the schema, positions 1..n and the method."""
    assert recs.columns == list(baselines.RECS_COLUMNS)
    out: dict[str, list[str]] = {}
    for r in recs.orderBy("user_id", "position").collect():
        assert r.has_reason is False
        assert method is None or r.method == method
        out.setdefault(r.user_id, []).append(r.item_id)
        assert r.position == len(out[r.user_id])
    return out


def test_popularity_counts_distinct_buyers_and_breaks_ties_by_item_id(spark):
    events = train(
        spark,
        [
            ("u1", "A", "purchase"), ("u1", "A", "purchase"), ("u2", "A", "purchase"), ("u3", "A", "purchase"),
            ("u1", "B", "purchase"), ("u2", "B", "purchase"),
            ("u4", "C", "purchase"), ("u3", "C", "purchase"),
            # D: 5 purchase events but 2 buyers; views and a search never count
            ("u1", "D", "purchase"), ("u1", "D", "purchase"), ("u1", "D", "purchase"), ("u1", "D", "purchase"),
            ("u4", "D", "purchase"),
            ("u1", "E", "view"), ("u2", "E", "view"), ("u3", "E", "view"), ("u4", "E", "view"),
            ("u1", None, "search"),
        ],
    )  # fmt: skip
    recs = baselines.popularity(events, users(spark, ["x", "y"]), k=3)
    # buyers: A 3; B, C, D 2 each (tie -> by item id); E 0
    assert lists(recs) == {"x": ["A", "B", "C"], "y": ["A", "B", "C"]}
    assert {r.method for r in recs.collect()} == {"popularity"}


def test_cooccurrence_normalises_excludes_own_purchases_and_backfills(spark):
    rows = [("b1", "A"), ("b1", "B"), ("b2", "A"), ("b2", "B"), ("b3", "A"), ("b3", "C"), ("u", "A")]
    rows += [(q, "B") for q in ("q1", "q2", "q3", "q4")] + [(p, "D") for p in ("p1", "p2", "p3")]
    events = train(spark, [(user, item, "purchase") for user, item in rows])
    recs = baselines.cooccurrence(events, users(spark, ["u", "new"]), k=4)
    # buyers n: A 4 (b1 b2 b3 u), B 6 (b1 b2 q1-q4), C 1 (b3), D 3 (p1-p3)
    # u bought A: sim(A,B) = 2 / sqrt(4 x 6) = 0.41, sim(A,C) = 1 / sqrt(4 x 1) = 0.5 -> C, B
    # (raw counts would put B first); then popularity B, A, D, C without A (bought), B, C -> D
    got = lists(recs)
    assert got["u"] == ["C", "B", "D"]
    # no purchases: popularity alone
    assert got["new"] == ["B", "A", "D", "C"]


def two_groups(spark):
    """g1-g5 buy and click A and B, h1-h5 C and D; t clicked and viewed A; s only searched."""
    rows = []
    for g in ("g1", "g2", "g3", "g4", "g5"):
        rows += [(g, "A", "purchase"), (g, "B", "purchase"), (g, "A", "click"), (g, "B", "click")]
    for h in ("h1", "h2", "h3", "h4", "h5"):
        rows += [(h, "C", "purchase"), (h, "D", "purchase"), (h, "C", "click"), (h, "D", "click")]
    rows += [("t", "A", "click"), ("t", "A", "view"), ("s", None, "search")]
    return train(spark, rows)


@pytest.mark.slow
def test_als_recommends_the_co_clicked_item(spark):
    events = two_groups(spark)
    recs = baselines.als(events, users(spark, ["t", "h1", "stranger"]), k=3, rank=4, max_iter=10)
    got = lists(recs)
    assert set(got) == {"t", "h1"}  # the stranger is unknown to the model
    for items in got.values():
        assert len(items) <= 3 and len(set(items)) == len(items)
    # t only touched A, which every A buyer also bought with B: B is t's first new item
    assert [i for i in got["t"] if i != "A"][0] == "B"
    assert set(got["h1"][:2]) == {"C", "D"}


def test_filter_bubble_stays_in_the_users_categories_by_share_times_popularity(spark):
    categories = spark.createDataFrame(
        [("A", "mugs"), ("B", "mugs"), ("E", "mugs"), ("C", "lamps"), ("D", "rugs")],
        "item_id string, leaf_category string",
    )
    rows = [
        ("u", "A", "purchase", 3),
        ("u", "C", "purchase", 1), ("u", "C", "purchase", 1),
        ("u", "D", "view"),  # u has purchases: views do not give rugs a share
        ("w", "D", "view"), ("w", "D", "view"), ("w", "A", "click"),  # w never bought
    ]  # fmt: skip
    rows += [(p, "A", "purchase") for p in ("p1", "p2", "p3")]
    rows += [(p, "B", "purchase") for p in ("p1", "p2")] + [("p4", "E", "purchase")]
    rows += [(p, "D", "purchase") for p in ("p1", "p2", "p3", "p4", "p5")]
    recs = baselines.filter_bubble(train(spark, rows), categories, users(spark, ["u", "w"]), k=4)
    got = lists(recs)
    # buyers n: A 4 (u p1 p2 p3), B 2, E 1 -> mugs max 4; C 1 (u) -> lamps max 1; D 5 -> rugs max 5
    # u: quantity share mugs 3/5, lamps 2/5 (event counts would give 1/3, 2/3)
    #    A 0.6 x 4/4 = 0.6, C 0.4 x 1/1 = 0.4, B 0.6 x 2/4 = 0.3, E 0.6 x 1/4 = 0.15; D not a u category
    assert got["u"] == ["A", "C", "B", "E"]
    # w: no purchases -> event share rugs 2/3, mugs 1/3
    #    D 2/3 x 5/5 = 0.67, A 1/3 x 1 = 0.33, B 1/3 x 1/2 = 0.17, E 1/3 x 1/4 = 0.08; C not a w category
    assert got["w"] == ["D", "A", "B", "E"]


def test_repeat_trades_frequency_against_recency_by_half_life(spark):
    rows = [("u", "X", "purchase", 200)] * 3 + [("u", "Y", "purchase", 1)]
    events, targets = dated_train(spark, rows), users(spark, ["u"])
    # half-life 14: X 3 x 4 x 0.5 ** (200 / 14) = 0.0006, Y 4 x 0.5 ** (1 / 14) = 3.81
    assert lists(baselines.repeat(events, targets, 5, DAY, half_life_days=14.0)) == {"u": ["Y", "X"]}
    # default half-life 60: X 12 x 0.5 ** (200 / 60) = 1.19, Y 4 x 0.5 ** (1 / 60) = 3.95
    assert lists(baselines.repeat(events, targets, 5, DAY)) == {"u": ["Y", "X"]}
    # no decay: X 3 x 4 = 12, Y 4
    recs = baselines.repeat(events, targets, 5, DAY, half_life_days=None)
    assert lists(recs, "repeat") == {"u": ["X", "Y"]}


def test_repeat_weights_events_ages_from_as_of_and_cuts_at_k(spark):
    rows = [
        # v, all on DAY (no decay): P purchase 4; V two views 2; W favorite 2; Z cancels count nothing
        ("v", "P", "purchase", 0), ("v", "V", "view", 0), ("v", "V", "view", 0), ("v", "W", "favorite", 0),
        ("v", "Z", "cancel", 0), ("v", "Z", "cancel", 0), ("v", "Z", "cancel", 0),
        # a: B twice, one half-life (14 days) before as_of: 2 x 4 x 0.5 = 4; A once on as_of (age 0): 4
        ("a", "B", "purchase", 14), ("a", "B", "purchase", 14), ("a", "A", "purchase", 0),
        # s: only a search and a cancel -> no list
        ("s", None, "search", 0), ("s", "P", "cancel", 0),
        ("other", "Q", "purchase", 0),  # not a target
    ]  # fmt: skip
    recs = baselines.repeat(dated_train(spark, rows), users(spark, ["v", "a", "s", "new"]), 2, DAY, 14.0)
    # v: P 4, then V and W tie at 2 -> by item id, W cut by k = 2; a: A and B tie at 4 -> A, B
    assert lists(recs) == {"v": ["P", "V"], "a": ["A", "B"]}


@pytest.mark.slow
def test_item_knn_ranks_neighbours_cuts_neighbours_and_excludes_seen(spark):
    rows = [(b, i, "purchase") for b in ("b1", "b2", "b3", "s") for i in ("A", "B")]
    rows += [("c1", "A", "click"), ("c1", "C", "view"), ("t", "A", "cart"), ("new", None, "search")]
    events, targets = train(spark, rows), users(spark, ["t", "s", "c1", "new"])
    # users having: A 6 (b1 b2 b3 s c1 t), B 4 (b1 b2 b3 s), C 1 (c1); together: A-B 4, A-C 1
    # sim(A, B) = 4 / sqrt(6 x 4) = 0.816, sim(A, C) = 1 / sqrt(6 x 1) = 0.408
    # neighbours: A -> B, C; B -> A; C -> A
    # t (A): B 0.816, C 0.408; s (A, B): A 0.816 and B 0.816 (tie by id), C 0.408
    # c1 (A, C): B 0.816, then A 0.408 (from C) and C 0.408 (from A) tie by id; new has no items
    recs = baselines.item_knn(events, targets, 3)
    assert lists(recs, "item_knn") == {"t": ["B", "C"], "s": ["A", "B", "C"], "c1": ["B", "A", "C"]}
    # one neighbour: A -> B only, so C drops out of everyone's list
    one = baselines.item_knn(events, targets, 3, neighbours=1)
    assert lists(one) == {"t": ["B"], "s": ["A", "B"], "c1": ["B", "A"]}
    # without the user's own items
    unseen = baselines.item_knn(events, targets, 3, exclude_seen=True)
    assert lists(unseen) == {"t": ["B", "C"], "s": ["C"], "c1": ["B"]}


def test_item_knn_shrink_favours_the_well_supported_pair(spark):
    rows = [(a, i, "purchase") for a in ("a1", "a2") for i in ("A", "P")]
    rows += [(f"p{n}", "P", "purchase") for n in range(1, 8)]
    rows += [("r1", "A", "purchase"), ("r1", "R", "purchase"), ("t", "A", "purchase")]
    events, targets = train(spark, rows), users(spark, ["t"])
    # users having: A 4 (a1 a2 r1 t), P 9 (a1 a2 p1-p7), R 1 (r1); together: A-P 2, A-R 1
    # shrink 0: sim(A, P) = 2 / sqrt(4 x 9) = 0.33 < sim(A, R) = 1 / sqrt(4 x 1) = 0.5
    assert lists(baselines.item_knn(events, targets, 2)) == {"t": ["R", "P"]}
    # shrink 10: sim(A, P) = 2 / (6 + 10) = 0.125 > sim(A, R) = 1 / (2 + 10) = 0.083
    assert lists(baselines.item_knn(events, targets, 2, shrink=10.0)) == {"t": ["P", "R"]}


def test_grid_expands_every_combination_in_key_order():
    got = baselines.grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert got == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
    ]  # fmt: skip
    # 2 x 2 x 3 ALS settings, 2 x 2 kNN settings, 3 half-lives
    assert {name: len(baselines.grid(space)) for name, space in baselines.TUNABLE.items()} == {
        "als": 12,
        "item_knn": 4,
        "repeat": 3,
    }
    for name, space in baselines.TUNABLE.items():
        assert set(space) <= set(baselines.settings(name))


def test_recommend_dispatches_with_params_and_rejects_unknown_names(spark):
    rows = [("u", "X", "purchase", 200)] * 3 + [("u", "Y", "purchase", 1)]
    events, targets = dated_train(spark, rows), users(spark, ["u"])
    got = baselines.recommend("repeat", events, targets, 5, DAY, params={"half_life_days": None})
    assert sorted(got.collect()) == sorted(
        baselines.repeat(events, targets, 5, DAY, half_life_days=None).collect()
    )
    # X 3 purchases 200 days ago beats Y once yesterday only without decay (see the repeat test)
    assert lists(got) == {"u": ["X", "Y"]}
    with pytest.raises(ValueError, match="allowed: popularity, cooccurrence, als"):
        baselines.recommend("random", events, targets, 5, DAY)
    with pytest.raises(ValueError, match="allowed: neighbours, shrink, exclude_seen, max_items_per_user"):
        baselines.recommend("item_knn", events, targets, 5, DAY, params={"half_life_days": 14.0})
    with pytest.raises(ValueError, match="allowed: none"):
        baselines.recommend("popularity", events, targets, 5, DAY, params={"k": 3})
    with pytest.raises(ValueError, match="item_categories"):
        baselines.recommend("filter_bubble", events, targets, 5, DAY)
    with pytest.raises(ValueError, match="as_of"):
        baselines.recommend("repeat", events, targets, 5, None)


@pytest.mark.slow
def test_als_through_recommend_at_the_corner_of_its_grid(spark):
    # the largest rank (more factors than the 4 items), the smallest regularisation, the largest alpha
    params = {"rank": 64, "reg_param": 0.01, "alpha": 40.0, "max_iter": 5}
    got = lists(
        baselines.recommend("als", two_groups(spark), users(spark, ["t", "h1"]), 3, None, params=params)
    )
    # same expectations as at the default settings: full lists, the co-bought pairs first
    assert {user: len(items) for user, items in got.items()} == {"t": 3, "h1": 3}
    assert [i for i in got["t"] if i != "A"][0] == "B"
    assert set(got["h1"][:2]) == {"C", "D"}
