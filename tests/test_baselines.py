"""jobs/evaluate/baselines.py: popularity, co-occurrence, ALS, filter bubble on tiny train events."""

from __future__ import annotations

import datetime as dt

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


def users(spark, ids):
    return spark.createDataFrame([(u,) for u in ids], "user_id string")


def lists(recs):
    """{user: [item, ...]} in position order; checks the schema and positions 1..n."""
    assert recs.columns == list(baselines.RECS_COLUMNS)
    out: dict[str, list[str]] = {}
    for r in recs.orderBy("user_id", "position").collect():
        assert r.has_reason is False
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


def test_als_recommends_the_co_clicked_item(spark):
    rows = []
    for g in ("g1", "g2", "g3", "g4", "g5"):
        rows += [(g, "A", "purchase"), (g, "B", "purchase"), (g, "A", "click"), (g, "B", "click")]
    for h in ("h1", "h2", "h3", "h4", "h5"):
        rows += [(h, "C", "purchase"), (h, "D", "purchase"), (h, "C", "click"), (h, "D", "click")]
    rows += [("t", "A", "click"), ("t", "A", "view"), ("s", None, "search")]
    events = train(spark, rows)
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
