"""The nearline stream: start it (state, warm-up, the Delta source pinned to its first
version), keep it warm and up to date in the background, and run it until stopped."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time

import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from jobs.nearline.handler import (
    BatchHandler,
    features_version,
    settings_from_conf,
    stored_candidates,
    warm_workers,
)
from jobs.nearline.outputs import commit_engine, create_tables
from jobs.nearline.state import drop_older_features, load, utc_naive
from jobs.nearline.triggers import ViewWindow
from udfs.nearline import INPUT_COLUMNS

log = logging.getLogger(__name__)


def checkpoint_location(conf: Config) -> str:
    if conf.nearline.checkpoint:
        return conf.nearline.checkpoint
    root = conf.storage.root if "://" in conf.storage.root else os.path.abspath(conf.storage.root)
    return f"{root}/checkpoints/nearline"


def starting_version(spark: SparkSession, conf: Config, checkpoint: str) -> str:
    """The Delta source's ``startingVersion``, the same on every start of this checkpoint.

    Delta reads the option again whenever the stream's first micro-batch is replayed (a
    crash before it committed), and "latest" would then mean a later version: the events
    of that first batch would be skipped. So the first start records the table's latest
    version N next to the checkpoint, and every later start reads from N + 1 once that
    version exists (before it does, nothing has arrived that could be missed).
    """
    if conf.nearline.starting_version != "latest":
        return conf.nearline.starting_version
    latest = int(tables.last_commit(spark, conf, "bronze.events")["version"])
    marker = f"{checkpoint}/nearline_start.json"
    saved = _read_marker(spark, marker)
    if saved is None:
        _write_marker(spark, marker, {"latest_version_at_first_start": latest})
        return "latest"
    first = int(saved["latest_version_at_first_start"])
    return str(first + 1) if latest > first else "latest"


def _read_marker(spark: SparkSession, path: str) -> dict | None:
    """The JSON record at ``path`` (next to the checkpoint, on any file system Spark
    reaches), or None when there is none yet."""
    if not _spark_path_exists(spark, path):  # a read of a missing path logs a Java stack trace
        return None
    try:
        rows = spark.read.json(path).collect()
    except AnalysisException:  # the path does not exist
        return None
    return rows[0].asDict() if rows else None


def _spark_path_exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` exists as Spark's file system layer sees it (Hadoop ``FileSystem``);
    True when that cannot be asked (no JVM at hand, as under Spark Connect): the read
    then tells."""
    try:
        jvm_path = spark._jvm.org.apache.hadoop.fs.Path(path)
        return bool(jvm_path.getFileSystem(spark._jsc.hadoopConfiguration()).exists(jvm_path))
    except Exception:  # noqa: BLE001 - any failure to ask leaves the decision to the read
        return True


def _write_marker(spark: SparkSession, path: str, record: dict) -> None:
    spark.createDataFrame([record]).coalesce(1).write.mode("errorifexists").json(path)


def seed_views(spark: SparkSession, conf: Config, window: ViewWindow) -> int:
    """Load the detail views of the last window into ``window`` (the trigger state)."""
    nc = conf.nearline
    events = tables.read(spark, conf, "bronze.events")
    latest = events.filter(F.col("event_type").isin(*nc.view_types)).agg(F.max("ts")).collect()[0][0]
    if latest is None:
        return 0
    since = latest - dt.timedelta(seconds=nc.view_window_s)
    rows = (
        events.filter(
            F.col("event_type").isin(*nc.view_types)
            & (F.col("ts") > F.lit(since))
            & (F.col("dt") >= F.lit(since.date()))
        )
        .select("user_id", "event_id", "ts")
        .collect()
    )
    for r in rows:
        window.add(r["user_id"], r["event_id"], utc_naive(r["ts"]))
    return len(rows)


