"""One micro-batch of the nearline stream (``foreachBatch``): find the triggered users,
look up their state (``jobs.nearline.state``), refresh their lists in the executors
(``udfs.nearline``) and commit them (``jobs.nearline.outputs``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from jobs.agents import call_settings
from jobs.candidates import FEATURES
from jobs.nearline.outputs import commit_lists, log_batch
from jobs.nearline.state import EVENT_FIELDS, Features, drop_older_features, load, lookup, utc_naive
from jobs.nearline.triggers import ViewWindow, find_triggers
from jobs.rank import list_rules
from jobs.ranker import load_model
from prompts import load_prompt
from udfs.agents import u2q
from udfs.embedding import spec_from_conf
from udfs.features import FEATURE_COLUMNS
from udfs.nearline import (
    INPUT_COLUMNS,
    OUTPUT_COLUMNS,
    RefreshSettings,
    refresh_users,
    warm_up,
    with_timeouts,
)

log = logging.getLogger(__name__)


def stored_candidates(
    spark: SparkSession, conf: Config, run_date: dt.date, users: list[str]
) -> dict[str, str]:
    """user_id -> the batch run's candidates of the buyer (``gold.candidate_features`` rows of
    ``run_date``) as JSON records; read per micro-batch for the triggered buyers only (the
    table is range-partitioned by user, so the read skips the other files). With the
    delta-rs engine (``commit_engine``) the driver reads the files itself."""

    cols = [
        "user_id",
        "item_id",
        "title",
        "leaf_category",
        "reasons",
        "query_kind",
        "query",
        *FEATURE_COLUMNS,
    ]
    rows = lookup(spark, conf, FEATURES, cols, users, equal=("as_of", run_date))
    rows["reasons"] = [dict(m) if m is not None else {} for m in rows["reasons"]]
    return {
        uid: json.dumps(g.drop(columns="user_id").to_dict("records")) for uid, g in rows.groupby("user_id")
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class BatchHandler:
    """The ``foreachBatch`` function and what it keeps between micro-batches."""

    spark: SparkSession
    conf: Config
    features: Features
    settings: RefreshSettings
    items_broadcast: object
    window: ViewWindow
    app_id: str
    on_batch: object = None  # optional callback(dict) after each batch, for progress
    batches: int = 0
    triggers: int = 0
    engine: str = "spark"  # how the two tables are committed: "delta-rs" or "spark"
    # The version of gold.recommendations whose batch run the features come from.
    features_version: int | None = None
    batch_lock: threading.Lock = field(default_factory=threading.Lock)
    reloads: int = 0
    last_batch_at: float = field(default_factory=time.monotonic)
    # When the Python workers last ran a refresh (or a keep-warm job), and a lock so
    # that the keep-warm job never runs beside a refresh.
    last_worker_use: float = field(default_factory=time.monotonic)
    worker_lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with self.batch_lock:
            self._handle(batch, batch_id)

    def _handle(self, batch: DataFrame, batch_id: int) -> None:
        started_at, t0 = _now(), time.perf_counter()
        events = batch.select(*EVENT_FIELDS).toPandas()
        read_s = time.perf_counter() - t0
        self.last_batch_at = time.monotonic()
        if events.empty:
            return
        events["ts"] = [utc_naive(t) for t in events["ts"]]
        nc = self.conf.nearline
        triggers = find_triggers(events, self.window, nc.trigger_types, nc.view_types)
        t1 = time.perf_counter()
        written, failed, fallbacks, version, committed_at = 0, 0, 0, None, None
        if triggers:
            users = [t.user_id for t in triggers]
            state = self.features.users(self.spark, users, events[events["user_id"].isin(users)])
            stored = stored_candidates(self.spark, self.conf, self.features.run_date, users)
            rows = pd.DataFrame(
                [
                    {
                        **state.inputs(t.user_id, t.ts.date()),
                        "candidates_json": stored.get(t.user_id, "[]"),
                    }
                    for t in triggers
                ]  # fmt: skip
            )[list(INPUT_COLUMNS)]
            lookup_s = time.perf_counter() - t1
            out = self._refresh(rows)
            refresh_s = time.perf_counter() - t1
            # Where the refresh went: the driver's lookups, and of the Spark job the slowest
            # buyer's refresh in a worker (its LLM call included) against the whole job.
            detail = (
                f" = lookups {lookup_s:.2f}s + Spark job {refresh_s - lookup_s:.2f}s (slowest buyer in a "
                f"worker {out['refresh_ms'].max() / 1000:.2f}s, LLM {out['llm_latency_ms'].max() / 1000:.2f}s)"
                if len(out)
                else ""
            )
            by_user = {t.user_id: t for t in triggers}
            records = []
            for r in out.to_dict("records"):
                if r["items_json"] is None:  # the refresh failed: the user keeps the last list
                    log.info(f"nearline: batch {batch_id}: user {r['user_id']}: {r['u2q_error']}")
                    failed += 1
                    continue
                t = by_user[r["user_id"]]
                fallbacks += r["u2q_status"] == "failed"
                items = json.loads(r["items_json"])
                records.append(
                    (
                        r["user_id"],
                        items,
                        t.event_id,
                        t.event_type,
                        t.ts,
                        int(batch_id),
                        started_at,
                        r["u2q_status"],
                        r["u2q_model"],
                        r["u2q_error"],
                        len(json.loads(r["queries_json"])),
                    )  # fmt: skip
                )
            t2 = time.perf_counter()
            if records:
                version, committed_at = self._merge(records)
            merge_s = time.perf_counter() - t2
            written = len(records)
        else:
            refresh_s = merge_s = 0.0
            detail = ""
        ordered = events.sort_values(["ts", "event_id"])
        batch_row = [(int(batch_id), len(events), len(triggers), written, failed, fallbacks, ordered["event_id"].iloc[0],
                ordered["event_id"].iloc[-1], started_at, committed_at, version, round(read_s, 3),
                round(refresh_s, 3), round(merge_s, 3))]  # fmt: skip
        self._log(batch_row, batch_id)
        self.batches += 1
        self.triggers += len(triggers)
        line = (
            f"nearline: batch {batch_id}: {len(events):,} events, {len(triggers):,} triggered users, "
            f"{written:,} lists written (read {read_s:.2f}s, refresh {refresh_s:.2f}s{detail}, merge {merge_s:.2f}s)"
        )
        log.info(line)
        if self.on_batch:
            self.on_batch(
                {"batch_id": batch_id, "events": len(events), "triggers": len(triggers), "written": written}
            )

    def _refresh(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The refreshed lists of ``rows`` (one per triggered user), computed in the Python
        workers: one Spark job of ``nearline.tasks`` tasks over the rows as Python records.

        The RDD API, not a DataFrame: a handful of rows needs no query plan and no Arrow
        conversion both ways, which cost about 0.25 s of each micro-batch's refresh (1.2 s
        against 0.95 s per 5 users, docs/benchmarks.md). Its workers are the same
        processes as the DataFrame jobs' (one Python daemon), so the model stays loaded.
        """
        settings, items = self.settings, self.items_broadcast
        sc = self.spark.sparkContext
        tasks = max(1, min(self.conf.nearline.tasks or sc.defaultParallelism, len(rows)))
        columns = list(INPUT_COLUMNS)

        def run(records):
            part = list(records)
            if part:
                yield refresh_users(pd.DataFrame(part, columns=columns), settings, items.value)

        with self.worker_lock:
            parts = sc.parallelize(rows[columns].to_dict("records"), tasks).mapPartitions(run).collect()
            self.last_worker_use = time.monotonic()
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=OUTPUT_COLUMNS)

    def keep_warm(self) -> bool:
        """Run the warm-up job if the Python workers sat idle for ``nearline.keep_warm_s``.

        Spark stops a Python worker that has been idle for a minute, and the embedding
        model and the shards go with it: the next trigger would wait for them to load
        again. Returns whether the job ran.
        """
        every = self.conf.nearline.keep_warm_s
        if not every or time.monotonic() - self.last_worker_use < every:
            return False
        if not self.worker_lock.acquire(blocking=False):
            return False
        try:
            warm_workers(self.spark, self.conf, self.settings)
            self.last_worker_use = time.monotonic()
        finally:
            self.worker_lock.release()
        return True

    def reload_if_newer(self) -> bool:
        """Load the batch features again if a batch run rewrote gold.recommendations since.

        The load runs beside the stream (batches go on with the old features); the new
        features take over between two batches (fresh events are looked up per batch, so
        none handled meanwhile is missed), and the old run date's rows are deleted then.
        Returns whether it reloaded.
        """
        version = features_version(self.spark, self.conf)
        if version is None or (self.features_version is not None and version <= self.features_version):
            return False
        log.info(
            f"nearline: gold.recommendations is at version {version}: reloading the batch features",
        )
        t0 = time.perf_counter()
        settings = settings_from_conf(self.spark, self.conf)
        features, items = load(self.spark, self.conf)
        warm_workers(self.spark, self.conf, settings)
        broadcast = self.spark.sparkContext.broadcast(items)
        with self.batch_lock:
            old = self.items_broadcast
            self.features, self.settings, self.items_broadcast = features, settings, broadcast
            self.features_version = version
            self.reloads += 1
            old.unpersist()  # no batch is running: nothing reads the old item table now
            drop_older_features(self.spark, self.conf, features.run_date)
        log.info(
            f"nearline: batch features of {features.run_date} in use, {time.perf_counter() - t0:.1f}s",
        )
        return True

    def _merge(self, records: list[tuple]) -> tuple[int, dt.datetime]:
        return commit_lists(self.spark, self.conf, records, self.engine)

    def _log(self, rows: list[tuple], batch_id: int) -> None:
        log_batch(self.spark, self.conf, rows, self.app_id, batch_id, self.engine)

    def warm_up_merge(self) -> None:
        """A MERGE that matches nothing and writes nothing (no version is committed), so
        that the first batch does not pay for what loads on first use (the JVM compiling
        Spark's MERGE, the delta-rs runtime)."""
        placeholder = ("__warm_up__", [], None, None, None, -1, _now(), None, None, None, 0)
        commit_lists(self.spark, self.conf, [placeholder], self.engine)


