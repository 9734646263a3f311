"""The run date a stage works for: ``run.date`` of the configuration, or, when that is
``latest``, the last day with events in ``bronze.events``."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config


def last_event_day(spark: SparkSession, conf: Config, events: DataFrame | None = None) -> dt.date | None:
    """The last ``dt`` of ``events`` (default ``bronze.events``); None without events."""
    if events is None:
        if not tables.exists(spark, conf, "bronze.events"):
            return None
        last = tables.last_partition(spark, conf, "bronze.events", "dt")  # from the log, when it can say
        if last is not None:
            return last
        events = tables.read(spark, conf, "bronze.events")
    return events.agg(F.max("dt")).collect()[0][0]


def resolve_run_date(spark: SparkSession, conf: Config, events: DataFrame | None = None) -> dt.date:
    """The configured run date, or the last event day when it is ``latest``; a stage with
    nothing to work on (no events) stops here with a clear error."""
    if conf.run.date != "latest":
        return conf.run.date
    last = last_event_day(spark, conf, events)
    if last is None:
        raise ValueError("bronze.events is empty: nothing to aggregate (run ingest first)")
    return last
