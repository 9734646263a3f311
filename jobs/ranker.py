"""Train: the learned ranker, ``xgboost.spark.SparkXGBRanker`` on the candidates of an
earlier day labelled with what their buyers bought next -> a model in
``<ranker.model_dir>`` (and MLflow), listed in ``gold.ranker_models``.

1. **Training day** ``T0``: the newest run date in ``gold.candidate_features`` at least
   ``ranker.label_days`` before the run date. When the warehouse holds none (a first
   run), the stages up to ``candidates`` run as of ``T0 = run date - label_days`` in a
   warehouse of their own (``jobs/asof.py``) and their candidates join the history. They
   need only the events, so ``discovery pipeline`` starts them in the background right
   after ingest, beside the day's own stages (:func:`early_work`, ``run.early_work``).
2. **Labels**: a candidate is positive when its buyer purchased it in ``(T0, T0 +
   label_days]``, all on or before the run date: nothing after the run date is read, so
   in an as-of warehouse of the evaluation no test-period purchase reaches training.
3. **Fit**: one query group per buyer with at least one positive (``rank:ndcg`` by
   default); a seeded ``ranker.holdout_share`` of the buyers is held out for early
   stopping and for step 4.
4. **Quotas**: on the held-out buyers (all with a purchase in the label window, recall
   counted over all their purchases, not only those among the candidates), every pair of
   ``ranker.repeat_shares`` x ``ranker.discovery_shares`` fills lists of
   ``ranker.choose_at_k`` with the model's scores (``udfs/ranking.py``); chosen: the pair
   with the highest ``recall + discovery_weight x new-category hit`` (ties: more recall,
   then the smaller shares). ``rank`` uses the chosen shares unless ``rank.repeat_share`` /
   ``rank.discovery_share`` are set.
5. **Order**: with fewer than ``ranker.min_holdout_buyers`` held-out buyers nothing can
   tell whether the model orders better than the candidate channels do without training
   (early stopping, the quotas and a comparison all need them): the lists then follow the
   channel order (``udfs/ranking.py: channel_order``: the buyer's own items by the repeat
   channel's score first) and no quotas; the model is still written, logged and used to
   explain. Recorded as ``order`` in ``meta.json``.

The stage does nothing while the newest model is younger than ``ranker.max_age_days``
(``databricks.yml`` runs it weekly; ``discovery pipeline`` runs it when no model exists).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.config import Config, RankerConf, derive
from core.rundate import resolve_run_date
from jobs.asof import build_asof_warehouse, run_asof_pipeline
from jobs.candidates import FEATURES, write_features
from jobs.tracking import Tracker, tracked
from udfs.features import FEATURE_COLUMNS
from udfs.ranking import ListRules, Ranker, fill, score

log = logging.getLogger(__name__)

MODELS = "gold.ranker_models"
MODELS_SCHEMA = (
    "model_id string, path string, trained_at timestamp, run_date date, train_as_of date, "
    "label_end date, features array<string>, repeat_share double, discovery_share double, "
    "holdout_recall double, holdout_new_category_hit double, holdout_users long, "
    "best_iteration long, rows long, users long, positives long, mlflow_run_id string"
)
QUOTA_SCHEMA = (
    "user_id string, repeat_share double, discovery_share double, recall double, new_category_hit double"
)


class RankerError(RuntimeError):
    """No usable model: missing, unreadable, or trained on other features."""


def model_dir(conf: Config) -> Path:
    return Path(conf.ranker.model_dir or Path(conf.storage.root) / "models" / "ranker").resolve()


def latest_model(spark: SparkSession, conf: Config, run_date: dt.date) -> dict | None:
    """The newest model trained for a run date on or before ``run_date`` (a row of MODELS)."""
    if not tables.exists(spark, conf, MODELS):
        return None
    rows = (
        tables.read(spark, conf, MODELS)
        .filter(F.col("run_date") <= F.lit(run_date))
        .orderBy(F.desc("run_date"), F.desc("trained_at"))
        .limit(1)
        .collect()
    )
    return rows[0].asDict() if rows else None


def load_model(spark: SparkSession, conf: Config, run_date: dt.date) -> tuple[Ranker, dict]:
    """(the ranker, its MODELS row) for ``rank``; RankerError naming what is wrong."""
    row = latest_model(spark, conf, run_date)
    if row is None:
        raise RankerError(
            f"rank: no ranker model for run date {run_date} in {MODELS}: train one with "
            "`discovery train` (the weekly training task)"
        )
    path = Path(row["path"]) / "model.json"
    if not path.exists():
        raise RankerError(f"rank: the ranker model file {path} (model {row['model_id']}) is missing")
    if list(row["features"]) != list(FEATURE_COLUMNS):
        extra = sorted(set(row["features"]) - set(FEATURE_COLUMNS))
        lacking = sorted(set(FEATURE_COLUMNS) - set(row["features"]))
        raise RankerError(
            f"rank: the ranker model {path} was trained on other features than the candidates "
            f"have (unknown to this version: {extra or 'none'}; not in the model: {lacking or 'none'}): "
            "train it again with `discovery train`"
        )
    explore = Path(row["path"]) / "explore.json"
    meta = Path(row["path"]) / "meta.json"
    try:
        order = json.loads(meta.read_text()).get("order", "model") if meta.exists() else "model"
    except (ValueError, AttributeError) as e:
        raise RankerError(f"rank: the ranker's {meta} is not a JSON object ({e}): train it again") from e
    ranker = Ranker(
        path.read_bytes(), explore.read_bytes() if explore.exists() else None, tuple(FEATURE_COLUMNS), order
    )
    return ranker, row


def list_order(conf: Config, held_buyers: int) -> str:
    """``"model"`` when the held-out buyers are enough to validate the model (early stopping,
    quotas), else ``"channels"``: an order learned from so few buyers is not trusted over the
    channels' own."""
    return "model" if held_buyers >= conf.ranker.min_holdout_buyers else "channels"