def features_version(spark: SparkSession, conf: Config) -> int | None:
    """The Delta version of gold.recommendations: a batch run's last write the stream uses."""
    if not tables.exists(spark, conf, "gold.recommendations"):
        return None
    return int(tables.last_commit(spark, conf, "gold.recommendations")["version"])


def settings_from_conf(spark: SparkSession, conf: Config) -> RefreshSettings:
    """The executors' settings: agent backend, prompt, endpoint, embedding, shards."""
    import faiss  # noqa: F401  (fails early if faiss is missing)

    uc = conf.u2q
    agent_conf = conf.llm.agent(u2q.AGENT.name)
    prompt = call = None
    if agent_conf.backend != "heuristic":
        prompt = load_prompt(u2q.AGENT.name, agent_conf.prompt_version)
        call = with_timeouts(
            call_settings(
                conf.llm.endpoint_of(u2q.AGENT.name),
                conf.llm.runtime,
                u2q.AGENT,
                conf.llm.agent(u2q.AGENT.name).endpoint,
            ),
            conf.nearline.llm_timeout_s,
            conf.nearline.llm_max_retries,
        )
    manifest = tables.read(spark, conf, "gold.index_manifest").filter(F.col("count") > 0)
    shards = manifest.select("path", "embedding_model").collect()
    ranker, model_row = load_model(spark, conf, dt.date.max)  # the newest, as the batch rank used
    spec = spec_from_conf(conf)
    models = {r["embedding_model"] for r in shards}
    if shards and models != {spec.model_id}:
        raise RuntimeError(
            f"nearline: the index was built with {models}, not {spec.model_id}: re-run embed and index"
        )
    missing = [r["path"] for r in shards if "://" not in r["path"] and not os.path.exists(r["path"])]
    if missing:
        raise RuntimeError(f"nearline: shard files missing (rebuild with the index stage): {missing[:3]}")
    return RefreshSettings(
        u2q_counts={"personal": uc.personal, "trend": uc.trend, "exploration": uc.exploration},
        backend=agent_conf.backend,
        prompt=prompt,
        call=call,
        embedding=spec,
        shard_paths=[r["path"] for r in shards],
        q2i=conf.q2i,
        candidates=conf.candidates,
        horizon_days=conf.aggregate.horizon_days,
        ranker=ranker,
        rules=list_rules(conf, model_row),
    )


def warm_workers(spark: SparkSession, conf: Config, settings: RefreshSettings) -> float:
    """Load the model and the shards in each Python worker (one partition per worker); seconds."""
    tasks = conf.nearline.tasks or spark.sparkContext.defaultParallelism
    t0 = time.perf_counter()
    spark.sparkContext.parallelize(range(tasks), tasks).mapPartitions(lambda _: [warm_up(settings)]).collect()
    return time.perf_counter() - t0
