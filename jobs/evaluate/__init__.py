"""Evaluate: does the pipeline find what buyers go on to buy, and is it new to them?

A temporal split with no leakage, the pipeline against baselines on the same split,
and one comparison table (printed, logged to MLflow, written as an HTML report).

1. **Split** at ``evaluate.cut_date`` (or the last ``evaluate.test_days`` days):
   evaluation users are those with events before the cut and a purchase on or after it
   (``evaluate.max_users``: a seeded sample of them).
2. **As-of warehouse** (``<storage.root>/evaluation/asof_<cut>``): ``bronze.events``
   before the cut and the catalog items first seen before it are copied there, and every
   stage after ingest runs in it with ``run.date`` = the day before the cut. A stage can
   only read what the as-of warehouse holds, so nothing after the cut can leak in; the
   one outside input, trend documents, is filtered by publication date. The embedding
   cache (``silver.text_vectors``, a pure function of text and model) is copied over so
   that texts are not embedded twice.
3. **Baselines** (:mod:`jobs.evaluate.baselines`) on the same training events.
4. **Metrics at K** (:mod:`jobs.evaluate.metrics`) on the purchases after the cut.
5. **Model selection**: each ``evaluate.variants`` entry (overrides such as another LLM
   backend, model or prompt version) reruns the as-of pipeline in its own warehouse;
   its operational figures (parse success, tokens per user, latency p50/p95, failures)
   come from that warehouse's ``silver.llm_responses``.
6. **Output**: ``gold.evaluation`` (one row per method), ``gold.evaluation_lists`` (every
   evaluated list), the Markdown table on stdout,
   the report (``evaluate.report_dir``: HTML + PNG plots), all logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import tables
from jobs.config import Config, derive

EVALUATION = "gold.evaluation"
# Every evaluated list: method, user_id, item_id, position, has_reason.
LISTS = "gold.evaluation_lists"
PIPELINE = "pipeline"
# Outputs of the as-of run compared by the leakage test and shown in the report.
ASOF_OUTPUTS = (
    "silver.user_windows",
    "gold.behavior_digests",
    "gold.cfv",
    "gold.portraits",
    "gold.trend_queries",
    "gold.user_queries",
    "gold.recommendations",
)


def asof_stages() -> list[str]:
    """Every stage the evaluation reruns as of the cut: all but ingest and evaluate itself."""
    from jobs.cli import STAGES

    return [s for s, _ in STAGES if s not in ("ingest", "evaluate")]


def resolve_cut(conf: Config, events: DataFrame) -> dt.date:
    """``evaluate.cut_date``, or (``auto``) the first of the last ``test_days`` days of data."""
    ec = conf.evaluate
    if ec.cut_date != "auto":
        return ec.cut_date
    last = events.agg(F.max("dt")).collect()[0][0]
    if last is None:
        raise ValueError("bronze.events is empty: nothing to evaluate (run ingest first)")
    return last - dt.timedelta(days=ec.test_days - 1)


def split(events: DataFrame, cut: dt.date, test_end: dt.date | None = None) -> tuple[DataFrame, DataFrame]:
    """(train events: ``dt < cut``, test purchases: distinct (user_id, item_id) on or after
    it, and before ``test_end`` when given)."""
    train = events.filter(F.col("dt") < F.lit(cut))
    in_test = F.col("dt") >= F.lit(cut)
    if test_end is not None:
        if test_end <= cut:
            raise ValueError(f"evaluate.test_end {test_end} must be after the cut date {cut}")
        in_test = in_test & (F.col("dt") < F.lit(test_end))
    test = (
        events.filter(in_test & (F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
        .select("user_id", "item_id")
        .distinct()
    )
    return train, test


def evaluation_users(train: DataFrame, test: DataFrame, max_users: int | None, seed: int) -> DataFrame:
    """Users active on both sides of the cut; a seeded sample of ``max_users`` of them."""
    users = test.select("user_id").distinct().join(train.select("user_id").distinct(), "user_id")
    if max_users is None:
        return users
    return users.orderBy(F.xxhash64("user_id", F.lit(seed)), "user_id").limit(max_users)


def asof_conf(conf: Config, cut: dt.date, variant=None) -> Config:
    """The configuration of the as-of run: its own warehouse, run date = the day before the cut."""
    root = Path(conf.storage.root).resolve() / "evaluation" / f"asof_{cut:%Y%m%d}"
    if variant is not None:
        root = root.with_name(f"{root.name}_{variant.name}")
    overrides = [
        f"storage.root={root}",
        "storage.catalog=null",
        f"run.date={cut - dt.timedelta(days=1)}",
        f"run.run_id=evaluate-{cut:%Y%m%d}" + (f"-{variant.name}" if variant else ""),
        f"tracking.uri={_tracking_uri(conf)}",
        "evaluate.variants=[]",
    ]
    return derive(conf, overrides + (list(variant.overrides) if variant else []))


def _tracking_uri(conf: Config) -> str:
    from jobs.tracking import tracking_uri

    return tracking_uri(conf)


def build_asof_warehouse(
    spark: SparkSession, conf: Config, asof: Config, cut: dt.date, users: DataFrame | None
) -> dict[str, int]:
    """Copy what was known before the cut into the as-of warehouse; returns row counts.

    ``users``: restrict the training events to these users (``evaluate.max_users``).
    """
    events = tables.read(spark, conf, "bronze.events").filter(F.col("dt") < F.lit(cut))
    if users is not None:
        events = events.join(users.select("user_id"), "user_id", "left_semi")
    cut_ts = dt.datetime.combine(cut, dt.time())
    items = tables.read(spark, conf, "bronze.items").filter(
        F.col("first_seen").isNull() | (F.col("first_seen") < F.lit(cut_ts))
    )
    tables.overwrite(events, asof, "bronze.events", partition_by=["dt"])
    tables.overwrite(items, asof, "bronze.items")
    if tables.exists(spark, conf, "silver.text_vectors") and not tables.exists(
        spark, asof, "silver.text_vectors"
    ):
        tables.overwrite(tables.read(spark, conf, "silver.text_vectors"), asof, "silver.text_vectors")
    return {
        "train_events": tables.read(spark, asof, "bronze.events").count(),
        "catalog_items": tables.read(spark, asof, "bronze.items").count(),
    }


def run_asof_pipeline(spark: SparkSession, asof: Config, tracker=None, parent_id: str | None = None) -> None:
    """Every stage after ingest, in DAG order, in the as-of warehouse."""
    from jobs.cli import run_stages

    run_stages(spark, asof, asof_stages(), tracker=tracker, parent_id=parent_id, label="as of")


def pipeline_recs(spark: SparkSession, asof: Config, method: str) -> DataFrame:
    """The as-of ``gold.recommendations`` in the common list schema of the metrics."""
    return tables.read(spark, asof, "gold.recommendations").select(
        F.lit(method).alias("method"),
        "user_id",
        "item_id",
        "position",
        (F.coalesce(F.length(F.trim("reason")), F.lit(0)) > 0).alias("has_reason"),
    )


def ops_figures(spark: SparkSession, asof: Config, users: int) -> dict[str, float]:
    """Parse success, tokens per user, latency p50/p95 and failures of the LLM answers
    in the as-of warehouse (the latest answer per request); empty for a heuristic run."""
    from udfs.llm.runner import RESPONSES_TABLE

    if not tables.exists(spark, asof, RESPONSES_TABLE):
        return {}
    log = tables.read(spark, asof, RESPONSES_TABLE)
    row = log.agg(
        F.count("*").alias("n"),
        F.sum((F.col("status") == "ok").cast("int")).alias("ok"),
        F.sum((F.col("status") != "ok").cast("int")).alias("failed"),
        F.sum(F.coalesce("input_tokens", F.lit(0)) + F.coalesce("output_tokens", F.lit(0))).alias("tokens"),
        F.percentile_approx("latency_ms", 0.5).alias("p50"),
        F.percentile_approx("latency_ms", 0.95).alias("p95"),
    ).collect()[0]
    if not row["n"]:
        return {}
    return {
        "parse_success": row["ok"] / row["n"],
        "tokens_per_user": (row["tokens"] or 0) / max(users, 1),
        "latency_p50_ms": float(row["p50"]) if row["p50"] is not None else float("nan"),
        "latency_p95_ms": float(row["p95"]) if row["p95"] is not None else float("nan"),
        "failures": float(row["failed"] or 0),
    }


def baseline_recs(
    spark: SparkSession, asof: Config, names: list[str], users: DataFrame, k: int
) -> DataFrame | None:
    """Every configured baseline's lists for ``users``, from the as-of training events."""
    from jobs.evaluate import baselines

    train = tables.read(spark, asof, "bronze.events")
    categories = item_categories(spark, asof)
    frames = []
    for name in names:
        t0 = time.perf_counter()
        if name == "popularity":
            df = baselines.popularity(train, users, k)
        elif name == "cooccurrence":
            df = baselines.cooccurrence(train, users, k)
        elif name == "als":
            df = baselines.als(train, users, k)
        else:
            df = baselines.filter_bubble(train, categories, users, k)
        df = df.localCheckpoint()
        print(
            f"evaluate: baseline {name}: {df.count():,} rows in {time.perf_counter() - t0:.1f}s", flush=True
        )
        frames.append(df)
    if not frames:
        return None
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


