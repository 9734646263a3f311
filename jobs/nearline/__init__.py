"""Nearline: fresh events -> refreshed recommendations of the users they trigger, in seconds.

A Structured Streaming query reads ``bronze.events`` (a Delta table; new events appended
by ingest or any other producer) and handles each micro-batch in ``foreachBatch``:

1. the batch's events are folded into the user state (``jobs.nearline.state``: recent
   CFV, history) and the triggered users found (``jobs.nearline.triggers``: a search or
   purchase, or the 5th detail view within 10 minutes, both configurable);
2. their refresh rows go to the executors, where U2Q, query embedding, the FAISS shards
   (each loaded once per Python worker) and the ranking run (``jobs.nearline.refresh``);
3. one Delta MERGE writes ``gold.nearline_recommendations``: one row per user with the
   list (``items``: position, item, title, category, score and its components, the query
   and the reason), the triggering event (id, type, time) and the batch id. For tables
   in a local storage.root the driver commits it with delta-rs (tens of milliseconds;
   Spark's MERGE costs a second or more of Spark jobs), else with Spark
   (``nearline.commit``);
4. ``silver.nearline_batches`` gets one row per micro-batch (events, triggers, the
   MERGE's Delta version and commit time, seconds per phase).

Exactly once: the checkpoint (``nearline.checkpoint``) holds the stream's offsets; a batch
that was cut short is replayed with the same id and the same events after a restart. The
MERGE only replaces a user's row from a *later* batch (``s.batch_id > t.batch_id``), so a
replay of a batch whose MERGE had already committed changes nothing, and the batch log is
an idempotent Delta append (``txnAppId`` / ``txnVersion``). No event is skipped: the
offsets only advance after ``foreachBatch`` returned, and the source's starting version
is pinned at the first start (:func:`starting_version`), so that a replay of the very
first batch reads the same events.

Latency: everything that loads on first use is loaded before the first event (the model
and the shards in every Python worker, one refresh of real users through the whole path,
a MERGE that writes nothing), and a small job every ``nearline.keep_warm_s`` idle seconds
keeps the Python workers alive (Spark stops a worker after a minute without work).

New batch runs: every ``nearline.reload_check_s`` seconds a background thread looks for a
new version of ``gold.recommendations`` and, if there is one, loads the batch features
again beside the running stream; they take over between two micro-batches, with the
events of the batches handled meanwhile folded in.

Run it with ``discovery nearline`` (stops on Ctrl-C, or with ``--stop-after-idle``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import tables
from jobs.config import Config
from jobs.nearline.refresh import (
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    RefreshSettings,
    refresh_users,
    warm_up,
    with_timeouts,
)
from jobs.nearline.state import EVENT_FIELDS, UserState, load
from jobs.nearline.triggers import ViewWindow, find_triggers

RECOMMENDATIONS = "gold.nearline_recommendations"
BATCHES = "silver.nearline_batches"

ITEM_TYPE = T.StructType(
    [
        T.StructField("position", T.IntegerType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("leaf_category", T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("channel", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("query_kind", T.StringType()),
        T.StructField("query", T.StringType()),
        T.StructField("bought", T.BooleanType()),
        T.StructField("is_new_category", T.BooleanType()),
    ]
)
RECOMMENDATIONS_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("items", T.ArrayType(ITEM_TYPE)),
        T.StructField("trigger_event_id", T.StringType()),
        T.StructField("trigger_type", T.StringType()),
        T.StructField("event_ts", T.TimestampType()),
        T.StructField("batch_id", T.LongType()),
        T.StructField("batch_started_at", T.TimestampType()),
        T.StructField("u2q_status", T.StringType()),
        T.StructField("u2q_model", T.StringType()),
        T.StructField("u2q_error", T.StringType()),
        T.StructField("queries", T.IntegerType()),
    ]
)
BATCHES_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType()),
        T.StructField("events", T.LongType()),
        T.StructField("triggers", T.LongType()),
        T.StructField("users_written", T.LongType()),
        T.StructField("failed", T.LongType()),
        T.StructField("u2q_fallbacks", T.LongType()),
        T.StructField("first_event_id", T.StringType()),
        T.StructField("last_event_id", T.StringType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("committed_at", T.TimestampType()),
        T.StructField("recommendations_version", T.LongType()),
        T.StructField("read_s", T.DoubleType()),
        T.StructField("refresh_s", T.DoubleType()),
        T.StructField("merge_s", T.DoubleType()),
    ]
)


def stored_candidates(
    spark: SparkSession, conf: Config, run_date: dt.date, users: list[str]
) -> dict[str, str]:
    """user_id -> the batch run's candidates of the buyer (``gold.candidate_features`` rows of
    ``run_date``) as JSON records; read per micro-batch for the triggered buyers only (the
    table is range-partitioned by user, so the read skips the other files)."""
    from jobs.candidates import FEATURE_COLUMNS, FEATURES

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
    rows = (
        tables.read(spark, conf, FEATURES)
        .filter((F.col("as_of") == F.lit(run_date)) & F.col("user_id").isin(sorted(set(users))))
        .select(*cols)
        .toPandas()
    )
    rows["reasons"] = [dict(m) if m is not None else {} for m in rows["reasons"]]
    return {
        uid: json.dumps(g.drop(columns="user_id").to_dict("records")) for uid, g in rows.groupby("user_id")
    }


def checkpoint_location(conf: Config) -> str:
    if conf.nearline.checkpoint:
        return conf.nearline.checkpoint
    root = conf.storage.root if "://" in conf.storage.root else os.path.abspath(conf.storage.root)
    return f"{root}/checkpoints/nearline"


def _utc(ts) -> dt.datetime:
    return pd.Timestamp(ts).to_pydatetime().replace(tzinfo=None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class BatchHandler:
    """The ``foreachBatch`` function and what it keeps between micro-batches."""

    spark: SparkSession
    conf: Config
    state: UserState
    settings: RefreshSettings
    items_broadcast: object
    window: ViewWindow
    app_id: str
    on_batch: object = None  # optional callback(dict) after each batch, for progress
    batches: int = 0
    triggers: int = 0
    engine: str = "spark"  # how the two tables are committed: "delta-rs" or "spark"
    # The version of gold.recommendations whose batch run the features come from; the
    # events of the batches handled while newer features load (None: no reload running).
    features_version: int | None = None
    events_since_reload: list | None = None
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
        events["ts"] = [_utc(t) for t in events["ts"]]
        self.state.fold(events)
        if self.events_since_reload is not None:
            self.events_since_reload.append(events)
        nc = self.conf.nearline
        triggers = find_triggers(events, self.window, nc.trigger_types, nc.view_types)
        t1 = time.perf_counter()
        written, failed, fallbacks, version, committed_at = 0, 0, 0, None, None
        if triggers:
            stored = stored_candidates(
                self.spark, self.conf, self.state.run_date, [t.user_id for t in triggers]
            )
            rows = pd.DataFrame(
                [
                    {
                        **self.state.inputs(t.user_id, t.ts.date()),
                        "candidates_json": stored.get(t.user_id, "[]"),
                    }
                    for t in triggers
                ]  # fmt: skip
            )[list(INPUT_COLUMNS)]
            out = self._refresh(rows)
            refresh_s = time.perf_counter() - t1
            by_user = {t.user_id: t for t in triggers}
            records = []
            for r in out.to_dict("records"):
                if r["items_json"] is None:  # the refresh failed: the user keeps the last list
                    print(f"nearline: batch {batch_id}: user {r['user_id']}: {r['u2q_error']}", flush=True)
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
        ordered = events.sort_values(["ts", "event_id"])
        log = [(int(batch_id), len(events), len(triggers), written, failed, fallbacks, ordered["event_id"].iloc[0],
                ordered["event_id"].iloc[-1], started_at, committed_at, version, round(read_s, 3),
                round(refresh_s, 3), round(merge_s, 3))]  # fmt: skip
        self._log(log, batch_id)
        self.batches += 1
        self.triggers += len(triggers)
        line = (
            f"nearline: batch {batch_id}: {len(events):,} events, {len(triggers):,} triggered users, "
            f"{written:,} lists written (read {read_s:.2f}s, refresh {refresh_s:.2f}s, merge {merge_s:.2f}s)"
        )
        print(line, flush=True)
        if self.on_batch:
            self.on_batch(
                {"batch_id": batch_id, "events": len(events), "triggers": len(triggers), "written": written}
            )

    def _refresh(self, rows: pd.DataFrame) -> pd.DataFrame:
        settings, items = self.settings, self.items_broadcast
        sc = self.spark.sparkContext
        tasks = max(1, min(self.conf.nearline.tasks or sc.defaultParallelism, len(rows)))
        # The rows are split into `tasks` partitions here (no shuffle: one job, one stage).
        rdd = sc.parallelize([tuple(r) for r in rows.itertuples(index=False)], tasks)
        df = self.spark.createDataFrame(
            rdd, T.StructType([T.StructField(c, T.StringType()) for c in INPUT_COLUMNS])
        )

        def run(batches):
            for pdf in batches:
                if len(pdf):
                    yield refresh_users(pdf, settings, items.value)

        with self.worker_lock:
            out = df.mapInPandas(run, OUTPUT_SCHEMA).toPandas()
            self.last_worker_use = time.monotonic()
        return out

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
        state takes over between two batches, with the events of the batches handled
        meanwhile folded into it. Returns whether it reloaded.
        """
        version = features_version(self.spark, self.conf)
        if version is None or (self.features_version is not None and version <= self.features_version):
            return False
        print(
            f"nearline: gold.recommendations is at version {version}: reloading the batch features",
            flush=True,
        )
        t0 = time.perf_counter()
        self.events_since_reload = []
        try:
            settings = settings_from_conf(self.spark, self.conf)
            state, items = load(self.spark, self.conf)
            warm_workers(self.spark, self.conf, settings)
            broadcast = self.spark.sparkContext.broadcast(items)
            with self.batch_lock:
                for events in self.events_since_reload:
                    state.fold(events)
                old = self.items_broadcast
                self.state, self.settings, self.items_broadcast = state, settings, broadcast
                self.features_version = version
                self.reloads += 1
                old.unpersist()  # no batch is running: nothing reads the old item table now
        finally:
            self.events_since_reload = None
        print(
            f"nearline: batch features of {state.run_date} in use, {time.perf_counter() - t0:.1f}s",
            flush=True,
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
    return int(tables._last_commit(spark, conf, "gold.recommendations")["version"])


def commit_engine(conf: Config) -> str:
    """``nearline.commit``: "auto" is delta-rs for tables in a local storage.root, else Spark."""
    if conf.nearline.commit == "spark" or tables.local_path(conf, RECOMMENDATIONS) is None:
        return "spark"
    return "delta-rs"


def create_tables(spark: SparkSession, conf: Config) -> None:
    """Create the (empty) output tables, so that either engine can commit to them."""
    for name, schema in ((RECOMMENDATIONS, RECOMMENDATIONS_SCHEMA), (BATCHES, BATCHES_SCHEMA)):
        if not tables.exists(spark, conf, name):
            tables.overwrite(spark.createDataFrame([], schema), conf, name)


def commit_lists(
    spark: SparkSession, conf: Config, records: list[tuple], engine: str
) -> tuple[int, dt.datetime]:
    """MERGE the refreshed lists (rows of ``RECOMMENDATIONS_SCHEMA``) into the table.

    A user's row is replaced only from a later batch (``s.batch_id > t.batch_id``), so a
    replayed batch changes nothing; rows with a negative batch id are never inserted (the
    warm-up). Returns the table's (version, commit time) afterwards.
    """
    update_when, insert_when = "s.batch_id > t.batch_id", "s.batch_id >= 0"
    if engine == "delta-rs":
        names = RECOMMENDATIONS_SCHEMA.fieldNames()
        rows = [dict(zip(names, r, strict=True)) for r in records]
        return tables.rs_merge_upsert(
            tables.local_path(conf, RECOMMENDATIONS), rows, ["user_id"], update_when, insert_when
        )
    from delta.tables import DeltaTable

    loc = tables.location(conf, RECOMMENDATIONS)
    target = DeltaTable.forName(spark, loc) if conf.storage.catalog else DeltaTable.forPath(spark, loc)
    (
        target.alias("t")
        .merge(spark.createDataFrame(records, RECOMMENDATIONS_SCHEMA).alias("s"), "t.user_id = s.user_id")
        .whenMatchedUpdateAll(condition=update_when)
        .whenNotMatchedInsertAll(condition=insert_when)
        .execute()
    )
    last = target.history(1).select("version", "timestamp").collect()[0]
    return int(last["version"]), last["timestamp"]


def log_batch(
    spark: SparkSession, conf: Config, rows: list[tuple], app_id: str, batch_id: int, engine: str
) -> None:
    """Append a micro-batch's row(s) to ``silver.nearline_batches`` once per (app_id, batch_id)."""
    if engine == "delta-rs":
        names = BATCHES_SCHEMA.fieldNames()
        tables.rs_append_once(
            tables.local_path(conf, BATCHES),
            [dict(zip(names, r, strict=True)) for r in rows],
            app_id,
            batch_id,
        )
    else:
        tables.append_once(spark.createDataFrame(rows, BATCHES_SCHEMA), conf, BATCHES, app_id, batch_id)


def settings_from_conf(spark: SparkSession, conf: Config) -> RefreshSettings:
    """The executors' settings: agent backend, prompt, endpoint, embedding, shards."""
    from jobs.q2i import _shard  # noqa: F401  (fails early if faiss is missing)
    from jobs.rank import list_rules
    from jobs.ranker import load_model
    from prompts import load_prompt
    from udfs.agents import u2q
    from udfs.embedding import spec_from_conf
    from udfs.llm.runner import call_settings

    uc = conf.u2q
    agent_conf = conf.llm.agent(u2q.AGENT.name)
    prompt = call = None
    if agent_conf.backend != "heuristic":
        prompt = load_prompt(u2q.AGENT.name, agent_conf.prompt_version)
        call = with_timeouts(
            call_settings(conf.llm.endpoint_of(u2q.AGENT.name), conf.llm.runtime, u2q.AGENT),
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
    spark.range(0, tasks, 1, tasks).mapInPandas(
        lambda batches: (warm_up(pdf, settings) for pdf in batches), "seconds double"
    ).collect()
    return time.perf_counter() - t0


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
    latest = int(tables._last_commit(spark, conf, "bronze.events")["version"])
    marker = f"{checkpoint}/nearline_start.json"
    saved = _read_text(spark, marker)
    if saved is None:
        _write_text(spark, marker, json.dumps({"latest_version_at_first_start": latest}))
        return "latest"
    first = int(json.loads(saved)["latest_version_at_first_start"])
    return str(first + 1) if latest > first else "latest"


def _hadoop_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), p


def _read_text(spark: SparkSession, path: str) -> str | None:
    """A small file next to the checkpoint (any Hadoop file system), or None."""
    fs, p = _hadoop_path(spark, path)
    if not fs.exists(p):
        return None
    stream = fs.open(p)
    try:
        return spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def _write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, p = _hadoop_path(spark, path)
    out = fs.create(p, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


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
        window.add(r["user_id"], r["event_id"], _utc(r["ts"]))
    return len(rows)


def start(spark: SparkSession, conf: Config, on_batch=None) -> tuple[object, BatchHandler]:
    """Load the state and start the streaming query; returns (StreamingQuery, handler)."""
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
    state, items = load(spark, conf)
    window = ViewWindow(nc.views, nc.view_window_s)
    n_views = seed_views(spark, conf, window)
    tasks = nc.tasks or spark.sparkContext.defaultParallelism
    seconds = warm_workers(spark, conf, settings)
    print(
        f"nearline: model and {len(settings.shard_paths)} shard(s) loaded in {tasks} worker(s), {seconds:.1f}s",
        flush=True,
    )
    checkpoint = checkpoint_location(conf)
    handler = BatchHandler(
        spark=spark,
        conf=conf,
        state=state,
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
    sample = sorted(state.inputs_by_user)[:tasks]
    if sample:
        stored = stored_candidates(spark, conf, state.run_date, sample)
        rows = [{**state.inputs(u, state.run_date), "candidates_json": stored.get(u, "[]")} for u in sample]
        handler._refresh(pd.DataFrame(rows)[list(INPUT_COLUMNS)])
    handler.warm_up_merge()
    print(
        f"nearline: warm-up refresh and MERGE {time.perf_counter() - t0:.1f}s; commits by {handler.engine}",
        flush=True,
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
    print(
        f"nearline: ready; reading {tables.location(conf, 'bronze.events')} from "
        f"{'the checkpoint' if resuming else 'version ' + starting}"
        f" ({n_views:,} recent detail views loaded); checkpoint {checkpoint}",
        flush=True,
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
            print(f"nearline: background job failed: {type(e).__name__}: {e}", flush=True)
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
                print(f"nearline: no new events for {stop_after_idle:.0f}s, stopping", flush=True)
                break
            if max_seconds is not None and now - began > max_seconds:
                break
    except KeyboardInterrupt:
        print("nearline: interrupted, stopping", flush=True)
    finally:
        if query.isActive:
            query.stop()
    if query.exception() is not None:
        raise RuntimeError(f"nearline: the stream failed: {query.exception()}")
    return {"batches": handler.batches, "triggers": handler.triggers}
