"""embed -> index -> q2i -> the query channels on a tiny warehouse with the real model and
real FAISS shards."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from core import tables
from core.config import load_config
from jobs import candidates, embed, index, q2i
from udfs.embedding import encode

RUN_DATE = dt.date(2011, 12, 9)
TITLES = [
    "Red Retrospot Jumbo Bag", "Paisley Jumbo Shopper", "Vintage Leaf Jumbo Bag", "Pink Polkadot Lunch Bag",
    "White Heart T-Light Holder", "Glass Star Candle Holder", "Owl Ceramic Mug", "Red Spot Tea Cup",
    "Christmas Bauble Red Glass", "Wooden Star Tree Decoration", "Garden Solar Lantern", "Pantry Cake Tins",
    "Vintage Snap Cards", "Retrospot Wrapping Paper",
]  # fmt: skip
CATEGORY = (
    ["bags"] * 4 + ["candles"] * 2 + ["mugs"] * 2 + ["xmas"] * 2 + ["garden", "baking", "cards", "cards"]
)
PROFILES_SCHEMA = (
    "item_id string, title string, short_title string, leaf_category string, price_band string, "
    "decision_factors array<struct<kind:string,value:string>>"
)
QUERIES = [
    ("u1", "q1", "personal", "jumbo bags for my shop", "bags", "you buy bags", 0),
    ("u1", "q2", "exploration", "christmas tree decorations", "xmas", "new for you", 1),
    ("u2", "q3", "trend", "candle holders trend", "candles", "rising", 0),
    ("u3", "q4", "personal", "jumbo bags for my shop", "bags", "you buy bags", 0),  # q1's text
]


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval") / "warehouse"
    base = [f"storage.root={root}", "spark.shuffle_partitions=2", f"run.date={RUN_DATE}", "q2i.k=5",
            "q2i.per_query=5", "index.shard_size=4", "index.kind=flat", "rank.top_k=4"]  # fmt: skip

    def make(overrides=()):
        return load_config(overrides=base + list(overrides))

    conf = make()
    profiles = [
        (f"I{i}", t.upper(), t, c, "mid", [{"kind": "colour", "value": "red"}] if "Red" in t else [])
        for i, (t, c) in enumerate(zip(TITLES, CATEGORY, strict=True))
    ]
    tables.overwrite(spark.createDataFrame(profiles, PROFILES_SCHEMA), conf, "silver.item_profiles")
    tables.overwrite(
        spark.createDataFrame(
            QUERIES, "user_id string, query_id string, kind string, query string, leaf_category string, "
            "reason string, position int",
        ),
        conf,
        "gold.user_queries",
    )  # fmt: skip
    day = RUN_DATE - dt.timedelta(days=3)
    tables.overwrite(
        spark.createDataFrame(
            [("e1", "u1", "I0", "purchase", dt.datetime.combine(day, dt.time(9)), day)],
            "event_id string, user_id string, item_id string, event_type string, ts timestamp, dt date",
        ),
        conf,
        "bronze.events",
    )
    tables.overwrite(
        spark.createDataFrame(
            [("u1", "bags", "long_term", [{"factor": "red", "weight": 10}])],
            "user_id string, leaf_category string, horizon string, factors array<struct<factor:string,weight:int>>",
        ),
        conf,
        "gold.cfv",
    )
    tables.overwrite(
        spark.createDataFrame(
            [("u1", "bags", "long_term", 3)],
            "user_id string, leaf_category string, window string, n_events long",
        ),
        conf,
        "silver.user_windows",
    )
    embed.run(spark, conf)
    counts = index.run(spark, conf)
    q2i.run(spark, conf)
    return make, counts


def test_index_shards_and_manifest(spark, warehouse):
    make, counts = warehouse
    conf = make()
    manifest = tables.read(spark, conf, index.MANIFEST).orderBy("shard").collect()
    # 14 items, shards of at most 4 -> ceil(14 / 4) = 4 shards by hash, every item in exactly one
    assert counts == {"shards": 4, "items": 14} and [r.shard for r in manifest] == [0, 1, 2, 3]
    assert {r.kind for r in manifest} == {"flat"} and sum(r["count"] for r in manifest) == 14
    assert all(r.path.endswith(f"shard-{r.shard:04d}.faiss") for r in manifest)


def test_merged_shard_results_equal_brute_force(spark, warehouse):
    make, _ = warehouse
    conf = make()
    items = tables.read(spark, conf, embed.ITEM_VECTORS).orderBy("item_id").collect()
    ids = [r.item_id for r in items]
    item_vecs = encode([r.text for r in items])
    got = tables.read(spark, conf, q2i.CANDIDATES).collect()
    for _, qid, _, text, *_ in QUERIES:
        sims = item_vecs @ encode([text])[0]
        expected = [ids[i] for i in np.argsort(-sims, kind="stable")[:5]]
        mine = sorted((r for r in got if r.query_id == qid), key=lambda r: r.rank_in_query)
        assert [r.item_id for r in mine] == expected, qid
        assert [r.relevance for r in mine] == pytest.approx(sorted(sims, reverse=True)[:5], abs=1e-4)


def test_personalised_weighting_and_paths(spark, warehouse):
    make, _ = warehouse
    conf = make()
    got = {(r.query_id, r.item_id): r for r in tables.read(spark, conf, q2i.CANDIDATES).collect()}
    red_bag = got[("q1", "I0")]  # u1 likes red in bags (CFV 10) and bought the mid band there
    assert red_bag.cfv_match == 1.0 and red_bag.price_match == 1.0
    assert red_bag.score == pytest.approx(red_bag.relevance * 1.0 + 0.15 + 0.05, abs=1e-4)
    # exploration queries are weighted 0.8; u2 has no CFV at all
    some_xmas = next(r for (q, _), r in got.items() if q == "q2")
    assert some_xmas.score == pytest.approx(
        some_xmas.relevance * 0.8 + some_xmas.price_match * 0.05, abs=1e-4
    )
    assert all(r.cfv_match == 0.0 for (q, _), r in got.items() if q == "q3")


def test_buyers_asking_the_same_text_get_its_hits_each_with_their_own_weighting(spark, warehouse):
    """The text is searched once and its hits go to both queries; the personal part of the
    score stays each buyer's (u1 likes red bags and bought the mid band; u3 has no history)."""
    make, _ = warehouse
    rows = tables.read(spark, make(), q2i.CANDIDATES).filter("query_id in ('q1', 'q4')").collect()
    by = {q: {r.item_id: r for r in rows if r.query_id == q} for q in ("q1", "q4")}
    assert set(by["q1"]) == set(by["q4"]) and len(by["q1"]) == 5
    for item, r in by["q1"].items():
        other = by["q4"][item]
        assert (other.user_id, other.query_id, other.relevance, other.rank_in_query) == (
            "u3",
            "q4",
            r.relevance,
            r.rank_in_query,
        )
        assert other.cfv_match == 0.0 and other.score == pytest.approx(other.relevance, abs=1e-4)
    assert by["q1"]["I0"].score == pytest.approx(by["q4"]["I0"].score + 0.15 + 0.05, abs=1e-4)


