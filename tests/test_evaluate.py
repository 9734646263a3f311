"""jobs/evaluate end to end on a small synthetic warehouse: the temporal split has no
leakage, the comparison table and report are written, and MLflow holds the runs."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from pyspark.sql import functions as F

from jobs import evaluate, tables
from jobs.config import load_config

END = dt.date(2025, 12, 31)  # the synthetic generator's last day
CUT = dt.date(2025, 12, 10)


def _frame(spark, conf, name) -> pd.DataFrame:
    """A table as a sorted pandas frame without timestamp columns (run times differ)."""
    df = tables.read(spark, conf, name)
    keep = [f.name for f in df.schema.fields if f.dataType.typeName() != "timestamp"]
    pdf = df.select(*keep).toPandas()
    pdf = pdf.map(
        lambda v: json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str | int | float) else v
    )
    return pdf.sort_values(list(pdf.columns)).reset_index(drop=True)


def _write_notes(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "notes.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


@pytest.fixture(scope="module")
def evaluated(spark, tmp_path_factory):
    """Ingest synthetic data, evaluate once, snapshot; add late events and a late trend
    document, evaluate again, snapshot again."""
    tmp = tmp_path_factory.mktemp("evaluate")
    notes = tmp / "notes"
    source = {"name": "syn", "format": "synthetic", "users": 24, "days": 90, "seed": 3}
    conf = load_config(
        overrides=[
            f"storage.root={tmp / 'warehouse'}",
            "spark.shuffle_partitions=2",
            f"ingest.sources=[{json.dumps(source)}]",
            f"trends.sources=[{json.dumps({'name': 'notes', 'kind': 'folder', 'path': str(notes)})}]",
            f"evaluate.cut_date={CUT}",
            "evaluate.k=5",
            "rank.top_k=5",
            "q2i.k=10",
            f"evaluate.report_dir={tmp / 'reports'}",
        ]
    )
    from jobs import ingest

    ingest.run(spark, conf)
    events = tables.read(spark, conf, "bronze.events")
    category = tables.read(spark, conf, "bronze.items").orderBy("item_id").first()["leaf_category"]
    _write_notes(
        notes,
        [{"id": "d1", "title": f"{category}: rising", "text": f"{category} sells well", "published_at": "2025-12-01T00:00:00"}],
    )  # fmt: skip
    first = evaluate.run(spark, conf)
    asof = evaluate.asof_conf(conf, CUT)
    before = {name: _frame(spark, asof, name) for name in evaluate.ASOF_OUTPUTS}
    before[evaluate.LISTS] = _frame(spark, conf, evaluate.LISTS)

    # After the cut: a purchase on the cut day itself at midnight (the boundary), a later
    # search and purchase of an item in a category the buyer never touched, and a trend
    # document about that category published after the cut.
    buyer = (
        events.filter((F.col("dt") >= F.lit(CUT)) & (F.col("event_type") == "purchase"))
        .join(events.filter(F.col("dt") < F.lit(CUT)).select("user_id").distinct(), "user_id")
        .orderBy("user_id")
        .first()["user_id"]
    )
    touched = {r["item_id"] for r in events.filter(F.col("user_id") == buyer).select("item_id").collect()}
    items = tables.read(spark, conf, "bronze.items")
    seen_cats = {r["leaf_category"] for r in items.filter(F.col("item_id").isin(list(touched))).collect()}
    new_item = items.filter(~F.col("leaf_category").isin(list(seen_cats))).orderBy("item_id").first()
    template = events.filter(F.col("user_id") == buyer).first().asDict()
    late = []
    for i, (ts, etype, item) in enumerate(
        [
            (dt.datetime.combine(CUT, dt.time(0, 0)), "purchase", template["item_id"]),
            (dt.datetime.combine(CUT + dt.timedelta(days=3), dt.time(10)), "search", None),
            (dt.datetime.combine(CUT + dt.timedelta(days=3), dt.time(11)), "purchase", new_item["item_id"]),
        ]
    ):
        row = dict(template, event_id=f"late-{i}", ts=ts, dt=ts.date(), event_type=etype, item_id=item)
        row["query"] = new_item["leaf_category"] if etype == "search" else None
        late.append(row)
    tables.append(spark.createDataFrame(late, schema=events.schema), conf, "bronze.events")
    _write_notes(
        notes,
        [
            {"id": "d1", "title": f"{category}: rising", "text": f"{category} sells well", "published_at": "2025-12-01T00:00:00"},
            {"id": "d2", "title": f"{new_item['leaf_category']}: rising fast", "text": f"everyone buys {new_item['leaf_category']}", "published_at": "2025-12-20T00:00:00"},
        ],
    )  # fmt: skip
    second = evaluate.run(spark, conf)
    after = {name: _frame(spark, asof, name) for name in evaluate.ASOF_OUTPUTS}
    after[evaluate.LISTS] = _frame(spark, conf, evaluate.LISTS)
    return conf, asof, first, second, before, after


def test_an_event_after_the_cut_changes_no_feature_query_or_recommendation(evaluated):
    conf, asof, _, _, before, after = evaluated
    assert len(before["gold.recommendations"]) > 0 and len(before["gold.user_queries"]) > 0
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def test_as_of_warehouse_holds_nothing_on_or_after_the_cut(spark, evaluated):
    conf, asof, *_ = evaluated
    last = tables.read(spark, asof, "bronze.events").agg(F.max("dt")).collect()[0][0]
    assert last < CUT
    assert asof.run.date == CUT - dt.timedelta(days=1)
    # The main warehouse does hold the late events: the filter, not the data, kept them out.
    late = tables.read(spark, conf, "bronze.events").filter(F.col("event_id").startswith("late-")).count()
    assert late == 3


def test_comparison_table_has_every_method_and_the_test_purchases_changed_it(spark, evaluated):
    conf, _, first, second, *_ = evaluated
    table = tables.read(spark, conf, evaluate.EVALUATION).toPandas()
    assert set(table["method"]) == {"pipeline", "popularity", "cooccurrence", "als", "filter_bubble"}
    assert (table["cut_date"] == CUT).all() and (table["k"] == 5).all()
    assert table["recall"].between(0, 1).all() and table["category_width"].ge(0).all()
    # The pipeline writes a reason for every recommendation; baselines none.
    by = table.set_index("method")
    assert by.loc["pipeline", "reason_share"] == 1.0 and by.loc["popularity", "reason_share"] == 0.0
    # The run's metrics are what the table holds.
    assert first["pipeline.recall"] == pytest.approx(float(by.loc["pipeline", "recall"]))
    # The late purchases are test data, not training data: the buyer's item in a category
    # never touched before is a new (user, item) pair to find, while no list changed.
    assert second["test_purchases"] > first["test_purchases"] and second["users"] == first["users"]


def test_report_and_plots_are_written(evaluated):
    conf, *_ = evaluated
    folder = conf.evaluate.report_dir
    import pathlib

    out = pathlib.Path(folder) / f"evaluation_{CUT:%Y%m%d}"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "filter_bubble" in html and html.count("data:image/png;base64,") == 3
    for png in ("metrics_per_method.png", "category_width.png", "newcat_vs_recall.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_holds_the_evaluation_and_every_as_of_stage(spark, evaluated):
    from mlflow.tracking import MlflowClient

    from jobs.tracking import tracking_uri

    conf, asof, _, second, *_ = evaluated
    client = MlflowClient(tracking_uri=tracking_uri(conf))
    exp = client.get_experiment_by_name(conf.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.info.run_name == f"evaluate {CUT}"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents)
    latest = max(parents, key=lambda r: r.info.start_time)
    assert latest.data.metrics["pipeline.recall"] == pytest.approx(second["pipeline.recall"])
    assert latest.data.params["evaluate.cut_date"] == str(CUT)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(evaluate.asof_stages())
    rank_run = next(r for r in children if r.data.tags["stage"] == "rank")
    rows = tables.read(spark, asof, "gold.recommendations").count()
    assert rank_run.data.metrics["rows"] == rows > 0 and rank_run.data.metrics["seconds"] > 0
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id, "report")}
    assert "report/report.html" in artifacts


def test_split_at_the_cut_and_before_test_end(spark):
    day = dt.timedelta(days=1)
    rows = [
        ("u1", "A", "purchase", CUT - day),  # train
        ("u1", "B", "purchase", CUT),  # test: the cut day belongs to the test side
        ("u1", "B", "purchase", CUT + day),  # same pair again: counted once
        ("u1", "C", "view", CUT),  # not a purchase
        ("u2", "D", "purchase", CUT + 5 * day),  # the test_end day: left out
        ("u3", "E", "purchase", CUT + day),  # test, but u3 has no history: not evaluated
        ("u2", "F", "click", CUT - 3 * day),  # train
    ]
    events = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, dt date")
    train, test = evaluate.split(events, CUT, test_end=CUT + 5 * day)
    assert sorted(r.item_id for r in train.collect()) == ["A", "F"]
    assert sorted((r.user_id, r.item_id) for r in test.collect()) == [("u1", "B"), ("u3", "E")]
    users = evaluate.evaluation_users(train, test, None, 7)
    assert [r.user_id for r in users.collect()] == ["u1"]
    with pytest.raises(ValueError, match="must be after the cut"):
        evaluate.split(events, CUT, test_end=CUT)