def item_categories(spark: SparkSession, asof: Config) -> DataFrame:
    return tables.read(spark, asof, "silver.item_profiles").select("item_id", "leaf_category")


def run(spark: SparkSession, conf: Config) -> dict[str, float]:
    """Evaluate the pipeline (and its variants) against the baselines; see the module docstring."""
    from jobs.evaluate import report
    from jobs.tracking import Tracker, tracked

    ec = conf.evaluate
    events = tables.read(spark, conf, "bronze.events")
    cut = resolve_cut(conf, events)
    train, test = split(events, cut, ec.test_end)
    users = evaluation_users(train, test, ec.max_users, ec.seed).localCheckpoint()
    n_users = users.count()
    if n_users == 0:
        raise ValueError(
            f"evaluate: no user has events before {cut} and a purchase on or after it: "
            "choose another evaluate.cut_date"
        )
    test = test.join(users, "user_id", "left_semi").localCheckpoint()
    last_day = events.agg(F.max("dt")).collect()[0][0]
    if ec.test_end is not None:
        last_day = min(last_day, ec.test_end - dt.timedelta(days=1))
    n_test = test.count()
    print(
        f"evaluate: cut {cut} (train before, test {cut}..{last_day}); {n_users:,} users active on both "
        f"sides, {n_test:,} (user, item) purchases to find; K={ec.k}",
        flush=True,
    )
    tracker = Tracker(conf)
    variants = [None, *ec.variants]
    summaries, per_users, ops, lists = [], [], {}, []
    with tracked(tracker, conf, f"evaluate {cut}") as ev_run:
        base_asof = asof_conf(conf, cut)
        for variant in variants:
            asof = asof_conf(conf, cut, variant)
            method = PIPELINE if variant is None else f"{PIPELINE}[{variant.name}]"
            counts = build_asof_warehouse(spark, conf, asof, cut, users if ec.max_users else None)
            print(
                f"evaluate: {method}: as-of warehouse {asof.storage.root}: {counts['train_events']:,} "
                f"training events, {counts['catalog_items']:,} catalog items; running "
                f"{len(asof_stages())} stages as of {asof.run.date}",
                flush=True,
            )
            run_asof_pipeline(spark, asof, tracker, ev_run["run_id"])
            recs = pipeline_recs(spark, asof, method)
            lists.append(recs)
            summary, per_user = _measure(spark, asof, recs, test, ec.k)
            if method not in set(summary["method"]):  # no list at all: a row of misses
                summary = pd.DataFrame([_no_lists_row(method, n_users)])
            summaries.append(summary)
            per_users.append(per_user)
            ops[method] = ops_figures(spark, asof, n_users if ec.max_users else _pipeline_users(spark, asof))
        base = baseline_recs(spark, base_asof, list(ec.baselines), users, ec.k)
        if base is not None:
            lists.append(base)
            summary, per_user = _measure(spark, base_asof, base, test, ec.k)
            summaries.append(summary)
            per_users.append(per_user)
        table = pd.concat(summaries, ignore_index=True)
        for method, figures in ops.items():
            for name, value in figures.items():
                table.loc[table["method"] == method, name] = value
        table = _order(table, list(ec.baselines))
        per_user = pd.concat(per_users, ignore_index=True)
        _write_table(spark, conf, table, cut)
        all_lists = lists[0]
        for df in lists[1:]:
            all_lists = all_lists.unionByName(df)
        tables.overwrite(all_lists.withColumn("cut_date", F.lit(cut)), conf, LISTS)
        out_dir = Path(ec.report_dir) / f"evaluation_{cut:%Y%m%d}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        plots = report.write_plots(table, per_user, out_dir, k=ec.k)
        context = {
            "cut date": str(cut),
            "test period": f"{cut} .. {last_day}",
            "users evaluated": f"{n_users:,}",
            "K": str(ec.k),
            "tables": conf.storage.root,
            "MLflow run": ev_run["run_id"] or "(tracking off)",
        }
        html = report.write_html(
            table, plots, out_dir / "report.html", "Discovery evaluation", context, k=ec.k
        )
        print(report.format_table(table, k=ec.k), flush=True)
        print(f"evaluate: report {html}", flush=True)
        ev_run["metrics"] = _flat_metrics(table)
        ev_run["metrics"]["users"] = float(n_users)
        ev_run["metrics"]["test_purchases"] = float(n_test)
        tracker.artifacts(ev_run["run_id"], out_dir, "report")
    return ev_run["metrics"]


