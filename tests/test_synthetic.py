"""The synthetic generator: reproducible, skewed like real wholesale logs, valid input."""

import pytest
from pyspark.sql import functions as F

from jobs.ingest import synthetic


@pytest.fixture(scope="module")
def generated(spark):
    events, items = synthetic.generate(spark, users=400, days=60, seed=3)
    return events.cache(), items.cache()


def test_same_seed_same_events(spark, generated):
    events, _ = generated
    again, _ = synthetic.generate(spark, users=400, days=60, seed=3)
    assert events.count() == again.count()
    assert events.exceptAll(again).count() == 0
    other, _ = synthetic.generate(spark, users=400, days=60, seed=4)
    assert events.exceptAll(other).count() > 0


def test_size_is_about_users_times_days_times_rate(generated):
    n = generated[0].count()
    assert 0.6 * 400 * 60 * 0.5 < n < 1.6 * 400 * 60 * 0.5


def test_user_activity_is_heavy_tailed(generated):
    counts = sorted((r["count"] for r in generated[0].groupBy("user_id").count().collect()), reverse=True)
    top_decile = sum(counts[: len(counts) // 10]) / sum(counts)
    assert top_decile > 0.3  # a uniform population would give 0.1
    assert counts[-1] >= 1


def test_item_popularity_follows_a_power_law(generated):
    counts = sorted((r["count"] for r in generated[0].groupBy("item_id").count().collect()), reverse=True)
    top_share = sum(counts[: max(1, len(counts) // 100)]) / sum(counts)
    assert top_share > 0.05  # top 1 % of items draw far more than 1 % of events


def test_searches_use_words_of_the_item_title(generated):
    rows = generated[0].filter("event_type = 'search'").select("query", "title").limit(200).collect()
    assert rows
    for r in rows:
        assert set(r.query.split()) <= set(r.title.split()), r


def test_purchases_are_wholesale_packs_and_amounts_add_up(generated):
    buys = generated[0].filter(F.col("event_type").isin("purchase", "cancel")).collect()
    assert buys
    for r in buys:
        assert abs(r.quantity) in synthetic.PACK_SIZES
        assert r.amount == pytest.approx(round(r.quantity * r.price, 2))
        assert (r.quantity > 0) == (r.event_type == "purchase")


def test_every_event_type_occurs_and_items_have_categories(generated):
    events, items = generated
    types = {r.event_type for r in events.select("event_type").distinct().collect()}
    assert types == {"search", "view", "click", "favorite", "cart", "inquiry", "purchase", "cancel"}
    assert items.filter(F.col("leaf_category").isNull()).count() == 0


def test_synthetic_source_ingests_with_nothing_quarantined(spark, conf_factory):
    from jobs.ingest import run

    conf = conf_factory(["ingest.sources=[{name: synth, format: synthetic, users: 50, days: 20}]"])
    [summary] = run(spark, conf)
    assert summary.input_rows > 0
    assert (summary.quarantined, summary.duplicates) == (0, 0)
    assert summary.accepted == summary.input_rows == summary.new_events
