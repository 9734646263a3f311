"""Stage bookkeeping for ``discovery pipeline``: rows in / out per stage, and resuming.

Every completed stage appends a row to ``silver.stage_runs``: the run date, the stage, a
fingerprint of the configuration, the version of ``bronze.events`` it saw, rows read and
written, seconds. ``discovery pipeline`` then resumes: ingest always runs (it is cheap
when nothing is new), and of the stages after it, the leading ones already complete for
this run date, this configuration and these events are skipped; the first one that is
not, and every stage after it, run. ``--restart`` runs everything.

Rows in: the row counts of the tables a stage reads (:mod:`jobs.stages`), from the
Delta log's file statistics; rows out: the rows its commits wrote to the tables it
writes, from the commits' operation metrics (a MERGE counts inserted + updated rows). A
local warehouse answers all of it through delta-rs without a Spark job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from core.rundate import last_event_day
from jobs.tracking import flat_params

STAGE_RUNS = "silver.stage_runs"
SCHEMA = (
    "run_date date, stage string, conf_fingerprint string, events_version long, rows_in long, "
    "rows_out long, seconds double, finished_at timestamp"
)
# Settings that do not change what a stage computes.
NEUTRAL_PREFIXES = ("run.run_id", "spark.", "tracking.", "evaluate.report_dir")


def fingerprint(conf: Config) -> str:
    """SHA-256 (16 hex) of the configuration, minus settings that change no result."""

    params = {k: v for k, v in flat_params(conf).items() if not k.startswith(NEUTRAL_PREFIXES)}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def events_version(spark: SparkSession, conf: Config) -> int | None:
    """Current Delta version of ``bronze.events`` (None before the first ingest)."""
    return tables.version(spark, conf, "bronze.events")


def run_date(spark: SparkSession, conf: Config) -> dt.date | None:
    """The run date the stages will use (None while there are no events)."""
    return conf.run.date if conf.run.date != "latest" else last_event_day(spark, conf)


def count_rows(spark: SparkSession, conf: Config, names) -> int:
    """Sum of the row counts of the tables that exist (from the Delta log's statistics)."""
    return sum(tables.row_count(spark, conf, n) for n in names if tables.exists(spark, conf, n))


def versions(spark: SparkSession, conf: Config, names) -> dict[str, int | None]:
    """The current Delta version of each table (None: not written yet)."""
    return {n: tables.version(spark, conf, n) for n in names}


def rows_written(spark: SparkSession, conf: Config, before: dict[str, int | None]) -> int:
    """Rows the commits made since ``before`` (:func:`versions`) wrote, from their metrics."""
    return sum(tables.rows_written(spark, conf, n, v) for n, v in before.items())


def completed(spark: SparkSession, conf: Config) -> set[str]:
    """Stages complete for this run date, configuration and version of the events."""
    date, version = run_date(spark, conf), events_version(spark, conf)
    if date is None or not tables.exists(spark, conf, STAGE_RUNS):
        return set()
    rows = (
        tables.read(spark, conf, STAGE_RUNS)
        .filter(
            (F.col("run_date") == F.lit(date))
            & (F.col("conf_fingerprint") == fingerprint(conf))
            & (F.col("events_version") == F.lit(version))
        )
        .select("stage")
        .distinct()
        .collect()
    )
    return {r["stage"] for r in rows}


def record(
    spark: SparkSession, conf: Config, stage: str, rows_in: int, rows_out: int, seconds: float
) -> None:
    """Append the completion of ``stage``."""
    date = run_date(spark, conf)
    if date is None:
        return
    row = [
        (
            date,
            stage,
            fingerprint(conf),
            events_version(spark, conf),
            rows_in,
            rows_out,
            seconds,
            dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        )
    ]
    tables.append_rows(spark, conf, STAGE_RUNS, row, SCHEMA)


def to_resume(todo: list[str], done: set[str], always: tuple[str, ...] = ("ingest",)) -> list[str]:
    """The stages to run: ``always`` ones, then from the first of the others not in ``done`` on."""
    rest = [s for s in todo if s not in always]
    first = next((i for i, s in enumerate(rest) if s not in done), len(rest))
    return [s for s in todo if s in always] + rest[first:]
