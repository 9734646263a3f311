"""The stages of the pipeline: one registry, and the runner every entry point uses.

Each :class:`Stage` names its module (which has ``run(spark, conf)``), the tables it
reads and the tables it writes. ``STAGES`` is in execution order; stage B depends on
stage A when B reads a table that A writes (A earlier). The CLI (one subcommand per
stage, ``pipeline``), the as-of reruns of the evaluation and the ranker's training,
the resume logic and the scheduled job (``databricks.yml``, checked by
``tests/test_dag.py``) all read this registry.

Caches are no dependency: ``silver.text_vectors`` (embeddings) and
``silver.llm_responses`` (LLM answers) are read and appended by whichever stage embeds a
text or asks a model, and a missing entry is simply computed.

:func:`run_stages` runs stages in order with one progress line each (rows in / out,
seconds), an MLflow run per stage (``jobs.tracking``) and a completion record
(``jobs.progress``) from which ``discovery pipeline`` resumes.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from core import tables
from core.config import Config, ConfigError, derive
from jobs import progress
from jobs.tracking import Tracker, tracked

log = logging.getLogger(__name__)

CACHES = ("silver.text_vectors", "silver.llm_responses")


@dataclass(frozen=True)
class Stage:
    """A step of the pipeline: ``module.run(spark, conf)`` reads ``reads`` and writes
    ``writes`` (tables by logical name; raw logs and trend sources are no tables); every
    table of ``reads`` but the ``optional`` ones must exist before it runs. ``daily``: part
    of the daily run (``discovery pipeline``); the others have a schedule of their own and
    run when asked."""

    name: str
    module: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    daily: bool = True
    # Tables of ``reads`` the stage does without when they are missing (it says so in its log).
    optional: tuple[str, ...] = ()
    # The module has ``early_work(spark, conf)``: work that needs only the events, which
    # :func:`run_stages` starts in the background beside the stages before this one.
    early: bool = False

    def entry(self) -> Callable[[SparkSession, Config], object]:
        """The stage's ``run`` function (its module is imported on first use)."""
        return importlib.import_module(self.module).run

    def early_work(self, spark: SparkSession, conf: Config) -> Callable[[], None] | None:
        """The work to start early (None: nothing to do this run)."""
        return importlib.import_module(self.module).early_work(spark, conf) if self.early else None


