"""Evaluate: does the pipeline find what buyers go on to buy, and is it new to them?

Its own job (``discovery evaluate``; weekly in ``databricks.yml``), not part of the daily
``discovery pipeline`` unless asked (``--with-evaluation`` or ``evaluate.in_pipeline``).

1. **Cuts** (``evaluate.cuts``): several temporal splits. At each cut date the training
   side is every event before it and the test side the purchases of the following
   ``evaluate.test_days`` days (its *test window*). ``auto`` places ``n_cuts`` consecutive
   windows at the end of the data. Evaluation users of a cut: buyers with events before
   it and a purchase in its window (``evaluate.max_users``: a seeded sample).
2. **Validation split**: the ``validation_days`` before the first cut are a test window
   of their own, used only to choose the settings of the tunable baselines (ALS,
   item-kNN, repeat) by a small grid (``evaluate.tuning``); the tuning reads nothing on
   or after the first cut (:func:`tune_baselines`).
3. **As-of warehouse** per cut (``<storage.root>/evaluation/asof_<cut>``): ``bronze.events``
   before the cut and the catalog items first seen before it are copied there, and every
   stage after ingest runs in it with ``run.date`` = the day before the cut. A stage can
   only read what the as-of warehouse holds, so nothing after the cut can leak in; the
   one outside input, trend documents, is filtered by publication date. Shared between
   cuts: the one ingest of the main warehouse, the embedding cache
   (``silver.text_vectors``) and the LLM answer cache (``silver.llm_responses``), pure
   functions of their inputs, so no text is embedded and no prompt is sent twice.
4. **Baselines** (:mod:`jobs.evaluate.baselines`), refitted at each cut on its training
   events with the tuned settings.
5. **Metrics** per user at every K of ``evaluate.ks`` (:mod:`jobs.evaluate.metrics`),
   including the repeat vs explore breakdown.
6. **Intervals**: a paired bootstrap over users (:mod:`jobs.evaluate.bootstrap`) for every
   metric and every difference pipeline - baseline, per cut and for the mean over cuts.
7. **Output**: ``gold.evaluation`` (long: cut, method, k, metric, value, interval,
   difference to the pipeline, verdict), ``gold.evaluation_users`` (every metric of every
   user, method, cut and K: the table the summary is the mean of),
   ``gold.evaluation_lists``, ``gold.evaluation_cuts`` (each cut's window, sizes and
   status), ``gold.evaluation_tuning`` (the grid and the choice); the tables on stdout;
   the HTML report (``evaluate.report_dir``); all of it in MLflow.
8. **Model selection**: each ``evaluate.variants`` entry (overrides such as another LLM
   backend) reruns the as-of pipeline in its own warehouse at every cut; its
   operational figures come from that warehouse's ``silver.llm_responses``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config, EvaluateConf, derive
from jobs.agents import RESPONSES_TABLE
from jobs.asof import asof_items, asof_stages, build_asof_warehouse, run_asof_pipeline
from jobs.evaluate import baselines, bootstrap, metrics, report, tradeoff
from jobs.tracking import Tracker, tracked, tracking_uri

log = logging.getLogger(__name__)

EVALUATION = "gold.evaluation"
USERS = "gold.evaluation_users"
# Every evaluated list: cut_date, method, user_id, item_id, position, has_reason.
LISTS = "gold.evaluation_lists"
CUTS = "gold.evaluation_cuts"
TUNING = "gold.evaluation_tuning"
# cut x method (pipeline, own+cooccurrence) x repeat slots: recall and new-category hit at K.
TRADEOFF = "gold.evaluation_tradeoff"
PIPELINE = "pipeline"
TUNING_SCHEMA = "baseline string, params string, score double, chosen boolean"
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
# Re-exported: the metrics with a verdict of quality, the operational figures.
QUALITY_METRICS = metrics.QUALITY_METRICS
OPS_METRICS = metrics.OPS_METRICS


@dataclass(frozen=True)
class Window:
    """A temporal split: train on events before ``cut``, test on purchases in ``[cut, end)``."""

    cut: dt.date
    end: dt.date

    @property
    def last_day(self) -> dt.date:
        return self.end - dt.timedelta(days=1)

    def __str__(self) -> str:
        return f"cut {self.cut} (test {self.cut}..{self.last_day})"


def data_days(events: DataFrame) -> tuple[dt.date, dt.date]:
    """(first, last) event day of ``events``; ValueError when there is none."""
    first, last = events.agg(F.min("dt"), F.max("dt")).collect()[0]
    if last is None:
        raise ValueError("bronze.events is empty: nothing to evaluate (run ingest first)")
    return first, last


def resolve_windows(ec: EvaluateConf, first: dt.date, last: dt.date) -> list[Window]:
    """The test windows of ``evaluate.cuts`` on data from ``first`` to ``last`` (inclusive).

    ``auto``: ``n_cuts`` consecutive windows of ``test_days`` ending with the last day.
    A list: a window of ``test_days`` after each cut date, cut short at the end of the
    data. A cut without a training day before it, or after the last day, is an error.
    """
    days = dt.timedelta(days=ec.test_days)
    if ec.cuts == "auto":
        end = last + dt.timedelta(days=1)
        cuts = [end - days * (ec.n_cuts - i) for i in range(ec.n_cuts)]
    else:
        cuts = list(ec.cuts)
    windows = []
    for cut in cuts:
        if cut <= first:
            raise ValueError(
                f"evaluate.cuts: cut {cut} leaves no training day: the data start on {first} "
                f"(with cuts=auto, lower n_cuts ({ec.n_cuts}) or test_days ({ec.test_days}))"
            )
        if cut > last:
            raise ValueError(f"evaluate.cuts: cut {cut} is after the last day of the data ({last})")
        windows.append(Window(cut, min(cut + days, last + dt.timedelta(days=1))))
    return windows


def validation_window(ec: EvaluateConf, windows: list[Window], first: dt.date) -> Window | None:
    """The ``validation_days`` right before the first cut; None if no training day precedes them."""
    start = windows[0].cut - dt.timedelta(days=ec.validation_days)
    if start <= first:
        return None
    return Window(start, windows[0].cut)


def split(events: DataFrame, cut: dt.date, test_end: dt.date | None = None) -> tuple[DataFrame, DataFrame]:
    """(train events: ``dt < cut``, test purchases: distinct (user_id, item_id) on or after
    it, and before ``test_end`` when given)."""
    train = events.filter(F.col("dt") < F.lit(cut))
    in_test = F.col("dt") >= F.lit(cut)
    if test_end is not None:
        if test_end <= cut:
            raise ValueError(f"test window end {test_end} must be after the cut date {cut}")
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


def all_ks(ec: EvaluateConf) -> list[int]:
    """Every K evaluated: ``evaluate.ks`` and the headline ``evaluate.k``."""
    return sorted({*ec.ks, ec.k})


def asof_conf(conf: Config, cut: dt.date, variant=None) -> Config:
    """The configuration of the as-of run: its own warehouse, run date = the day before the
    cut, lists as long as the largest K."""
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
        f"rank.top_k={max(conf.rank.top_k, *all_ks(conf.evaluate))}",
    ]
    return derive(conf, overrides + (list(variant.overrides) if variant else []))


def _tracking_uri(conf: Config) -> str:

    return tracking_uri(conf)


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
    """Parse success (ok or partial), the partial share, tokens per user, latency p50/p95
    and failures of the LLM answers
    this as-of run asked for (its ``run.run_id``; answers found in the cache seeded from an
    earlier cut cost nothing and are not counted); empty for a heuristic run."""

    if not tables.exists(spark, asof, RESPONSES_TABLE):
        return {}
    answers = tables.read(spark, asof, RESPONSES_TABLE).filter(F.col("run_id") == F.lit(asof.run.run_id))
    row = answers.agg(
        F.count("*").alias("n"),
        F.sum((F.col("status") == "ok").cast("int")).alias("ok"),
        F.sum((F.col("status") == "partial").cast("int")).alias("partial"),
        F.sum((~F.col("status").isin("ok", "partial")).cast("int")).alias("failed"),
        F.sum(F.coalesce("input_tokens", F.lit(0)) + F.coalesce("output_tokens", F.lit(0))).alias("tokens"),
        F.percentile_approx("latency_ms", 0.5).alias("p50"),
        F.percentile_approx("latency_ms", 0.95).alias("p95"),
    ).collect()[0]
    if not row["n"]:
        return {}
    return {
        "parse_success": (row["ok"] + row["partial"]) / row["n"],
        "partial_share": row["partial"] / row["n"],
        "tokens_per_user": (row["tokens"] or 0) / max(users, 1),
        "latency_p50_ms": float(row["p50"]) if row["p50"] is not None else float("nan"),
        "latency_p95_ms": float(row["p95"]) if row["p95"] is not None else float("nan"),
        "failures": float(row["failed"] or 0),
    }


def baseline_recs(
    train: DataFrame,
    item_categories: DataFrame,
    users: DataFrame,
    names: list[str],
    k: int,
    as_of: dt.date,
    params: dict[str, dict],
) -> DataFrame | None:
    """Every named baseline's lists for ``users``, fitted on ``train`` with ``params``."""
    frames = []
    for name in names:
        t0 = time.perf_counter()
        df = baselines.recommend(
            name, train, users, k, as_of, item_categories=item_categories, params=params.get(name)
        ).localCheckpoint()
        log.info("evaluate: baseline %s %s: %s rows in %.1fs", name, params.get(name) or "", f"{df.count():,}",
                 time.perf_counter() - t0)  # fmt: skip
        frames.append(df)
    return _union(frames) if frames else None


