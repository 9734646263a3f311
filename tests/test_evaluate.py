"""jobs/evaluate end to end on a small dataset in the generic ingest format, written here:
several cuts with no leakage, tuned baselines, per-user results, bootstrap intervals, the
report and MLflow; plus the split, the windows and bad input on tiny frames."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from core import tables
from core.config import EvaluateConf, derive, load_config
from jobs import evaluate
from jobs.evaluate import bootstrap

START = dt.date(2025, 1, 1)
DAYS = 80
C1, C2, C3 = START + dt.timedelta(days=55), START + dt.timedelta(days=66), START + dt.timedelta(days=77)
TEST_DAYS = 10
CATEGORIES = {
    "mugs": ["red", "blue", "spotty", "tall", "enamel", "glass", "tiny", "giant"],
    "lamps": ["brass", "paper", "night", "desk", "fairy", "star", "moon", "clip"],
    "bags": ["jumbo", "tote", "jute", "cotton", "paisley", "lunch", "toy", "gift"],
}
BASELINES = ["repeat", "popularity", "cooccurrence", "item_knn", "als", "filter_bubble"]


def write_generic_dataset(folder) -> None:
    """40 buyers over 80 days in the generic CSV format: a home category each, re-buys,
    some purchases elsewhere, views; the last 3 days only views (an empty test window)."""
    rng = random.Random(5)
    items = [(f"{cat[:3]}-{i}", f"{word} {cat[:-1]}", cat, 2.0 + i) for cat, words in CATEGORIES.items()
             for i, word in enumerate(words)]  # fmt: skip
    by_category = {cat: [it for it in items if it[2] == cat] for cat in CATEGORIES}
    rows = []
    for u in range(40):
        home = list(CATEGORIES)[u % 3]
        own: list = []
        for day in range(0, DAYS, 3 + u % 3):
            ts = dt.datetime.combine(START + dt.timedelta(days=day + rng.randint(0, 2)), dt.time(9 + u % 8))
            if ts.date() >= START + dt.timedelta(days=DAYS - 3):
                kind = "view"
            else:
                kind = "purchase" if rng.random() < 0.8 else "view"
            for _ in range(rng.randint(1, 3)):
                roll = rng.random()
                if own and roll < 0.35:
                    item = rng.choice(own)
                elif roll < 0.85:
                    pool = by_category[home]
                    item = pool[min(int(rng.expovariate(0.5)), len(pool) - 1)]
                else:
                    item = rng.choice(items)
                own.append(item)
                rows.append({"user_id": f"b{u:02d}", "event_type": kind, "ts": ts.isoformat(), "item_id": item[0],
                             "quantity": rng.choice([6, 12, 24]) if kind == "purchase" else "",
                             "amount": round(item[3] * 12, 2) if kind == "purchase" else "",
                             "title": item[1], "leaf_category": item[2], "price": item[3]})  # fmt: skip
                ts += dt.timedelta(minutes=1)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "events.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
    """Ingest the generic dataset, evaluate at three cuts (the last one's window holds no
    purchase) and snapshot the second cut's as-of outputs; add late events and a late
    trend document, rebuild and rerun the second cut's as-of pipeline, snapshot again."""
    tmp = tmp_path_factory.mktemp("evaluate")
    write_generic_dataset(tmp / "shop")
    notes = tmp / "notes"
    source = {"name": "shop", "format": "generic", "path": str(tmp / "shop"), "file_format": "csv"}
    grids = {"als": {"rank": [4, 8], "reg_param": [0.1], "alpha": [10.0]},
             "item_knn": {"neighbours": [3, 20], "shrink": [0.0]}}  # fmt: skip
    conf = load_config(
        overrides=[
            f"storage.root={tmp / 'warehouse'}",
            "spark.shuffle_partitions=2",
            f"ingest.sources=[{json.dumps(source)}]",
            f"trends.sources=[{json.dumps({'name': 'notes', 'kind': 'folder', 'path': str(notes)})}]",
            f"evaluate.cuts=[{C1}, {C2}, {C3}]",
            f"evaluate.test_days={TEST_DAYS}",
            "evaluate.validation_days=10",
            "evaluate.ks=[3, 5]",
            "evaluate.k=5",
            f"evaluate.tuning.grids={json.dumps(grids)}",
            "evaluate.bootstrap_resamples=200",
            "rank.top_k=5",
            "q2i.k=10",
            # The cuts are 11 days apart: the second cut's ranker (and the leakage rerun's)
            # learns from the first cut's stored candidates; only the first builds its own.
            f"ranker.label_days={(C2 - C1).days}",
            "evaluate.tradeoff_steps=1",  # the curve's two ends: R = 0 and R = K
            f"evaluate.report_dir={tmp / 'reports'}",
        ]
    )
    from jobs import ingest

    ingest.run(spark, conf)
    category = "lamps"
    _write_notes(notes, [{"id": "d1", "title": f"{category}: rising", "text": f"{category} sell well",
                          "published_at": f"{C1}T00:00:00"}])  # fmt: skip
    first = evaluate.run(spark, conf)
    asof = evaluate.asof_conf(conf, C2)
    before = {name: _frame(spark, asof, name) for name in evaluate.ASOF_OUTPUTS}
    summary = tables.read(spark, conf, evaluate.EVALUATION).toPandas()
    per_user = tables.read(spark, conf, evaluate.USERS).toPandas()
    cuts = tables.read(spark, conf, evaluate.CUTS).toPandas()
    tuning = tables.read(spark, conf, evaluate.TUNING).toPandas()

    # After the second cut: a purchase on the cut day itself at midnight (the boundary), a
    # later search and purchase in a category the buyer never touched, and a trend
    # document about that category published after the cut.
    events = tables.read(spark, conf, "bronze.events")
    buyer = "b00"  # home category mugs
    template = events.filter(F.col("user_id") == buyer).first().asDict()
    late = []
    for i, (ts, etype, item) in enumerate(
        [
            (dt.datetime.combine(C2, dt.time(0, 0)), "purchase", template["item_id"]),
            (dt.datetime.combine(C2 + dt.timedelta(days=2), dt.time(10)), "search", None),
            (dt.datetime.combine(C2 + dt.timedelta(days=2), dt.time(11)), "purchase", "bag-7"),
        ]
    ):
        row = dict(template, event_id=f"late-{i}", ts=ts, dt=ts.date(), event_type=etype, item_id=item)
        row["query"] = "gift bag" if etype == "search" else None
        late.append(row)
    tables.append(spark.createDataFrame(late, schema=events.schema), conf, "bronze.events")
    _write_notes(notes, [
        {"id": "d1", "title": f"{category}: rising", "text": f"{category} sell well", "published_at": f"{C1}T00:00:00"},
        {"id": "d2", "title": "bags: rising fast", "text": "everyone buys gift bags", "published_at": f"{C2 + dt.timedelta(days=3)}T00:00:00"},
    ])  # fmt: skip
    # Rerun what the leakage check needs: the second cut's as-of warehouse and stages.
    evaluate.build_asof_warehouse(spark, conf, asof, C2, None)
    evaluate.run_asof_pipeline(spark, asof)
    after = {name: _frame(spark, asof, name) for name in evaluate.ASOF_OUTPUTS}
    return SimpleNamespace(conf=conf, asof=asof, first=first, before=before, after=after,
                           summary=summary, per_user=per_user, cuts=cuts, tuning=tuning)  # fmt: skip


