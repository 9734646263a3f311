"""Source adapters and the ingest job on small files written by the tests."""

import datetime as dt
import gzip
import json

import pytest

from core import tables
from jobs.ingest import IngestError, run
from jobs.ingest.sources import online_retail, taobao_userbehavior

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def retail_source(path, name="retail"):
    return {"name": name, "format": "online_retail", "path": str(path), "timezone": "Europe/London"}


def conf_with(conf_factory, *sources):
    return conf_factory([f"ingest.sources={json.dumps(list(sources))}"])


def write(path, text, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_online_retail_lines_map_to_purchase_and_cancel_events(spark, tmp_path, conf_factory):
    write(
        tmp_path / "in" / "2011-06-01.csv",
        RETAIL_HEADER
        + "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2011-06-01 08:26:00,2.55,17850.0,United Kingdom\n"
        + "C536379,85123a,WHITE HANGING HEART T-LIGHT HOLDER,-2,2011-06-01 09:41:00,2.55,17850.0,United Kingdom\n",
    )
    conf = conf_with(conf_factory, retail_source(tmp_path / "in"))
    run(spark, conf)
    ev = tables.read(spark, conf, "bronze.events").orderBy("ts").collect()
    assert [(e.user_id, e.item_id, e.event_type, e.quantity, e.amount, e.order_id) for e in ev] == [
        ("17850", "85123A", "purchase", 6, 15.3, "536365"),
        ("17850", "85123A", "cancel", -2, -5.1, "C536379"),
    ]
    # British summer time: 08:26 local is 07:26 UTC; the calendar day stays local.
    assert ev[0].ts == dt.datetime(2011, 6, 1, 7, 26)
    assert ev[0].dt == dt.date(2011, 6, 1)
    assert ev[0].extras == {"country": "United Kingdom", "unit_price": "2.55"}
    items = tables.read(spark, conf, "bronze.items").collect()
    assert [(i.item_id, i.title, i.price) for i in items] == [
        ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 2.55)
    ]


MALFORMED = (
    RETAIL_HEADER
    + "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
    + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
    + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"  # exact duplicate
    + "536366,22633,HAND WARMER UNION JACK,6,2010-13-45 08:28:00,1.85,17850.0,United Kingdom\n"  # bad date
    + "536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,yesterday,1.69,13047.0,United Kingdom\n"  # bad date
    + "536368,22960,JAM MAKING SET WITH JARS,6,2010-12-01 08:34:00,4.25,,United Kingdom\n"  # missing user
    + "536369,POST,POSTAGE,1,2010-12-01 08:35:00,18.00,12583.0,France\n"  # not a product
    + "536370,22728,ALARM CLOCK BAKELIKE PINK,-24,2010-12-01 08:45:00,3.75,12583.0,France\n"  # impossible qty
    + "536371,22727,ALARM CLOCK BAKELIKE RED,24,2010-12-01 08:45:00,-3.75,12583.0,France\n"  # negative price
    + "536372,22726,ALARM CLOCK BAKELIKE GREEN,lots,2010-12-01 08:45:00,3.75,12583.0,France\n"  # not a number
    + '536373,22725,"ALARM CLOCK, UNCLOSED QUOTE,4,2010-12-01 08:45:00,3.75,12583.0,France\n'  # truncated line
)


def test_malformed_file_keeps_good_rows_and_quarantines_bad_ones_with_reasons(spark, tmp_path, conf_factory):
    write(tmp_path / "in" / "bad.csv", MALFORMED)
    conf = conf_with(conf_factory, retail_source(tmp_path / "in"))
    [summary] = run(spark, conf)
    assert (summary.input_rows, summary.accepted, summary.quarantined, summary.duplicates) == (11, 2, 8, 1)
    reasons = sorted(r.reason for r in tables.read(spark, conf, "bronze.quarantine").collect())
    assert reasons == sorted([
        "unparseable_timestamp", "unparseable_timestamp", "missing_user_id", "non_product_line",
        "impossible_quantity", "impossible_amount", "unparseable_number", "malformed_line",
    ])  # fmt: skip
    q = {r.reason: r for r in tables.read(spark, conf, "bronze.quarantine").collect()}
    assert "ALARM CLOCK, UNCLOSED QUOTE" in q["malformed_line"].raw
    assert q["malformed_line"].source_file.endswith("bad.csv")
    assert q["impossible_quantity"].detail == "purchase -24"
    assert sorted(e.item_id for e in tables.read(spark, conf, "bronze.events").collect()) == [
        "71053",
        "85123A",
    ]


def test_unreadable_gzip_fails_with_an_error_naming_the_file(spark, tmp_path, conf_factory):
    write(
        tmp_path / "in" / "2011-01-01.csv.gz",
        RETAIL_HEADER + "536365,85123A,X,6,2011-01-01 08:26:00,2.55,1.0,UK\n",
        gz=True,
    )
    broken = tmp_path / "in" / "2011-01-02.csv.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 this is not gzip data at all")
    conf = conf_with(conf_factory, retail_source(tmp_path / "in"))
    with pytest.raises(IngestError, match=r"cannot read input file .*2011-01-02\.csv\.gz"):
        run(spark, conf)


def test_missing_path_fails_with_an_error_naming_it(spark, tmp_path, conf_factory):
    conf = conf_with(conf_factory, retail_source(tmp_path / "nowhere"))
    with pytest.raises(IngestError, match=r"no input files at .*nowhere"):
        run(spark, conf)