def _empty_frame(spark: SparkSession, schema: str) -> DataFrame:
    return spark.createDataFrame([], schema)


def _score_lists(
    spark: SparkSession, recs: DataFrame, test: DataFrame, train: DataFrame, k: int, metric: str
):
    """The mean of one per-user metric at ``k`` (users of ``test``), for tuning."""
    history = train.filter(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    per_user = metrics.per_user(
        recs,
        test,
        history,
        _empty_frame(spark, "item_id string, leaf_category string"),
        _empty_frame(spark, "item_id string, vector array<float>"),
        _empty_frame(spark, "user_id string, item_id string"),
        [k],
    )
    value = per_user.agg(F.avg(metric)).collect()[0][0]
    return float(value) if value is not None else float("nan")


def tune_baselines(
    spark: SparkSession, ec: EvaluateConf, events: DataFrame, first_cut: dt.date, first_day: dt.date
) -> tuple[dict[str, dict], pd.DataFrame]:
    """Choose the settings of the tunable baselines on the validation split before ``first_cut``.

    Reads only events before ``first_cut``: validation training events before
    ``first_cut - validation_days``, validation test purchases in the days between. Every
    grid point is scored by ``evaluate.tuning.metric`` at ``evaluate.k``; the best (first
    in grid order on a tie) is chosen. Returns ``({baseline: params}, grid table)``; the
    table has ``baseline, params (JSON), score, chosen``. A baseline keeps its defaults
    when tuning is off or the data hold no validation window.
    """
    columns = ["baseline", "params", "score", "chosen"]
    names = [n for n in ec.baselines if n in baselines.TUNABLE]
    if not ec.tuning.enabled or not names:
        return {}, pd.DataFrame(columns=columns)
    known = events.filter(F.col("dt") < F.lit(first_cut))  # nothing of any test window
    window = Window(first_cut - dt.timedelta(days=ec.validation_days), first_cut)
    if window.cut <= first_day:
        log.warning("evaluate: no validation window before %s (data start %s): baselines keep their defaults",
                    first_cut, first_day)  # fmt: skip
        return {}, pd.DataFrame(columns=columns)
    train, test = split(known, window.cut, window.end)
    users = evaluation_users(train, test, ec.max_users, ec.seed).localCheckpoint()
    n_users = users.count()
    if n_users == 0:
        log.warning("evaluate: no buyer in the validation window %s: baselines keep their defaults", window)
        return {}, pd.DataFrame(columns=columns)
    test = test.join(users, "user_id", "left_semi").localCheckpoint()
    train = train.localCheckpoint()
    log.info("evaluate: tuning on the validation split, %s, %s users", window, f"{n_users:,}")
    chosen, rows = {}, []
    for name in names:
        space = ec.tuning.grids.get(name) or baselines.TUNABLE[name]
        best, best_score = None, float("-inf")
        for params in baselines.grid(space):
            t0 = time.perf_counter()
            recs = baselines.recommend(
                name, train, users, ec.k, window.cut - dt.timedelta(days=1), params=params
            )
            score = _score_lists(spark, recs, test, train, ec.k, ec.tuning.metric)
            log.info("evaluate: tuning %s %s: %s@%d %.4f (%.1fs)", name, params, ec.tuning.metric, ec.k, score,
                     time.perf_counter() - t0)  # fmt: skip
            rows.append({"baseline": name, "params": json.dumps(params, sort_keys=True), "score": score})
            if score > best_score:
                best, best_score = params, score
        chosen[name] = best
        log.info("evaluate: tuned %s: %s", name, best)
    table = pd.DataFrame(rows)
    table["chosen"] = [
        json.loads(p) == chosen[b] for b, p in zip(table["baseline"], table["params"], strict=True)
    ]
    return chosen, table[columns]


@dataclass
class CutResult:
    window: Window
    status: str
    users: int = 0
    test_purchases: int = 0
    train_events: int = 0
    catalog_items: int = 0
    per_user: DataFrame | None = None
    lists: DataFrame | None = None
    coverage: pd.DataFrame | None = None
    ops: dict | None = None
    tradeoff: pd.DataFrame | None = None


def evaluate_cut(
    spark: SparkSession,
    conf: Config,
    events: DataFrame,
    window: Window,
    params: dict[str, dict],
    tracker=None,
    parent_id: str | None = None,
    previous: dict[str, Config] | None = None,
) -> CutResult:
    """Run the as-of pipeline(s) and the baselines at one cut; per-user metrics at every K.

    ``previous``: the as-of configurations of the previous cut by method, whose caches seed
    this cut's warehouses; updated with this cut's.
    """
    ec = conf.evaluate
    ks = all_ks(ec)
    train, test = split(events, window.cut, window.end)
    users = evaluation_users(train, test, ec.max_users, ec.seed).localCheckpoint()
    n_users = users.count()
    if n_users == 0:
        status = f"empty: no buyer has events before {window.cut} and a purchase in {window.cut}..{window.last_day}"
        log.warning("evaluate: %s: %s", window, status)
        return CutResult(window, status)
    test = test.join(users, "user_id", "left_semi").localCheckpoint()
    n_test = test.count()
    log.info("evaluate: %s: %s users active on both sides, %s (user, item) purchases to find; K %s",
             window, f"{n_users:,}", f"{n_test:,}", ks)  # fmt: skip
    catalog_items = asof_items(spark, conf, window.cut).count()
    if max(ks) > catalog_items:
        raise ValueError(
            f"evaluate.ks: K={max(ks)} is larger than the catalog known before {window.cut} "
            f"({catalog_items:,} items): lower evaluate.ks"
        )
    result = CutResult(window, "ok", users=n_users, test_purchases=n_test, ops={})
    lists = []
    base_asof = asof_conf(conf, window.cut)
    for variant in [None, *ec.variants]:
        asof = asof_conf(conf, window.cut, variant)
        method = PIPELINE if variant is None else f"{PIPELINE}[{variant.name}]"
        seed_from = (previous or {}).get(method)
        counts = build_asof_warehouse(
            spark, conf, asof, window.cut, users if ec.max_users else None, seed_from
        )
        if previous is not None:
            previous[method] = asof
        if variant is None:
            result.train_events, result.catalog_items = counts["train_events"], counts["catalog_items"]
        log.info("evaluate: %s: as-of warehouse %s: %s training events, %s catalog items; running %d stages as of %s",
                 method, asof.storage.root, f"{counts['train_events']:,}", f"{counts['catalog_items']:,}",
                 len(asof_stages()), asof.run.date)  # fmt: skip
        run_asof_pipeline(spark, asof, tracker, parent_id)
        lists.append(pipeline_recs(spark, asof, method))
        if variant is not None:
            result.ops[method] = ops_figures(spark, asof, n_users)
    train_asof = tables.read(spark, base_asof, "bronze.events")
    categories = item_categories(spark, base_asof)
    base = baseline_recs(
        train_asof, categories, users, list(ec.baselines), max(ks), window.cut - dt.timedelta(days=1), params
    )
    if base is not None:
        lists.append(base)
    recs = _union(lists).localCheckpoint()
    history = train_asof.filter(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    purchases = (
        train_asof.filter((F.col("event_type") == "purchase") & F.col("item_id").isNotNull())
        .select("user_id", "item_id")
        .distinct()
    )
    vectors = tables.read(spark, base_asof, "silver.item_vectors").select("item_id", "vector")
    per_user = metrics.per_user(recs, test, history, categories, vectors, purchases, ks).localCheckpoint()
    catalog = max(categories.select("item_id").distinct().count(), 1)
    summary = metrics.summarize(per_user, recs, catalog, ks).toPandas()
    if ec.tradeoff:
        slots = tradeoff.repeat_slots(ec.k, ec.tradeoff_steps)
        curve_lists = tradeoff.pipeline_lists(spark, base_asof, users, ec.k, slots).unionByName(
            tradeoff.mix_lists(
                train_asof, users, ec.k, window.cut - dt.timedelta(days=1), slots, params.get("repeat")
            )
        )
        curve_users = metrics.per_user(curve_lists, test, history, categories, vectors, purchases, [ec.k])
        result.tradeoff = tradeoff.curve(curve_users, window.cut)
        log.info("evaluate: %s: trade-off\n%s", window, result.tradeoff.to_string(index=False))
    result.per_user = per_user.withColumn("cut_date", F.lit(window.cut))
    result.lists = recs.withColumn("cut_date", F.lit(window.cut))
    result.coverage = summary[["method", "k", "coverage"]].assign(cut=str(window.cut))
    return result


def item_categories(spark: SparkSession, asof: Config) -> DataFrame:
    return tables.read(spark, asof, "silver.item_profiles").select("item_id", "leaf_category")


def _extra_rows(results: list[CutResult], ks: list[int]) -> pd.DataFrame:
    """Point values without an interval: coverage per (cut, method, k) and the variants'
    operational figures, with their means over cuts."""
    rows = []
    for r in results:
        if r.coverage is not None:
            for row in r.coverage.itertuples():
                rows.append({"cut": row.cut, "method": row.method, "k": int(row.k), "metric": "coverage",
                             "value": float(row.coverage)})  # fmt: skip
        for method, figures in (r.ops or {}).items():
            for name, value in figures.items():
                for k in ks:
                    rows.append({"cut": str(r.window.cut), "method": method, "k": k, "metric": name,
                                 "value": float(value)})  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=list(bootstrap.SUMMARY_COLUMNS))
    points = pd.DataFrame(rows)
    means = (
        points.groupby(["method", "k", "metric"], as_index=False)["value"].mean().assign(cut=bootstrap.MEAN)
    )
    out = pd.concat([points, means], ignore_index=True)
    for column in bootstrap.SUMMARY_COLUMNS:
        if column not in out.columns:
            out[column] = None if column == "verdict" else float("nan")
    return out[list(bootstrap.SUMMARY_COLUMNS)]


def _in_method_order(summary: pd.DataFrame, ec: EvaluateConf) -> pd.DataFrame:
    """Rows by cut (dates, then the mean), K, method (the pipeline, its variants, then the
    baselines as configured) and metric: the order of every table and plot."""
    methods = [PIPELINE, *[f"{PIPELINE}[{v.name}]" for v in ec.variants], *ec.baselines]
    rank = {m: i for i, m in enumerate(methods)}
    keyed = summary.assign(
        _mean=summary["cut"] == bootstrap.MEAN,
        _method=summary["method"].map(lambda m: rank.get(m, len(rank))),
    )
    keyed = keyed.sort_values(["_mean", "cut", "k", "_method", "method", "metric"], kind="stable")
    return keyed.drop(columns=["_mean", "_method"]).reset_index(drop=True)


def _union(frames: list[DataFrame]) -> DataFrame:
    """The rows of every frame (same columns, matched by name)."""
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


def _metric_key(row) -> str:
    method = str(row.method).replace("[", "_").replace("]", "")
    return f"{row.cut}/{method}/{row.metric}_at_{row.k}"


def flat_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Every number of the summary as an MLflow metric: ``<cut>/<method>/<metric>_at_<k>``
    with ``.lo``, ``.hi``, ``.diff``, ``.diff_lo``, ``.diff_hi`` beside the value."""
    out = {}
    for row in summary.itertuples():
        key = _metric_key(row)
        for suffix, value in (("", row.value), (".lo", row.lo), (".hi", row.hi), (".diff", row.diff),
                              (".diff_lo", row.diff_lo), (".diff_hi", row.diff_hi)):  # fmt: skip
            if value is not None and pd.notna(value):
                out[key + suffix] = float(value)
    return out


def run(spark: SparkSession, conf: Config) -> dict[str, float]:
    """Evaluate the pipeline (and its variants) against the baselines; see the module docstring."""

    ec = conf.evaluate
    ks = all_ks(ec)
    events = tables.read(spark, conf, "bronze.events")
    first, last = data_days(events)
    windows = resolve_windows(ec, first, last)
    log.info(
        "evaluate: data %s..%s; %d cuts: %s", first, last, len(windows), "; ".join(str(w) for w in windows)
    )
    tracker = Tracker(conf)
    t_start = time.perf_counter()
    with tracked(tracker, conf, "evaluate") as ev_run:
        params, tuning = tune_baselines(spark, ec, events, windows[0].cut, first)
        previous: dict[str, Config] = {}
        results = [
            evaluate_cut(spark, conf, events, w, params, tracker, ev_run["run_id"], previous) for w in windows
        ]
        done = [r for r in results if r.per_user is not None]
        cut_rows = pd.DataFrame(
            [
                {
                    "cut_date": r.window.cut,
                    "test_end": r.window.end,
                    "status": r.status,
                    "users": r.users,
                    "test_purchases": r.test_purchases,
                    "train_events": r.train_events,
                    "catalog_items": r.catalog_items,
                }  # fmt: skip
                for r in results
            ]
        )
        tables.overwrite(spark.createDataFrame(cut_rows), conf, CUTS)
        if not done:
            raise ValueError(
                "evaluate: no cut has evaluation users (buyers with events before the cut and a "
                f"purchase in its test window): {'; '.join(r.status for r in results)}"
            )
        tables.overwrite(_union([r.per_user for r in done]), conf, USERS)
        tables.overwrite(_union([r.lists for r in done]), conf, LISTS)
        tables.overwrite(spark.createDataFrame(tuning, TUNING_SCHEMA), conf, TUNING)

        # The summary is computed from the stored per-user table, so the two agree exactly.
        per_user = (
            tables.read(spark, conf, USERS).withColumn("cut", F.col("cut_date").cast("string")).toPandas()
        )
        summary = bootstrap.summarize(
            per_user,
            list(metrics.PER_USER_METRICS),
            PIPELINE,
            n_resamples=ec.bootstrap_resamples,
            seed=ec.seed,
            level=ec.interval_level,
            higher_is_better=QUALITY_METRICS,
        )
        summary = _in_method_order(pd.concat([summary, _extra_rows(done, ks)], ignore_index=True), ec)
        stored = spark.createDataFrame(
            summary.astype({c: "float64" for c in ("value", "lo", "hi", "diff", "diff_lo", "diff_hi")})
        )
        tables.overwrite(
            stored.withColumn("evaluated_at", F.current_timestamp()).withColumn(
                "level", F.lit(ec.interval_level)
            ),
            conf,
            EVALUATION,
        )

        out_dir = Path(ec.report_dir) / "evaluation"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        plots = report.write_plots(summary, out_dir, k=ec.k)
        curves = [r.tradeoff for r in done if r.tradeoff is not None]
        if curves:
            curve_table = pd.concat(curves, ignore_index=True)
            tables.overwrite(spark.createDataFrame(curve_table), conf, TRADEOFF)
            curve_table.to_csv(out_dir / "tradeoff.csv", index=False)
            plots["tradeoff"] = tradeoff.plot(curve_table, ec.k, out_dir / "tradeoff.png")
        summary.to_csv(out_dir / "evaluation.csv", index=False)
        if not tuning.empty:
            tuning.to_csv(out_dir / "tuning.csv", index=False)
        cut_rows.to_csv(out_dir / "cuts.csv", index=False)
        context = {
            "cuts": "; ".join(
                f"{r.window} {r.users:,} users, {r.test_purchases:,} purchases ({r.status})" for r in results
            ),  # fmt: skip
            "validation (tuning)": (
                f"{windows[0].cut - dt.timedelta(days=ec.validation_days)}..{windows[0].cut - dt.timedelta(days=1)}"
                if not tuning.empty
                else "none (defaults)"
            ),
            "K": ", ".join(str(k) for k in ks),
            "intervals": f"{ec.interval_level:.0%} paired bootstrap over users, {ec.bootstrap_resamples:,} resamples",
            "tables": conf.storage.root,
            "MLflow run": ev_run["run_id"] or "(tracking off)",
        }
        html = report.write_html(
            summary, plots, out_dir / "report.html", "Discovery evaluation", context, k=ec.k,
            tuning=tuning if not tuning.empty else None,
        )  # fmt: skip
        seconds = time.perf_counter() - t_start
        text = report.format_report(summary, k=ec.k)
        log.info("evaluate: results (%s)\n%s", context["intervals"], text)
        for r in results:
            if r.per_user is None:
                log.info("evaluate: %s: %s", r.window, r.status)
        log.info("evaluate: report %s; %.1f min", html, seconds / 60)
        ev_run["metrics"] = flat_metrics(summary)
        ev_run["metrics"]["users"] = float(sum(r.users for r in results))
        ev_run["metrics"]["test_purchases"] = float(sum(r.test_purchases for r in results))
        ev_run["metrics"]["cuts"] = float(len(done))
        tracker.params(
            ev_run["run_id"],
            {
                f"tuned.{name}.{key}": str(value)
                for name, p in params.items()
                for key, value in (p or {}).items()
            },
        )
        tracker.artifacts(ev_run["run_id"], out_dir, "report")
    return ev_run["metrics"]