def start(spark: SparkSession, conf: Config, on_batch=None) -> tuple[object, BatchHandler]:
    """Write the per-user features, load the rest and start the streaming query; returns
    (StreamingQuery, handler)."""
    for needed in (
        "bronze.events",
        "gold.portraits",
        "gold.cfv",
        "silver.item_vectors",
        "gold.index_manifest",
    ):
        if not tables.exists(spark, conf, needed):
            raise RuntimeError(
                f"nearline: {needed} is missing: run the batch pipeline first (discovery pipeline)"
            )
    nc = conf.nearline
    for key, value in nc.spark_conf.items():
        spark.conf.set(key, value)
    version = features_version(spark, conf)  # before the load: a run during it is seen later
    settings = settings_from_conf(spark, conf)
    features, items = load(spark, conf)
    drop_older_features(spark, conf, features.run_date)
    window = ViewWindow(nc.views, nc.view_window_s)
    n_views = seed_views(spark, conf, window)
    tasks = nc.tasks or spark.sparkContext.defaultParallelism
    seconds = warm_workers(spark, conf, settings)
    log.info(
        f"nearline: model and {len(settings.shard_paths)} shard(s) loaded in {tasks} worker(s), {seconds:.1f}s",
    )
    checkpoint = checkpoint_location(conf)
    handler = BatchHandler(
        spark=spark,
        conf=conf,
        features=features,
        settings=settings,
        items_broadcast=spark.sparkContext.broadcast(items),
        window=window,
        app_id="nearline:" + checkpoint,
        on_batch=on_batch,
        engine=commit_engine(conf),
        features_version=version,
    )
    create_tables(spark, conf)
    # What loads on first use should not be paid by the first triggered users: one refresh
    # of real users through the whole path (the LLM client, Arrow, the broadcast, a real
    # encode and search; nothing is written) and one MERGE that writes nothing.
    t0 = time.perf_counter()
    sample = features.sample_users(spark, tasks)
    if sample:
        state, run_date = features.users(spark, sample), features.run_date
        stored = stored_candidates(spark, conf, run_date, sample)
        rows = [{**state.inputs(u, run_date), "candidates_json": stored.get(u, "[]")} for u in sample]
        handler._refresh(pd.DataFrame(rows)[list(INPUT_COLUMNS)])
    handler.warm_up_merge()
    log.info(
        f"nearline: warm-up refresh and MERGE {time.perf_counter() - t0:.1f}s; commits by {handler.engine}",
    )
    resuming = os.path.exists(os.path.join(checkpoint, "commits"))
    starting = starting_version(spark, conf, checkpoint)
    reader = spark.readStream.format("delta").option("startingVersion", starting)
    source = (
        reader.load(tables.location(conf, "bronze.events"))
        if not conf.storage.catalog
        else reader.table(tables.location(conf, "bronze.events"))
    )
    writer = (
        source.writeStream.foreachBatch(handler)
        .option("checkpointLocation", checkpoint)
        .queryName("nearline")
    )
    if nc.trigger_interval_s > 0:
        writer = writer.trigger(processingTime=f"{nc.trigger_interval_s} seconds")
    query = writer.start()
    if nc.keep_warm_s or nc.reload_check_s:
        threading.Thread(
            target=_background_loop, args=(query, handler), name="nearline-background", daemon=True
        ).start()
    log.info(
        f"nearline: ready; reading {tables.location(conf, 'bronze.events')} from "
        f"{'the checkpoint' if resuming else 'version ' + starting}"
        f" ({n_views:,} recent detail views loaded); checkpoint {checkpoint}",
    )
    return query, handler


def _background_loop(query, handler: BatchHandler) -> None:
    """While the query runs: keep the Python workers warm; reload newer batch features."""
    every = handler.conf.nearline.reload_check_s
    next_check = time.monotonic() + every
    while query.isActive:
        try:
            handler.keep_warm()
            if every and time.monotonic() >= next_check:
                handler.reload_if_newer()
                next_check = time.monotonic() + every
        except Exception as e:  # noqa: BLE001 - the stream goes on with what it has
            log.info(f"nearline: background job failed: {type(e).__name__}: {e}")
        time.sleep(1.0)


def run(
    spark: SparkSession, conf: Config, stop_after_idle: float | None = None, max_seconds: float | None = None
) -> dict:
    """Run the stream until stopped (Ctrl-C), idle for ``stop_after_idle`` seconds, or ``max_seconds``."""
    query, handler = start(spark, conf)
    began = handler.last_batch_at = time.monotonic()
    try:
        while query.isActive:
            query.awaitTermination(1.0)
            now = time.monotonic()
            # Idle means no batch for a while and none under way: on a loaded machine the
            # batch replayed after a restart can take longer than the idle limit to plan and read.
            if handler.batch_lock.locked() or query.status.get("isTriggerActive"):
                handler.last_batch_at = now
            if stop_after_idle is not None and now - handler.last_batch_at > stop_after_idle:
                log.info(f"nearline: no new events for {stop_after_idle:.0f}s, stopping")
                break
            if max_seconds is not None and now - began > max_seconds:
                break
    except KeyboardInterrupt:
        log.info("nearline: interrupted, stopping")
    finally:
        if query.isActive:
            query.stop()
    if query.exception() is not None:
        raise RuntimeError(f"nearline: the stream failed: {query.exception()}")
    return {"batches": handler.batches, "triggers": handler.triggers}