def test_query_channels_hold_every_user_with_queries_an_item_once_per_channel(spark, warehouse):
    make, _ = warehouse
    conf = make()
    q2i_rows = tables.read(spark, conf, q2i.CANDIDATES)
    users = q2i_rows.select("user_id").distinct()
    got = candidates.query_channels(q2i_rows, users, limit=3).collect()
    by = {}
    for r in got:
        by.setdefault((r.user_id, r.channel), []).append(r)
    # u1's personal and exploration queries feed the query channel, u2's trend query the
    # trend one, u3's personal query the query channel.
    assert set(by) == {("u1", "query"), ("u2", "trend"), ("u3", "query")}
    for key, rows in by.items():
        assert sorted(r.channel_rank for r in rows) == [1, 2, 3], key  # the 3 best only
        assert len({r.item_id for r in rows}) == 3 and all(r.reason for r in rows), key
        scores = [r.channel_score for r in sorted(rows, key=lambda r: r.channel_rank)]
        assert scores == sorted(scores, reverse=True), key
    # An item found by both of u1's queries appears once, with its best query's score.
    best = {}
    for r in q2i_rows.filter("user_id = 'u1'").collect():
        best[r.item_id] = max(best.get(r.item_id, -9.0), r.score)
    for r in by[("u1", "query")]:
        assert r.channel_score == pytest.approx(best[r.item_id], abs=1e-4)


@pytest.mark.slow
def test_shards_on_a_url_give_the_same_neighbours_and_old_builds_are_removed(spark, warehouse, tmp_path):
    """Shards written through the filesystem layer (a ``file://`` URL goes the way an object
    store's would) are found again by Q2I; after three builds only the newest two remain."""
    import shutil

    from core import files

    make, _ = warehouse
    source = make()
    shutil.copytree(source.storage.root, tmp_path / "warehouse")
    shards = f"file://{tmp_path}/shards"
    conf = load_config(overrides=[f"storage.root={tmp_path / 'warehouse'}", "spark.shuffle_partitions=2",
                                  f"run.date={RUN_DATE}", "q2i.k=5", "q2i.per_query=5", "index.shard_size=4",
                                  "index.kind=flat", f"index.path={shards}", "index.keep_builds=2"])  # fmt: skip
    (tmp_path / "shards" / "notes").mkdir(parents=True)  # not a build: never removed
    builds = []
    for _ in range(3):
        assert index.run(spark, conf) == {"shards": 4, "items": 14}
        builds.append(tables.read(spark, conf, index.MANIFEST).first()["build_id"])
    assert len(set(builds)) == 3 and builds == sorted(builds)
    assert files.folders(shards) == sorted([*builds[1:], "notes"])
    manifest = tables.read(spark, conf, index.MANIFEST).collect()
    assert all(r.path.startswith(f"{shards}/{builds[2]}/shard-") for r in manifest)
    q2i.run(spark, conf)

    def neighbours(c):
        rows = tables.read(spark, c, q2i.CANDIDATES).collect()
        return sorted((r.query_id, r.rank_in_query, r.item_id, round(r.relevance, 5)) for r in rows)

    assert neighbours(conf) == neighbours(source)