def _no_lists_row(method: str, users: int) -> dict:
    """The summary of a method that recommended nothing: misses, and no list to describe."""
    from jobs.evaluate.metrics import METRICS

    row = {m: float("nan") for m in METRICS}
    row.update(recall=0.0, hit_rate=0.0, ndcg=0.0, coverage=0.0, users_with_list=0.0)
    return {"method": method, **row, "users": users}


def _pipeline_users(spark: SparkSession, asof: Config) -> int:
    return tables.read(spark, asof, "gold.recommendations").select("user_id").distinct().count()


def _measure(spark: SparkSession, asof: Config, recs: DataFrame, test: DataFrame, k: int):
    from jobs.evaluate import metrics

    train = tables.read(spark, asof, "bronze.events")
    history = train.filter(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    purchases = (
        train.filter((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
        .select("user_id", "item_id")
        .distinct()
    )
    vectors = tables.read(spark, asof, "silver.item_vectors").select("item_id", "vector")
    categories = item_categories(spark, asof)
    catalog = categories.select("item_id").distinct().count()
    summary, per_user = metrics.evaluate(recs, test, history, categories, vectors, purchases, catalog, k)
    return summary.toPandas(), per_user.toPandas()


def _order(table: pd.DataFrame, baselines: list[str]) -> pd.DataFrame:
    """Pipeline rows first (as run), then the baselines in their configured order."""
    position = {name: i for i, name in enumerate(baselines)}
    key = [
        (0, i) if m.startswith(PIPELINE) else (1, position.get(m, len(position)))
        for i, m in enumerate(table["method"])
    ]
    ordered = table.assign(_g=[g for g, _ in key], _i=[i for _, i in key]).sort_values(["_g", "_i"])
    return ordered.drop(columns=["_g", "_i"]).reset_index(drop=True)


def _flat_metrics(table: pd.DataFrame) -> dict[str, float]:
    out = {}
    for _, row in table.iterrows():
        method = row["method"].replace("[", "_").replace("]", "")
        for col, value in row.items():
            if col != "method" and pd.notna(value) and isinstance(value, int | float):
                out[f"{method}.{col}"] = float(value)
    return out


def _write_table(spark: SparkSession, conf: Config, table: pd.DataFrame, cut: dt.date) -> None:
    df = spark.createDataFrame(table.astype({c: "float64" for c in table.columns if c != "method"}))
    tables.overwrite(
        df.withColumn("cut_date", F.lit(cut))
        .withColumn("k", F.lit(conf.evaluate.k))
        .withColumn("evaluated_at", F.current_timestamp()),
        conf,
        EVALUATION,
    )