def label_days(spark: SparkSession, conf: Config, run_date: dt.date) -> int:
    """``ranker.label_days``, or half the history when the events cover less than twice that
    (a young warehouse still gets a model, from a shorter label window)."""
    first = tables.read(spark, conf, "bronze.events").agg(F.min("dt")).collect()[0][0]
    history = (run_date - first).days if first is not None else 0
    days = conf.ranker.label_days
    if history < 2 * days:
        short = max(1, history // 2)
        log.warning("train: the events cover %d days, less than twice ranker.label_days (%d): labels from "
                    "the next %d days", history, days, short)  # fmt: skip
        return short
    return days


def training_day(spark: SparkSession, conf: Config, run_date: dt.date, days: int) -> dt.date | None:
    """The newest run date of the candidate history at least ``days`` before ``run_date``."""
    if not tables.exists(spark, conf, FEATURES):
        return None
    latest = run_date - dt.timedelta(days=days)
    return (
        tables.read(spark, conf, FEATURES)
        .filter(F.col("as_of") <= F.lit(latest))
        .agg(F.max("as_of"))
        .collect()[0][0]
    )


# As-of warehouses built in this process: root -> the version of bronze.events they were
# built from (the early work of a first run builds one beside the stages before train).
_built: dict[Path, int | None] = {}


def _bootstrap_conf(conf: Config, day: dt.date) -> Config:
    root = Path(conf.storage.root).resolve() / "training" / f"asof_{day:%Y%m%d}"
    return derive(
        conf,
        [f"storage.root={root}", "storage.catalog=null", f"run.date={day}",
         f"run.run_id=train-{day:%Y%m%d}", "tracking.enabled=false"],
    )  # fmt: skip


def build_training_day(spark: SparkSession, conf: Config, day: dt.date) -> None:
    """Run the stages up to ``candidates`` as of ``day`` in a warehouse of their own
    (``<storage.root>/training/asof_<day>``)."""
    asof = _bootstrap_conf(conf, day)
    events_version = tables.version(spark, conf, "bronze.events")
    log.info("train: no stored candidates old enough to learn from: building those of %s in %s",
             day, asof.storage.root)  # fmt: skip
    build_asof_warehouse(spark, conf, asof, day + dt.timedelta(days=1), None, caches_from=conf)
    run_asof_pipeline(spark, asof, last="candidates", label="training as of")
    _built[Path(asof.storage.root)] = events_version


def bootstrap_history(spark: SparkSession, conf: Config, day: dt.date) -> None:
    """Add the candidate features of ``day`` to this warehouse's history, from an as-of
    warehouse: the one this process built from the current events (the early work), or
    one built now."""
    asof = _bootstrap_conf(conf, day)
    root = Path(asof.storage.root)
    if root not in _built or _built[root] != tables.version(spark, conf, "bronze.events"):
        build_training_day(spark, conf, day)
    feats = tables.read(spark, asof, FEATURES).filter(F.col("as_of") == F.lit(day))
    write_features(spark, conf, feats, day, prune=False)


def labelled(
    spark: SparkSession, conf: Config, day: dt.date, run_date: dt.date, days: int
) -> tuple[DataFrame, DataFrame]:
    """(the candidates of ``day`` with ``label``: bought in the ``days`` after it, on or before
    ``run_date``; the purchases of that window per buyer: user_id, bought = distinct items)."""
    end = min(day + dt.timedelta(days=days), run_date)
    purchases = (
        tables.read(spark, conf, "bronze.events")
        .filter(
            (F.col("event_type") == "purchase")
            & F.col("item_id").isNotNull()
            & (F.col("dt") > F.lit(day))
            & (F.col("dt") <= F.lit(end))
        )  # fmt: skip
        .select("user_id", "item_id")
        .distinct()
    )
    feats = tables.read(spark, conf, FEATURES).filter(F.col("as_of") == F.lit(day))
    rows = feats.join(purchases.withColumn("label", F.lit(1)), ["user_id", "item_id"], "left").fillna(
        0, ["label"]
    )
    bought = purchases.groupBy("user_id").agg(F.count("*").alias("bought"))
    return rows, bought


def _holdout(conf: Config):
    share = int(round(conf.ranker.holdout_share * 1000))
    return (F.abs(F.xxhash64("user_id", F.lit(conf.ranker.seed))) % 1000) < share


def fit(spark: SparkSession, conf: Config, rows: DataFrame, head: str = "model") -> bytes:
    """A SparkXGBRanker fitted on the buyers' groups with a positive; the Booster's bytes
    (``head``: which model, for the log)."""
    from xgboost.spark import SparkXGBRanker

    rc = conf.ranker
    workers = rc.num_workers or max(1, min(spark.sparkContext.defaultParallelism, 4))
    with_pos = rows.groupBy("user_id").agg(F.max("label").alias("_any")).filter("_any > 0").select("user_id")
    # xgboost wants integer group ids in non-decreasing order within each partition.
    qids = with_pos.withColumn("qid", F.row_number().over(Window.orderBy("user_id")).cast("int"))
    labelled_groups = rows.join(qids, "user_id").withColumn("is_holdout", _holdout(conf))
    # xgboost.spark needs training and held-out rows in every task's partition (it fails on
    # a partition with one kind only, which small data can give): fewer tasks then, and no
    # early stopping at all with fewer than ranker.min_holdout_buyers held-out buyers.
    held_buyers = held_out_buyers(conf, rows)
    has_holdout = held_buyers >= rc.min_holdout_buyers
    if not has_holdout:
        log.warning("train: %s: %d held-out buyers with a purchase (ranker.min_holdout_buyers %d): no early "
                    "stopping, all %d trees kept", head, held_buyers, rc.min_holdout_buyers, rc.n_estimators)  # fmt: skip
        labelled_groups = labelled_groups.withColumn("is_holdout", F.lit(False))
    if has_holdout:
        mix = (
            labelled_groups.groupBy(F.pmod(F.hash("qid"), F.lit(workers)).alias("_p"))
            .agg(F.max(F.col("is_holdout").cast("int")).alias("_h"), F.min(F.col("is_holdout").cast("int")).alias("_t"))
            .collect()
        )  # fmt: skip
        if len(mix) < workers or not all(r["_h"] == 1 and r["_t"] == 0 for r in mix):
            workers = 1
    # Rows in a fixed order (qid, item): the same data gives the same model on any cluster.
    train = (
        labelled_groups.repartition(workers, "qid")
        .sortWithinPartitions("qid", "item_id")
        .select("qid", "label", "is_holdout", *FEATURE_COLUMNS)
    )
    validation = (
        {"validation_indicator_col": "is_holdout", "early_stopping_rounds": rc.early_stopping_rounds}
        if has_holdout
        else {}
    )
    ranker = SparkXGBRanker(
        features_col=list(FEATURE_COLUMNS),
        label_col="label",
        qid_col="qid",
        objective=rc.objective,
        n_estimators=rc.n_estimators,
        max_depth=rc.max_depth,
        learning_rate=rc.learning_rate,
        eval_metric=f"ndcg@{rc.choose_at_k}",
        num_workers=workers,
        random_state=rc.seed,
        **validation,
    )
    # xgboost.spark (3.x, feature columns as a list) fails on an Arrow batch without held-out
    # rows or without training rows (KeyError 'values'): one batch per partition, and every
    # partition holds both kinds (checked above).
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "0")  # no limit
    try:
        return bytes(ranker.fit(train).get_booster().save_raw("json"))
    finally:
        spark.conf.set(key, before)


