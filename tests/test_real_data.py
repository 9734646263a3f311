"""End to end on the real datasets in ../shared/data: ingest, reconcile, aggregate, re-run.

The expected figures are computed here from the raw files with the csv module, a path
independent of Spark, so a bug in the adapters or in validation shows up as a mismatch.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from collections import Counter

import pytest
from pyspark.sql import functions as F

from core import tables
from jobs import aggregate
from jobs.ingest import run as ingest
from jobs.ingest.sources import ONLINE_RETAIL_NON_PRODUCT
from tests.conftest import shared_dataset

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("codegen")]

SILVER = [
    "silver.item_categories",
    "silver.user_week_category",
    "silver.user_windows",
    "silver.search_terms_weekly",
]
BRONZE = ["bronze.events", "bronze.items", "bronze.quarantine"]


def online_retail_reference(folder) -> dict:
    """Counts from the raw files by a plain reading of the documented rules."""
    lines, rows = 0, Counter()
    for f in sorted(folder.glob("*.csv.gz")):
        with gzip.open(f, "rt", newline="") as fh:
            for rec in csv.DictReader(fh):
                lines += 1
                rows[tuple(rec.values())] += 1
    distinct = list(rows)
    accepted = []
    for inv, stock, _desc, qty, date, price, cust, _country in distinct:
        if stock.strip().upper() in ONLINE_RETAIL_NON_PRODUCT or not cust.strip():
            continue
        q, p = int(qty), float(price)
        kind = "cancel" if inv.startswith("C") else "purchase"
        if (kind == "purchase" and q <= 0) or (kind == "cancel" and q > 0) or p < 0:
            continue
        accepted.append(
            (kind, dt.datetime.strptime(date, "%Y-%m-%d %H:%M:%S").date(), q * p, cust.split(".")[0])
        )
    return {"lines": lines, "duplicates": lines - len(distinct), "accepted": accepted}


@pytest.fixture(scope="module")
def retail(spark, codegen, tmp_path_factory):
    folder = shared_dataset("online_retail") / "by-day"
    from core.config import load_config

    root = tmp_path_factory.mktemp("retail")
    conf = load_config(overrides=[
        f"storage.root={root}", "spark.shuffle_partitions=4",
        f"ingest.sources=[{{name: online_retail, format: online_retail, path: '{folder}', timezone: Europe/London}}]",
    ])  # fmt: skip
    [summary] = ingest(spark, conf)
    aggregate.run(spark, conf)
    return conf, summary, online_retail_reference(folder)


def test_all_online_retail_rows_are_accounted_for(retail):
    _, s, ref = retail
    assert s.input_rows == 541_909 == ref["lines"]
    assert s.duplicates == ref["duplicates"] == 5_268
    assert s.accepted == len(ref["accepted"])
    assert s.accepted + s.quarantined + s.duplicates == s.input_rows


def test_bronze_tables_hold_what_the_summary_says(spark, retail):
    conf, s, ref = retail
    assert tables.read(spark, conf, "bronze.events").count() == s.accepted
    q = tables.read(spark, conf, "bronze.quarantine")
    assert q.count() == s.quarantined
    by_reason = {r.reason: r["count"] for r in q.groupBy("reason").count().collect()}
    assert by_reason == s.quarantine_by_reason
    assert by_reason["missing_user_id"] > 100_000
    users = tables.read(spark, conf, "bronze.events").select("user_id").distinct().count()
    assert users == len({a[3] for a in ref["accepted"]})


def test_silver_totals_match_the_raw_files(spark, retail):
    conf, _, ref = retail
    run_date = dt.date(2011, 12, 9)
    in_horizon = [a for a in ref["accepted"] if run_date - dt.timedelta(days=365) < a[1] <= run_date]
    uwc = tables.read(spark, conf, "silver.user_week_category")
    tot = uwc.agg(F.sum("n_purchase"), F.sum("n_cancel"), F.sum("amount")).collect()[0]
    assert tot[0] == sum(1 for a in in_horizon if a[0] == "purchase")
    assert tot[1] == sum(1 for a in in_horizon if a[0] == "cancel")
    assert tot[2] == pytest.approx(sum(a[2] for a in in_horizon), rel=1e-9)
    lt = tables.read(spark, conf, "silver.user_windows").filter("window = 'long_term'")
    assert lt.agg(F.sum("n_events")).collect()[0][0] == len(in_horizon)
    terms = tables.read(spark, conf, "silver.search_terms_weekly")
    assert {r.term_source for r in terms.select("term_source").distinct().collect()} == {"purchase_title"}


def test_most_items_get_a_category_from_the_rules(spark, retail):
    conf, _, _ = retail
    cats = tables.read(spark, conf, "silver.item_categories")
    share_other = cats.filter("leaf_category = 'other'").count() / cats.count()
    assert share_other < 0.2
    titles = {r.title for r in cats.select("title").collect()}
    assert not {"damaged", "check", "adjustment"} & titles  # bookkeeping notes are not titles


def comparable(df):
    """Map columns as sorted entry lists, so set operations can compare rows."""
    return df.select(*[
        F.to_json(F.array_sort(F.map_entries(f.name))).alias(f.name) if f.dataType.typeName() == "map" else F.col(f.name)
        for f in df.schema.fields
    ])  # fmt: skip


def test_online_retail_query_phrases_are_its_title_words_in_title_order(spark, retail):
    """The words the heuristic queries are made of (``jobs.phrases``), for the purchases of
    the last 13 weeks: a few categories pinned, and every word of every phrase in at least
    two titles of its category (the rule), where it stands in the order the titles use."""
    from jobs import phrases

    conf, _, _ = retail
    events = tables.read(spark, conf, "bronze.events")
    last = events.agg(F.max("dt")).collect()[0][0]
    cats = tables.read(spark, conf, "silver.item_categories").select("item_id", "leaf_category")
    weighted = (
        events.filter(
            (F.col("event_type") == "purchase") & (F.col("dt") > F.lit(last - dt.timedelta(days=91)))
        )
        .join(cats, "item_id")
        .select("leaf_category", "item_id", F.lit(1.0).alias("weight"))
    )
    titles = tables.read(spark, conf, "bronze.items").select("item_id", "title")
    got = {
        r.leaf_category: r.phrase
        for r in phrases.phrases(weighted, phrases.title_words(titles), ["leaf_category"]).collect()
    }
    assert {c: got[c] for c in ("bags", "candles and holders", "decorations", "kitchen and storage")} == {
        "bags": "lunch charlotte bag",  # LUNCH BAG ..., CHARLOTTE BAG ...; "jumbo" is a stop word
        "candles and holders": "hanging light holder",  # HANGING ... T-LIGHT HOLDER
        "decorations": "heart wicker decoration",
        "kitchen and storage": "hot water bottle",
    }
    words = {
        (r.leaf_category, r.word): r.n
        for r in phrases.title_words(titles).join(cats, "item_id").groupBy("leaf_category", "word")
        .agg(F.count("*").alias("n")).collect()
    }  # fmt: skip
    assert len(got) >= 20
    for category, phrase in got.items():
        assert 1 <= len(phrase.split()) <= phrases.PHRASE_WORDS
        assert all(words.get((category, w), 0) >= 2 for w in phrase.split()), (category, phrase)


def test_running_again_changes_no_row_of_any_table(spark, retail):
    conf, _, _ = retail
    # Each table as it was before the rerun, by its Delta version (time travel), so that
    # the comparison runs in Spark instead of through the driver.
    before = {n: tables.version(spark, conf, n) for n in BRONZE + SILVER}
    [again] = ingest(spark, conf)
    aggregate.run(spark, conf)
    assert again.new_events == 0
    for name in BRONZE + SILVER:
        after = comparable(tables.read(spark, conf, name))
        old = comparable(
            spark.read.format("delta").option("versionAsOf", before[name]).load(tables.location(conf, name))
        )
        assert after.count() == old.count() > 0, name
        assert after.exceptAll(old).count() == 0, name
        assert old.exceptAll(after).count() == 0, name


def test_taobao_userbehavior_end_to_end(spark, tmp_path):
    path = shared_dataset("taobao_userbehavior") / "UserBehavior.csv"
    from core.config import load_config

    with open(path) as fh:
        lines = fh.read().splitlines()
    distinct = set(lines)
    kinds = Counter(line.split(",")[3] for line in distinct)
    conf = load_config(overrides=[
        f"storage.root={tmp_path}", "spark.shuffle_partitions=4",
        f"ingest.sources=[{json.dumps({'name': 'taobao', 'format': 'taobao_userbehavior', 'path': str(path), 'timezone': 'Asia/Shanghai'})}]",
    ])  # fmt: skip
    [s] = ingest(spark, conf)
    assert s.input_rows == len(lines) == 84_475
    assert s.duplicates == len(lines) - len(distinct)
    assert (s.accepted, s.quarantined) == (len(distinct), 0)
    ev = tables.read(spark, conf, "bronze.events")
    got = {r.event_type: r["count"] for r in ev.groupBy("event_type").count().collect()}
    assert got == {
        "view": kinds["pv"],
        "favorite": kinds["fav"],
        "cart": kinds["cart"],
        "purchase": kinds["buy"],
    }
    counts = aggregate.run(spark, conf)
    assert counts["silver.item_categories"] == 55_368
    cats = tables.read(spark, conf, "silver.item_categories")
    assert cats.filter("category_source != 'catalog'").count() == 0
    uwc = tables.read(spark, conf, "silver.user_week_category")
    # Run date 2017-12-03; the 35 early noise rows (from 2017-09-11) are inside the 365-day horizon.
    assert uwc.agg(F.sum("n_events")).collect()[0][0] == s.accepted
