"""Ingest: raw behaviour logs and catalogs -> Delta bronze tables.

Writes ``bronze.events`` (partitioned by ``dt``), ``bronze.items`` and
``bronze.quarantine``. Every input record ends in exactly one of: an event, a
quarantine row with a reason, or an exact duplicate of another record. Re-ingesting the
same files changes no row (MERGE on deterministic ids); new days add only their rows.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config, SourceConf
from jobs.ingest import staging, synthetic
from jobs.ingest.sources import ADAPTERS, IngestError, generic_frame, list_input_files

log = logging.getLogger(__name__)

__all__ = ["IngestError", "IngestSummary", "run", "stage_source"]


@dataclass
class IngestSummary:
    source: str
    input_rows: int
    accepted: int
    quarantined: int
    duplicates: int
    new_events: int
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.input_rows == self.accepted + self.quarantined + self.duplicates

    def lines(self) -> list[str]:
        out = [
            f"ingest {self.source}: input {self.input_rows:,} = accepted {self.accepted:,}"
            f" + quarantined {self.quarantined:,} + duplicates {self.duplicates:,}"
            f" [{'reconciled' if self.reconciles else 'MISMATCH'}];"
            f" new events written {self.new_events:,}",
        ]
        for reason, n in sorted(self.quarantine_by_reason.items(), key=lambda kv: -kv[1]):
            out.append(f"    quarantined {reason}: {n:,}")
        return out


def stage_source(spark: SparkSession, src: SourceConf) -> DataFrame:
    """Staged rows of one configured source (see ``staging.py``)."""
    if src.format == "synthetic":
        if not (src.users and src.days):
            raise IngestError(f"source {src.name}: synthetic needs users and days")
        events, _ = synthetic.generate(spark, src.users, src.days, seed=src.seed)
        as_text = events.select(*[F.col(c).cast("string") for c in events.columns])
        return generic_frame(as_text, src)
    if not src.path:
        raise IngestError(f"source {src.name}: path is required for format {src.format}")
    files = list_input_files(src.path)
    log.info("source %s: %d file(s) under %s", src.name, len(files), src.path)
    return ADAPTERS[src.format](spark, src, files)


# The staged records (the raw text of each kept beside its fields) are as large as the
# input: cached on local disk, not in the heap. In memory, a year of 10,000 synthetic
# buyers (1.7 M records of ~700 bytes) ran a 2 GB driver out of heap in the conflict check.
CACHE = StorageLevel.DISK_ONLY


def ingest_source(spark: SparkSession, conf: Config, src: SourceConf, run_id: str) -> IngestSummary:
    """Stage, validate, deduplicate and MERGE one source into bronze."""
    try:
        staged = stage_source(spark, src).persist(CACHE)
        input_rows = staged.count()
    except IngestError:
        raise
    except Exception as e:  # Spark wraps reader failures; name the source and path.
        raise IngestError(f"source {src.name}: cannot read {src.path}: {str(e).splitlines()[0]}") from e

    distinct = staged.dropDuplicates(["source", "raw"]).persist(CACHE)
    duplicates = input_rows - distinct.count()
    # One cached copy at a time.
    staged.unpersist()
    validated = distinct.transform(staging.validate).transform(staging.with_event_ids).persist(CACHE)
    by_reason = {
        r["reason"] or "": r["n"] for r in validated.groupBy("reason").agg(F.count("*").alias("n")).collect()
    }
    distinct.unpersist()
    accepted = by_reason.pop("", 0)
    quarantined = sum(by_reason.values())

    events = tables.by_partition(staging.to_events(validated), ["dt"])
    new_events = tables.merge_insert_new(
        events, conf, "bronze.events", keys=["event_id"], partition_by=["dt"]
    )
    tables.merge_insert_new(
        staging.to_quarantine(validated, run_id), conf, "bronze.quarantine", keys=["quarantine_id"]
    )
    tables.merge_upsert(
        staging.to_items(validated),
        conf,
        "bronze.items",
        keys=["item_id"],
        update_when="s.last_seen > t.last_seen OR s.first_seen < t.first_seen",
        update_set={
            **{
                c: f"CASE WHEN s.last_seen > t.last_seen THEN coalesce(s.{c}, t.{c}) ELSE t.{c} END"
                for c in ("title", "category_path", "leaf_category", "price", "image_url")
            },
            "first_seen": "least(s.first_seen, t.first_seen)",
            "last_seen": "greatest(s.last_seen, t.last_seen)",
        },
    )
    summary = IngestSummary(
        source=src.name,
        input_rows=input_rows,
        accepted=accepted,
        quarantined=quarantined,
        duplicates=duplicates,
        new_events=new_events,
        quarantine_by_reason=by_reason,
    )
    validated.unpersist()
    return summary


def run(spark: SparkSession, conf: Config) -> list[IngestSummary]:
    """Ingest every source in ``conf.ingest.sources``; print a reconciled summary for each."""
    if not conf.ingest.sources:
        raise IngestError("no sources configured: set ingest.sources in the config")
    run_id = conf.run.run_id or uuid.uuid4().hex[:12]
    summaries = []
    for src in conf.ingest.sources:
        summary = ingest_source(spark, conf, src, run_id)
        for line in summary.lines():
            log.info(line)
        if not summary.reconciles:  # impossible by construction; never let it pass silently
            raise IngestError(f"source {src.name}: counts do not reconcile: {summary}")
        summaries.append(summary)
    return summaries