def test_taobao_behaviours_map_to_events_with_category_leaf(spark, tmp_path, conf_factory):
    # 1511544070 = 2017-11-24 17:21:10 UTC = 2017-11-25 01:21:10 in Beijing.
    write(
        tmp_path / "tb" / "UserBehavior.csv",
        "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,fav,1511561733\n"
        "1,2576651,149192,cart,1511572885\n1,3830808,4181361,buy,1511593493\n1,1,1,teleport,1511593493\n",
    )
    src = {
        "name": "taobao",
        "format": "taobao_userbehavior",
        "path": str(tmp_path / "tb"),
        "timezone": "Asia/Shanghai",
    }
    conf = conf_with(conf_factory, src)
    [summary] = run(spark, conf)
    assert (summary.accepted, summary.quarantined) == (4, 1)
    ev = {e.event_type: e for e in tables.read(spark, conf, "bronze.events").collect()}
    assert sorted(ev) == ["cart", "favorite", "purchase", "view"]
    assert ev["view"].dt == dt.date(2017, 11, 25)
    assert ev["purchase"].quantity == 1 and ev["view"].quantity is None
    items = {i.item_id: i.leaf_category for i in tables.read(spark, conf, "bronze.items").collect()}
    assert items["2268318"] == "2520377"


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_generic_format_in_each_file_type(spark, tmp_path, conf_factory, fmt):
    rows = [
        {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2024-03-01T10:00:00",
         "title": "Linen dress", "category_path": "Women > Dresses", "price": "19.5", "channel": "app"},
        {"event_id": "e2", "user_id": "u1", "item_id": None, "event_type": "search", "ts": "1709287200",
         "query": "linen dress", "channel": "web"},
        {"event_id": "e3", "user_id": "u2", "item_id": "i1", "event_type": "purchase", "ts": "2024-03-01 11:00:00",
         "quantity": "24", "amount": "468.0"},
        {"event_id": "e4", "user_id": "u2", "item_id": "i1", "event_type": "purchase", "ts": "not a time"},
    ]  # fmt: skip
    folder = tmp_path / "g"
    folder.mkdir()
    import pandas as pd

    pdf = pd.DataFrame(rows).astype("string")
    if fmt == "csv":
        pdf.to_csv(folder / "events.csv", index=False)
    elif fmt == "json":
        pdf.to_json(folder / "events.json", orient="records", lines=True)
    else:
        pdf.to_parquet(folder / "events.parquet", index=False)
    src = {"name": "shop", "format": "generic", "path": str(folder), "file_format": fmt}
    conf = conf_with(conf_factory, src)
    [summary] = run(spark, conf)
    assert (summary.accepted, summary.quarantined) == (3, 1)
    ev = {e.event_type: e for e in tables.read(spark, conf, "bronze.events").collect()}
    assert ev["search"].ts == dt.datetime(2024, 3, 1, 10, 0) and ev["search"].query == "linen dress"
    assert ev["click"].extras == {"channel": "app"}
    assert (ev["purchase"].quantity, ev["purchase"].amount) == (24, 468.0)
    [item] = tables.read(spark, conf, "bronze.items").collect()
    assert (item.title, item.leaf_category, item.price) == ("Linen dress", "Dresses", 19.5)


def test_generic_file_without_required_columns_fails_naming_them(spark, tmp_path, conf_factory):
    write(tmp_path / "g" / "events.csv", "user,item\nu1,i1\n")
    conf = conf_with(conf_factory, {"name": "shop", "format": "generic", "path": str(tmp_path / "g")})
    with pytest.raises(IngestError, match="required columns missing: user_id, event_type, ts"):
        run(spark, conf)


@pytest.mark.slow
def test_reingest_changes_nothing_and_new_days_add_only_their_rows(spark, tmp_path, conf_factory):
    day1 = RETAIL_HEADER + "536365,85123A,WHITE HEART,6,2011-06-01 08:26:00,2.55,17850.0,UK\n"
    day2 = RETAIL_HEADER + "536400,71053,WHITE METAL LANTERN,6,2011-06-02 08:26:00,3.39,17850.0,UK\n"
    write(tmp_path / "in" / "d1.csv", day1)
    conf = conf_with(conf_factory, retail_source(tmp_path / "in"))
    [first] = run(spark, conf)
    snapshot = tables.read(spark, conf, "bronze.events").collect()
    [again] = run(spark, conf)
    assert (first.new_events, again.new_events) == (1, 0)
    assert sorted(tables.read(spark, conf, "bronze.events").collect()) == sorted(snapshot)
    write(tmp_path / "in" / "d2.csv", day2)
    [third] = run(spark, conf)
    assert (third.input_rows, third.new_events) == (2, 1)
    after = tables.read(spark, conf, "bronze.events").collect()
    assert len(after) == 2 and all(row in after for row in snapshot)


def test_adapters_read_every_record_as_text(spark, tmp_path):
    # A column that looks numeric must not be reformatted before it is kept as raw text.
    f = write(
        tmp_path / "a.csv", RETAIL_HEADER + "536365,85123A,X,006,2011-06-01 08:26:00,2.550,17850.0,UK\n"
    )
    from core.config import SourceConf

    row = online_retail(spark, SourceConf(name="r", format="online_retail"), [str(f)]).collect()[0]
    assert '"Quantity":"006"' in row.raw and '"UnitPrice":"2.550"' in row.raw
    f2 = write(tmp_path / "t.csv", "1,2,3,pv,1511544070\n")
    row2 = taobao_userbehavior(
        spark, SourceConf(name="t", format="taobao_userbehavior"), [str(f2)]
    ).collect()[0]
    assert (
        row2.raw
        == '{"user_id":"1","item_id":"2","category_id":"3","behavior_type":"pv","timestamp":"1511544070"}'
    )