def test_an_event_after_the_cut_changes_no_feature_query_or_recommendation(evaluated):
    before, after = evaluated.before, evaluated.after
    assert len(before["gold.recommendations"]) > 0 and len(before["gold.user_queries"]) > 0
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def test_heuristic_queries_are_made_of_the_generic_datasets_title_words(spark, evaluated):
    table = tables.read(spark, evaluated.asof, "gold.category_phrases")
    phrases = {r.leaf_category: r.phrase for r in table.collect()}
    # Every title is "<word> <category's singular>": only the singular is in two or more of
    # a category's items, so it is the category's phrase
    assert {c: phrases[c] for c in CATEGORIES} == {"mugs": "mug", "lamps": "lamp", "bags": "bag"}
    queries = tables.read(spark, evaluated.asof, "gold.user_queries").filter("kind = 'exploration'").collect()
    assert queries and {q.query for q in queries} <= {"mug", "lamp", "bag"}


def test_as_of_warehouse_holds_nothing_on_or_after_the_cut(spark, evaluated):
    conf, asof = evaluated.conf, evaluated.asof
    last = tables.read(spark, asof, "bronze.events").agg(F.max("dt")).collect()[0][0]
    assert last < C2
    assert asof.run.date == C2 - dt.timedelta(days=1)
    # The main warehouse does hold the late events: the filter, not the data, kept them out.
    late = tables.read(spark, conf, "bronze.events").filter(F.col("event_id").startswith("late-")).count()
    assert late == 3