class EarlyWork:
    """A stage's early work in a thread of its own. Its Spark jobs form a job group of their
    own, so that a failure of the stages beside it cancels them (:meth:`cancel`)."""

    def __init__(self, spark: SparkSession, stage: str, work: Callable[[], None]) -> None:
        self.spark = spark
        self.stage = stage
        self.group = f"early-{stage}-{uuid.uuid4().hex[:8]}"
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), name=self.group, daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        # A job group of this thread's jobs only (a thread-local property of the context).
        self.spark.sparkContext.setJobGroup(self.group, f"early work of stage {self.stage}", True)
        try:
            work()
        except BaseException as e:  # handed to the stage that needs the work
            self.error = e
        finally:
            self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)

    def wait(self) -> None:
        """Block until the work is done; raise what it raised."""
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"the early work of stage {self.stage} failed: {self.error}") from self.error

    def cancel(self) -> None:
        """Stop the work's Spark jobs and wait for its thread to end."""
        while self.thread.is_alive():  # each job it starts meanwhile is stopped too
            self.spark.sparkContext.cancelJobGroup(self.group)
            self.thread.join(timeout=1.0)


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "jobs.ingest",
        reads=(),
        writes=("bronze.events", "bronze.items", "bronze.quarantine"),
    ),
    Stage(
        "items",
        "jobs.items",
        reads=("bronze.items",),
        writes=("silver.item_profiles",),
    ),
    Stage(
        "aggregate",
        "jobs.aggregate",
        reads=("bronze.events", "bronze.items", "silver.item_profiles"),
        writes=(
            "silver.item_categories",
            "silver.user_week_category",
            "silver.user_windows",
            "silver.search_terms_weekly",
        ),
        optional=("silver.item_profiles",),
    ),
    Stage(
        "compress",
        "jobs.compress",
        reads=(
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "silver.user_week_category",
        ),
        writes=("gold.behavior_digests",),
        optional=("silver.item_profiles",),
    ),
    Stage(
        "cfv",
        "jobs.cfv",
        reads=("bronze.events", "silver.item_categories", "silver.item_profiles"),
        writes=("gold.cfv",),
    ),
    Stage(
        "portrait",
        "jobs.portrait",
        reads=(
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "silver.user_windows",
            "gold.behavior_digests",
        ),
        writes=("gold.portraits",),
        optional=("gold.behavior_digests",),
    ),
    Stage(
        "trends",
        "jobs.trends",
        reads=(
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "silver.search_terms_weekly",
        ),
        writes=(
            "silver.trend_seeds",
            "gold.category_trends",
            "bronze.trend_documents",
            "bronze.trend_documents_quarantine",
            "gold.category_phrases",
            "gold.trend_queries",
        ),
    ),
    Stage(
        "u2q",
        "jobs.u2q",
        reads=(
            "bronze.events",
            "silver.user_windows",
            "gold.cfv",
            "gold.portraits",
            "gold.trend_queries",
            "gold.category_phrases",
        ),
        writes=("gold.user_queries",),
        optional=("gold.trend_queries", "gold.category_phrases"),
    ),
    Stage(
        "embed",
        "jobs.embed",
        reads=("silver.item_profiles",),
        writes=("silver.item_vectors",),
    ),
    Stage(
        "index",
        "jobs.index",
        reads=("silver.item_vectors",),
        writes=("gold.index_manifest",),
    ),
    Stage(
        "q2i",
        "jobs.q2i",
        reads=(
            "bronze.events",
            "silver.item_profiles",
            "silver.item_vectors",
            "gold.cfv",
            "gold.user_queries",
            "gold.index_manifest",
        ),
        writes=("gold.q2i_candidates",),
    ),
    Stage(
        "candidates",
        "jobs.candidates",
        reads=(
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "gold.cfv",
            "gold.user_queries",
            "gold.q2i_candidates",
        ),
        writes=("gold.candidates", "gold.candidate_features"),
        optional=("gold.user_queries", "gold.q2i_candidates"),
    ),
    # Retrains when the newest model is older than ranker.max_age_days (weekly by default).
    Stage(
        "train",
        "jobs.ranker",
        reads=("bronze.events", "gold.candidate_features"),
        writes=("gold.ranker_models",),
        early=True,
    ),
    Stage(
        "rank",
        "jobs.rank",
        reads=("bronze.events", "gold.candidate_features", "gold.ranker_models"),
        writes=("gold.recommendations",),
    ),
    # Its own schedule (weekly): it reruns the stages above as of its cut dates in a
    # warehouse of its own; from the main warehouse it reads only the events and the catalog.
    Stage(
        "evaluate",
        "jobs.evaluate",
        reads=("bronze.events", "bronze.items"),
        writes=(
            "gold.evaluation",
            "gold.evaluation_users",
            "gold.evaluation_lists",
            "gold.evaluation_cuts",
            "gold.evaluation_tuning",
            "gold.evaluation_tradeoff",
        ),
        daily=False,
    ),
)


def stage_names() -> list[str]:
    """Every stage, in execution order."""
    return [s.name for s in STAGES]


def daily_stages() -> list[str]:
    """The stages of the daily run, in execution order."""
    return [s.name for s in STAGES if s.daily]