def buyer_group(buckets: int):
    """``_bucket``: one of ``buckets`` groups of whole buyers (a hash of ``user_id``); the
    lists are filled a group per Python call (a call per buyer costs more than its work)."""
    return F.pmod(F.xxhash64("user_id"), F.lit(buckets)).alias("_bucket")


def held_out_buyers(conf: Config, rows: DataFrame) -> int:
    """Held-out buyers with a purchase among their candidates (the ones a fit can stop on)."""
    return rows.filter(_holdout(conf) & (F.col("label") > 0)).select("user_id").distinct().count()


def choose_quotas(
    conf: Config, rows: DataFrame, bought: DataFrame, ranker: Ranker, held_buyers: int
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """The held-out buyers' mean recall and new-category hit per quota pair, and the chosen
    pair; no quotas (with a warning) below ``ranker.min_holdout_buyers`` held-out buyers."""
    rc = conf.ranker
    if held_buyers < rc.min_holdout_buyers:
        return _no_quotas(rc, held_buyers)
    features = list(FEATURE_COLUMNS)
    grid = [(r, d) for r in rc.repeat_shares for d in rc.discovery_shares]
    k, cap = rc.choose_at_k, conf.rank.max_per_category
    held = rows.filter(_holdout(conf)).join(bought, "user_id")

    def per_bucket(pdf: pd.DataFrame) -> pd.DataFrame:
        """Every grid pair's recall and new-category hit for each buyer of one group."""
        pdf = pdf.drop(columns="_bucket").reset_index(drop=True)
        s = score(pdf, ranker.model, features)
        e = None if ranker.explore is None else score(pdf, ranker.explore, features)
        n_bought = pdf.groupby("user_id")["bought"].first().astype("float64")
        out = []
        for r, d in grid:
            listed = fill(pdf, s, ListRules(k, r, d, cap), e)
            hits = listed["label"] > 0
            per_buyer = (
                pd.DataFrame({"user_id": listed["user_id"], "hits": hits,
                              "new_hit": hits & (listed["is_new_category"] > 0)})
                .groupby("user_id").agg(hits=("hits", "sum"), new_hit=("new_hit", "any"))
                .reindex(n_bought.index, fill_value=0)  # a buyer whose list is empty: no hit
            )  # fmt: skip
            out.append(pd.DataFrame({
                "user_id": n_bought.index, "repeat_share": r, "discovery_share": d,
                "recall": per_buyer["hits"].to_numpy(dtype="float64") / n_bought.to_numpy(),
                "new_category_hit": per_buyer["new_hit"].to_numpy(dtype="float64"),
            }))  # fmt: skip
        return pd.concat(out, ignore_index=True)

    cols = ["user_id", "item_id", "label", "bought", "norm_title", "leaf_category", *features]
    means = (
        held.select(*cols, buyer_group(conf.rank.buckets))
        .groupBy("_bucket")
        .applyInPandas(per_bucket, QUOTA_SCHEMA)
        .groupBy("repeat_share", "discovery_share")
        .agg(
            F.mean("recall").alias("recall"),
            F.mean("new_category_hit").alias("new_category_hit"),
            F.count("*").alias("users"),
        )  # fmt: skip
        .toPandas()
        .sort_values(["repeat_share", "discovery_share"])
        .reset_index(drop=True)
    )
    if means.empty:
        return _no_quotas(rc, held_buyers)
    means["objective"] = means["recall"] + rc.discovery_weight * means["new_category_hit"]
    best = means.sort_values(
        ["objective", "recall", "repeat_share", "discovery_share"], ascending=[False, False, True, True]
    ).iloc[0]
    means["chosen"] = (means["repeat_share"] == best["repeat_share"]) & (
        means["discovery_share"] == best["discovery_share"]
    )
    return means, (float(best["repeat_share"]), float(best["discovery_share"]))


def _no_quotas(rc: RankerConf, held_buyers: int) -> tuple[pd.DataFrame, tuple[float, float]]:
    """No list constraint rather than a guess: the grid row of the widest quotas, chosen."""
    pair = (max(rc.repeat_shares), min(rc.discovery_shares))
    log.warning("train: %d held-out buyers with a purchase among their candidates (ranker.min_holdout_buyers "
                "%d): no quotas (repeat share %.2f, discovery share %.2f)", held_buyers, rc.min_holdout_buyers,
                *pair)  # fmt: skip
    row = {"repeat_share": pair[0], "discovery_share": pair[1], "recall": float("nan"),
           "new_category_hit": float("nan"), "users": 0, "objective": float("nan"), "chosen": True}  # fmt: skip
    return pd.DataFrame([row]), pair


def young_model(spark: SparkSession, conf: Config, run_date: dt.date) -> dict | None:
    """The newest model when it is younger than ``ranker.max_age_days`` (then no training)."""
    current = latest_model(spark, conf, run_date)
    if current is not None and (run_date - current["run_date"]).days < conf.ranker.max_age_days:
        return current
    return None


def early_work(spark: SparkSession, conf: Config) -> Callable[[], None] | None:
    """The stage's work that can start as soon as the events are in, beside the stages
    before it (``jobs.stages.run_stages`` runs it in the background): on a first run, the
    as-of stages that build the candidates to train on. None when training will not need
    them (a young model, or stored candidates old enough)."""
    run_date = resolve_run_date(spark, conf)
    if young_model(spark, conf, run_date) is not None:
        return None
    _, day, stored = training_window(spark, conf, run_date)
    return None if stored else (lambda: build_training_day(spark, conf, day))


def training_window(spark: SparkSession, conf: Config, run_date: dt.date) -> tuple[int, dt.date, bool]:
    """(label days, the training day, whether the history already holds its candidates):
    the newest stored day old enough, else ``run date - label days`` (to be built)."""
    days = label_days(spark, conf, run_date)
    day = training_day(spark, conf, run_date, days)
    if day is not None:
        return days, day, True
    return days, run_date - dt.timedelta(days=days), False


def run(spark: SparkSession, conf: Config) -> dict[str, float]:
    """Train a model unless a young enough one exists; returns its figures."""

    rc = conf.ranker
    run_date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    current = young_model(spark, conf, run_date)
    if current is not None:
        log.info("train: model %s (run date %s) is younger than %d days: kept",
                 current["model_id"], current["run_date"], rc.max_age_days)  # fmt: skip
        return {"trained": 0}
    t0 = time.perf_counter()
    days, day, stored = training_window(spark, conf, run_date)
    if not stored:
        bootstrap_history(spark, conf, day)
    rows, bought = labelled(spark, conf, day, run_date, days)
    # On local disk, not in the JVM's memory: held in storage memory, the training rows (1 GB
    # at 10,000 buyers) left the two xgboost fits too little execution memory in a 2 GB
    # driver (SparkOutOfMemoryError in the explore head's fit).
    rows = rows.localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)
    stats = rows.agg(F.count("*"), F.countDistinct("user_id"), F.sum("label")).collect()[0]
    n_rows, n_users, n_pos = int(stats[0]), int(stats[1]), int(stats[2] or 0)
    if n_pos == 0:
        raise RankerError(
            f"train: none of the {n_rows:,} candidates of {day} was bought in the {days} days after: "
            "nothing to learn from (more history, or a shorter ranker.label_days)"
        )
    log.info("train: candidates of %s: %s rows, %s buyers, %s bought in the next %d days; fitting SparkXGBRanker",
             day, f"{n_rows:,}", f"{n_users:,}", f"{n_pos:,}", days)  # fmt: skip
    model = fit(spark, conf, rows)
    # The explore head: the same features, trained on new-category candidates only.
    explore_rows = rows.filter(F.col("is_new_category") > 0)
    n_explore = explore_rows.filter(F.col("label") > 0).count()
    explore = (
        fit(spark, conf, explore_rows, "explore head") if n_explore >= rc.min_explore_positives else None
    )
    log.info("train: explore head %s (%s new-category purchases among the candidates)",
             "trained" if explore else "skipped", f"{n_explore:,}")  # fmt: skip
    ranker = Ranker(model, explore, tuple(FEATURE_COLUMNS))
    held_buyers = held_out_buyers(conf, rows)
    grid, (repeat_share, discovery_share) = choose_quotas(conf, rows, bought, ranker, held_buyers)
    order = list_order(conf, held_buyers)
    chosen = grid[grid["chosen"]].iloc[0]
    trained_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    model_id = f"{run_date:%Y%m%d}-{trained_at:%H%M%S%f}"
    folder = model_dir(conf) / model_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_bytes(model)
    if explore is not None:
        (folder / "explore.json").write_bytes(explore)
    best_iteration = _best_iteration(model)
    meta = {
        "model_id": model_id, "features": list(FEATURE_COLUMNS), "train_as_of": str(day),
        "label_days": days, "run_date": str(run_date), "objective": rc.objective,
        "order": order, "repeat_share": repeat_share, "discovery_share": discovery_share,
        "best_iteration": best_iteration,
        "explore_head": explore is not None, "explore_positives": n_explore,
        "rows": n_rows, "users": n_users, "positives": n_pos,
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    grid.to_csv(folder / "quotas.csv", index=False)
    tracker = Tracker(conf)
    with tracked(tracker, conf, "ranker_model") as mrun:
        tracker.params(mrun["run_id"], {f"model.{k}": str(v) for k, v in meta.items() if k != "features"})
        mrun["metrics"] = {
            "holdout_recall": float(chosen["recall"]),
            "holdout_new_category_hit": float(chosen["new_category_hit"]),
        }
        tracker.artifacts(mrun["run_id"], folder, "model")
    row = {
        "model_id": model_id, "path": str(folder), "trained_at": trained_at, "run_date": run_date,
        "train_as_of": day, "label_end": min(day + dt.timedelta(days=days), run_date),
        "features": list(FEATURE_COLUMNS), "repeat_share": repeat_share, "discovery_share": discovery_share,
        "holdout_recall": float(chosen["recall"]), "holdout_new_category_hit": float(chosen["new_category_hit"]),
        "holdout_users": int(chosen["users"]), "best_iteration": best_iteration, "rows": n_rows,
        "users": n_users, "positives": n_pos, "mlflow_run_id": mrun["run_id"],
    }  # fmt: skip
    frame = spark.createDataFrame([row], MODELS_SCHEMA)
    if tables.exists(spark, conf, MODELS):
        tables.append(frame, conf, MODELS)
    else:
        tables.overwrite(frame, conf, MODELS)
    log.info(
        "train: model %s from the candidates of %s (%s buyers, %s positives), %d trees, lists in %s order; "
        "quotas from %d held-out buyers: repeat share %.2f, discovery share %.2f (recall@%d %.3f, new-category "
        "hit %.3f); %.0fs",
        model_id, day, f"{n_users:,}", f"{n_pos:,}", best_iteration + 1, order, int(chosen["users"]), repeat_share,
        discovery_share, rc.choose_at_k, chosen["recall"], chosen["new_category_hit"], time.perf_counter() - t0,
    )  # fmt: skip
    return {"trained": 1, "rows": n_rows, "positives": n_pos, **meta_metrics(chosen)}


def _best_iteration(model: bytes) -> int:
    import xgboost

    b = xgboost.Booster()
    b.load_model(bytearray(model))
    return int(b.attr("best_iteration") or b.num_boosted_rounds() - 1)


def meta_metrics(chosen) -> dict[str, float]:
    return {
        "holdout_recall": float(chosen["recall"]),
        "holdout_new_category_hit": float(chosen["new_category_hit"]),
        "repeat_share": float(chosen["repeat_share"]),
        "discovery_share": float(chosen["discovery_share"]),
    }