def test_every_method_cut_and_k_has_a_value_with_its_interval(evaluated):
    summary = evaluated.summary
    assert set(summary["method"]) == {"pipeline", *BASELINES}
    # The third cut's window has no purchase: no row, but labelled (next test).
    assert set(summary["cut"]) == {str(C1), str(C2), bootstrap.MEAN}
    assert set(summary["k"]) == {3, 5}
    quality = summary[summary["metric"].isin(evaluate.QUALITY_METRICS) & summary["value"].notna()]
    assert len(quality) > 0
    assert (quality["lo"] <= quality["value"] + 1e-12).all() and (
        quality["value"] <= quality["hi"] + 1e-12
    ).all()
    recall = summary[(summary.metric == "recall") & (summary.cut == bootstrap.MEAN) & (summary.k == 5)]
    assert recall["value"].between(0, 1).all() and len(recall) == 7
    # Differences pipeline - baseline carry a verdict from their interval; none on the pipeline.
    rows = summary[summary["metric"].isin(evaluate.QUALITY_METRICS) & summary["diff"].notna()]
    for r in rows.itertuples():
        assert r.verdict == bootstrap.verdict(r.diff_lo, r.diff_hi)
    assert summary.loc[summary.method == "pipeline", "verdict"].isna().all()
    # Lists of every method are published with their length and users with a list.
    for metric in ("list_length", "has_list", "repeat_share", "coverage"):
        assert set(summary.loc[summary.metric == metric, "method"]) == {"pipeline", *BASELINES}
    # repeat recommends the buyer's own items only: its whole list is repeat items.
    repeat_share = summary[(summary.metric == "repeat_share") & (summary.method == "repeat")]
    assert (repeat_share["value"] == 1.0).all()


def test_the_summary_is_exactly_the_mean_of_the_per_user_table(evaluated):
    summary, per_user = evaluated.summary, evaluated.per_user
    per_user = per_user.assign(cut=per_user["cut_date"].astype(str))
    checked = 0
    for (cut, method, k), group in per_user.groupby(["cut", "method", "k"]):
        assert group["user_id"].is_unique
        for metric in ("recall", "ndcg", "new_category_hit", "recall_repeat", "list_length", "novelty"):
            values = group[metric].dropna()
            row = summary[
                (summary.cut == cut)
                & (summary.method == method)
                & (summary.k == k)
                & (summary.metric == metric)
            ]
            if values.empty:
                assert row.empty or np.isnan(row["value"].iloc[0])
                continue
            assert row["value"].iloc[0] == pytest.approx(values.sum() / len(values), rel=1e-12, abs=1e-15)
            checked += 1
    assert checked > 50
    # every method has a row for every evaluation user of the cut, at every K
    sizes = per_user.groupby(["cut", "method", "k"]).size()
    assert sizes.groupby(level="cut").nunique().eq(1).all()


def test_cuts_are_labelled_and_the_tuning_is_recorded(evaluated):
    cuts = evaluated.cuts.set_index("cut_date").sort_index()
    assert list(cuts.index) == [C1, C2, C3]
    assert (cuts.loc[[C1, C2], "status"] == "ok").all() and (cuts.loc[[C1, C2], "users"] > 5).all()
    # the third window holds no purchase: labelled, with no user and no purchase to find
    assert cuts.loc[C3, "status"].startswith("empty: no buyer") and cuts.loc[C3, "users"] == 0
    assert (cuts["test_end"] - cuts.index.to_series() <= dt.timedelta(days=TEST_DAYS)).all()
    tuning = evaluated.tuning
    # 2 ALS + 2 item-kNN points from the profile's grids, 3 repeat points by default
    assert tuning.groupby("baseline").size().to_dict() == {"als": 2, "item_knn": 2, "repeat": 3}
    assert tuning.groupby("baseline")["chosen"].sum().eq(1).all()
    best = tuning.loc[tuning.groupby("baseline")["score"].idxmax()]
    assert best["chosen"].all()