def stage(name: str) -> Stage:
    """The stage called ``name``; a ConfigError naming the known ones otherwise."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage: {name}; known: {', '.join(stage_names())}")


def dependencies() -> dict[str, list[str]]:
    """stage -> the stages it depends on directly (sorted), in execution order."""
    producer: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for s in STAGES:
        out[s.name] = sorted({producer[t] for t in s.reads if t in producer and producer[t] != s.name})
        for table in s.writes:
            producer[table] = s.name
    return out


def run_stages(
    spark: SparkSession,
    conf: Config,
    names: list[str],
    tracker: Tracker | None = None,
    parent_id: str | None = None,
    label: str = "",
    resume: bool = False,
) -> None:
    """Run the named stages in execution order with a progress line per stage (rows in /
    out, seconds).

    With a ``tracker`` (:class:`jobs.tracking.Tracker`) every stage is an MLflow run,
    nested under ``parent_id`` when given. ``resume``: skip the leading stages already
    complete for the run date (:mod:`jobs.progress`; ingest always runs).
    """
    tracker = tracker or Tracker(conf)
    unknown = set(names) - set(stage_names())
    if unknown:
        raise ConfigError(
            f"unknown stage(s): {', '.join(sorted(unknown))}; known: {', '.join(stage_names())}"
        )
    todo = [s for s in STAGES if s.name in names]
    prefix = f"{label} " if label else ""
    dated: list[Config] = []

    def with_run_date() -> Config:
        """``conf`` with ``run.date`` resolved once, after ingest: every stage of this run
        works for the same day, even when events arrive meanwhile."""
        if not dated:
            day = progress.run_date(spark, conf)
            fixed = conf.run.date != "latest" or day is None
            dated.append(conf if fixed else derive(conf, [f"run.date={day}"]))
        return dated[0]

    early: dict[str, EarlyWork] = {}

    def start_early(pending: list[Stage]) -> None:
        """Start the early work of the pending stages that have stages before them."""
        if not conf.run.early_work:
            return
        for s in pending[1:]:
            work = s.early_work(spark, with_run_date())
            if work is not None:
                log.info(f"{prefix}{s.name}: its early work runs in the background from now on")
                early[s.name] = EarlyWork(spark, s.name, work)

    def run_one(s: Stage) -> None:
        if s.name in early:
            log.info(f"{prefix}{s.name}: waiting for its early work")
            early.pop(s.name).wait()
        i = todo.index(s) + 1
        missing = [t for t in s.reads if t not in s.optional and not tables.exists(spark, conf, t)]
        if missing:
            makers = sorted({m.name for m in STAGES for t in missing if t in m.writes})
            raise ConfigError(
                f"stage {s.name} needs {', '.join(missing)}: run {', '.join(makers) or 'ingest'} first"
            )
        rows_in = progress.count_rows(spark, conf, s.reads)
        before = progress.versions(spark, conf, s.writes)
        log.info(f"{prefix}[{i}/{len(todo)}] {s.name} ...")
        t0 = time.perf_counter()
        stage_conf = conf if s.name == "ingest" else with_run_date()
        with tracked(tracker, stage_conf, s.name, parent_id) as run:
            run["result"] = s.entry()(spark, stage_conf)
        seconds = time.perf_counter() - t0
        rows_out = progress.rows_written(spark, conf, before)
        progress.record(spark, conf, s.name, rows_in, rows_out, seconds)
        log.info(
            f"{prefix}[{i}/{len(todo)}] {s.name} done: rows in {rows_in:,}, out {rows_out:,}, {seconds:.1f}s"
        )

    try:
        for s in [s for s in todo if s.name == "ingest"]:
            run_one(s)
        rest = [s for s in todo if s.name != "ingest"]
        if resume:
            remaining = progress.to_resume([s.name for s in rest], progress.completed(spark, conf), always=())
            skipped = [s.name for s in rest[: len(rest) - len(remaining)]]
            if skipped:
                start = remaining[0] if remaining else "nothing left to run"
                log.info(
                    f"{prefix}resume: {', '.join(skipped)} already complete for run date "
                    f"{progress.run_date(spark, conf)}; starting at {start} (--restart runs every stage)"
                )
            rest = [s for s in rest if s.name in remaining]
        if rest:
            start_early(rest)
        for s in rest:
            run_one(s)
    except BaseException:
        for work in early.values():
            work.cancel()
        raise