def test_a_window_without_purchases_is_an_empty_labelled_result(spark, evaluated):
    conf = evaluated.conf
    events = tables.read(spark, conf, "bronze.events").filter(~F.col("event_id").startswith("late-"))
    window = evaluate.Window(C3, START + dt.timedelta(days=DAYS))
    result = evaluate.evaluate_cut(spark, conf, events, window, {})
    assert result.per_user is None and result.users == 0
    assert result.status.startswith("empty: no buyer") and str(C3) in result.status


def test_k_larger_than_the_catalog_is_a_clear_error(spark, evaluated):
    conf = evaluated.conf
    big = derive(conf, ["evaluate.ks=[5, 1000]"])
    events = tables.read(spark, conf, "bronze.events")
    with pytest.raises(ValueError, match=r"K=1000 is larger than the catalog known before"):
        evaluate.evaluate_cut(spark, big, events, evaluate.Window(C1, C1 + dt.timedelta(days=TEST_DAYS)), {})


def test_the_tradeoff_curve_has_both_ends_for_each_cut_and_its_mix_starts_at_cooccurrence(spark, evaluated):
    curve = tables.read(spark, evaluated.conf, evaluate.TRADEOFF).toPandas()
    assert set(curve["cut"]) == {str(C1), str(C2)}
    methods = {(m, r) for m in ("pipeline", "own+cooccurrence") for r in (0, 5)}
    assert {(m, r) for m, r in zip(curve["method"], curve["repeat_slots"], strict=True)} == methods
    s = evaluated.summary
    for cut in (C1, C2):
        at = curve[curve["cut"] == str(cut)].set_index(["method", "repeat_slots"])
        # No repeat slot: the mix is the co-occurrence baseline's list, so its recall@5 too.
        cooc = s[(s.metric == "recall") & (s.method == "cooccurrence") & (s.cut == str(cut)) & (s.k == 5)]
        assert at.loc[("own+cooccurrence", 0), "recall"] == pytest.approx(cooc["value"].iloc[0])
        # Every repeat slot: the buyer's own items first, which hit more than none of them.
        assert at.loc[("own+cooccurrence", 5), "recall"] > at.loc[("own+cooccurrence", 0), "recall"]
        assert (at["users"] == at["users"].iloc[0]).all()


def test_report_and_plots_are_written(evaluated):
    import pathlib

    conf = evaluated.conf
    out = pathlib.Path(conf.evaluate.report_dir) / "evaluation"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "item_knn" in html and "data:image/png;base64," in html
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert f"cut_{C2:%Y%m%d}.png" in pngs and "k_sweep.png" in pngs and "tradeoff.png" in pngs
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_holds_every_number_and_every_as_of_stage(spark, evaluated):
    from mlflow.tracking import MlflowClient

    from jobs.tracking import tracking_uri

    conf, summary = evaluated.conf, evaluated.summary
    client = MlflowClient(tracking_uri=tracking_uri(conf))
    exp = client.get_experiment_by_name(conf.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted((r for r in runs if r.info.run_name == "evaluate"), key=lambda r: r.info.start_time)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    run = parents[0]
    logged = run.data.metrics
    numbers = 0
    for r in summary.itertuples():
        key = evaluate._metric_key(r)
        for suffix, value in (("", r.value), (".lo", r.lo), (".hi", r.hi), (".diff", r.diff)):
            if pd.notna(value):
                assert logged[key + suffix] == pytest.approx(value)
                numbers += 1
    assert numbers > 500
    assert any(k.startswith("tuned.als.") for k in run.data.params)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    # the as-of stages ran once per cut with buyers (2 of the 3)
    assert len(children) == 2 * len(evaluate.asof_stages())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.html", "report/evaluation.csv", "report/tuning.csv"} <= artifacts


@pytest.mark.slow
def test_split_at_the_cut_and_before_test_end(spark):
    cut, day = C1, dt.timedelta(days=1)
    rows = [
        ("u1", "A", "purchase", cut - day),  # train
        ("u1", "B", "purchase", cut),  # test: the cut day belongs to the test side
        ("u1", "B", "purchase", cut + day),  # same pair again: counted once
        ("u1", "C", "view", cut),  # not a purchase
        ("u2", "D", "purchase", cut + 5 * day),  # the test_end day: left out
        ("u3", "E", "purchase", cut + day),  # test, but u3 has no history: not evaluated
        ("u2", "F", "click", cut - 3 * day),  # train
    ]
    events = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, dt date")
    train, test = evaluate.split(events, cut, test_end=cut + 5 * day)
    assert sorted(r.item_id for r in train.collect()) == ["A", "F"]
    assert sorted((r.user_id, r.item_id) for r in test.collect()) == [("u1", "B"), ("u3", "E")]
    users = evaluate.evaluation_users(train, test, None, 7)
    assert [r.user_id for r in users.collect()] == ["u1"]
    with pytest.raises(ValueError, match="must be after the cut"):
        evaluate.split(events, cut, test_end=cut)


def test_windows_auto_explicit_and_bad_cuts():
    first, last = dt.date(2011, 1, 1), dt.date(2011, 12, 9)
    auto = evaluate.resolve_windows(EvaluateConf(n_cuts=3, test_days=28), first, last)
    # three consecutive 28-day windows ending with the last day
    assert [(w.cut, w.last_day) for w in auto] == [
        (dt.date(2011, 9, 17), dt.date(2011, 10, 14)),
        (dt.date(2011, 10, 15), dt.date(2011, 11, 11)),
        (dt.date(2011, 11, 12), dt.date(2011, 12, 9)),
    ]
    validation = evaluate.validation_window(EvaluateConf(validation_days=28), auto, first)
    assert (validation.cut, validation.last_day) == (dt.date(2011, 8, 20), dt.date(2011, 9, 16))
    # an explicit cut near the end: its window is cut short at the end of the data
    (late,) = evaluate.resolve_windows(EvaluateConf(cuts=[dt.date(2011, 12, 1)]), first, last)
    assert late.end == dt.date(2011, 12, 10)
    with pytest.raises(ValueError, match="after the last day of the data"):
        evaluate.resolve_windows(EvaluateConf(cuts=[dt.date(2012, 1, 1)]), first, last)
    with pytest.raises(ValueError, match="leaves no training day"):
        evaluate.resolve_windows(EvaluateConf(cuts=[dt.date(2010, 6, 1)]), first, last)
    with pytest.raises(ValueError, match="lower n_cuts"):
        evaluate.resolve_windows(EvaluateConf(n_cuts=20, test_days=28), first, last)
    # no training day before the validation window: no tuning
    assert evaluate.validation_window(EvaluateConf(validation_days=28), auto, dt.date(2011, 8, 25)) is None


@pytest.mark.slow
def test_operational_figures_count_only_this_runs_answers(spark, conf_factory):
    from jobs.agents import RESPONSE_SCHEMA, RESPONSES_TABLE

    asof = conf_factory(["run.run_id=evaluate-20250308-smollm2"])

    def answer(key, status, tokens, latency, run_id):
        row = dict.fromkeys(RESPONSE_SCHEMA.fieldNames())
        row.update(cache_key=key, agent="u2q", status=status, input_tokens=tokens, output_tokens=0,
                   latency_ms=latency, attempts=1, run_id=run_id)  # fmt: skip
        return row

    rows = [
        answer("a", "ok", 100, 1000, "evaluate-20250308-smollm2"),
        answer("b", "not_json", 300, 3000, "evaluate-20250308-smollm2"),
        answer("d", "partial", 200, 2000, "evaluate-20250308-smollm2"),  # cut off, items kept
        # seeded from the previous cut's cache: not this run's cost
        answer("c", "ok", 5000, 90000, "evaluate-20250225-smollm2"),
    ]
    tables.overwrite(spark.createDataFrame(rows, RESPONSE_SCHEMA), asof, RESPONSES_TABLE)
    figures = evaluate.ops_figures(spark, asof, users=2)
    # 2 of 3 answers usable (one of them partial); (100 + 300 + 200) tokens over 2 users; one failure
    assert figures["parse_success"] == pytest.approx(2 / 3) and figures["partial_share"] == pytest.approx(
        1 / 3
    )
    assert figures["tokens_per_user"] == 300.0
    assert figures["failures"] == 1.0 and figures["latency_p95_ms"] <= 3000
