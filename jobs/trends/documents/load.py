"""Every configured source into ``bronze.trend_documents``: read, validate together, MERGE
the new documents on ``doc_id``, quarantine the rest with a reason (see the package's
docstring), and report per source."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.config import Config, TrendSourceConf, source_path
from jobs.trends.documents.folder import read_folder
from jobs.trends.documents.frames import read_delta, staged_from_frame
from jobs.trends.documents.http_search import api_key, fetch_http
from jobs.trends.documents.records import (
    DOC_ID_HEX,
    DOCUMENT_SCHEMA,
    MAX_DETAIL_CHARS,
    MAX_RAW_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    QUARANTINE_SCHEMA,
    STAGED_COLUMNS,
    STAGED_SCHEMA,
    HttpFailure,
    SourceCounts,
)

log = logging.getLogger(__name__)

DOCUMENTS_TABLE = "bronze.trend_documents"


QUARANTINE_TABLE = "bronze.trend_documents_quarantine"

# Longer texts are cut, not rejected: a long article is still a document.


@dataclass
class DocumentLoad:
    """Result of :func:`load_documents`.

    Attributes
    ----------
    documents : the table's documents visible as of the run date (all sources, all loads).
    sources : per configured source (in conf order), what this load read, accepted and quarantined.
    inserted : documents new to ``bronze.trend_documents`` in this load.
    http_failures : one record per seed an http source failed to answer.
    """

    documents: DataFrame
    sources: dict[str, SourceCounts]
    inserted: int
    http_failures: list[HttpFailure]


def check_sources(sources: list[TrendSourceConf]) -> None:
    """Raise ``ValueError`` naming the source for a source that cannot work as configured.

    Runs before anything is read or sent, so a typo fails in a second, not after the
    first sources were loaded.
    """
    seen: set[str] = set()
    for src in sources:
        where = f"trends source {src.name!r} ({src.kind})"
        if src.name in seen:
            raise ValueError(f"{where}: two sources are named {src.name!r}; names must be unique")
        seen.add(src.name)
        if src.kind == "folder":
            if not src.path:
                raise ValueError(f"{where}: path is required")
            if not Path(source_path(src.path)).is_dir():
                raise ValueError(f"{where}: folder {src.path} does not exist")
        elif src.kind == "delta":
            if bool(src.path) == bool(src.table):
                raise ValueError(f"{where}: set exactly one of path (a Delta table path) or table")
        elif src.kind == "http":
            if not src.url:
                raise ValueError(f"{where}: url is required")
            if not src.url.startswith(("http://", "https://")):
                raise ValueError(f"{where}: url must start with http:// or https://, got {src.url!r}")
            api_key(src)  # fails now if the variable is missing


def _blank_to_null(c: Column) -> Column:
    t = F.trim(c)
    return F.when(t == "", None).otherwise(t)


def validate(staged: DataFrame, loaded_at: dt.datetime) -> DataFrame:
    """Staged rows with the document columns filled in and ``reason`` / ``detail`` set.

    Rules in order, the first that holds names the reason: the reader's own reason;
    ``missing_text`` (no text or only blanks); ``bad_published_at`` (a value that is not
    an ISO date or time); ``duplicate_doc_id`` (a second accepted row with one doc_id:
    the first by origin, row number and raw text is kept).

    Text is cut to ``MAX_TEXT_CHARS``; a missing title becomes the text's first line; a
    time without an offset is UTC; ``doc_id`` is the given doc_id, else the document's own
    id, else the first 24 hex digits of sha256(source|url|title|text).
    """
    text = F.substring(_blank_to_null(F.col("text")), 1, MAX_TEXT_CHARS)
    published_raw = _blank_to_null(F.col("published_at"))
    published = published_raw.try_cast("timestamp")
    first_line = F.trim(F.substring_index(text, "\n", 1))
    title = F.coalesce(_blank_to_null(F.col("title")), F.substring(first_line, 1, MAX_TITLE_CHARS))
    url = _blank_to_null(F.col("url"))
    hashed = F.substring(
        F.sha2(F.concat_ws("|", F.col("source"), F.coalesce(url, F.lit("")), title, text), 256), 1, DOC_ID_HEX
    )
    reason = (
        F.when(F.col("reason").isNotNull(), F.col("reason"))
        .when(text.isNull(), F.lit("missing_text"))
        .when(published_raw.isNotNull() & published.isNull(), F.lit("bad_published_at"))
    )
    detail = F.when(F.col("reason").isNotNull(), F.col("detail")).when(
        text.isNotNull() & published_raw.isNotNull() & published.isNull(), published_raw
    )
    cleaned = staged.select(
        "source",
        "origin",
        "row_number",
        "raw",
        F.coalesce(_blank_to_null(F.col("doc_id")), _blank_to_null(F.col("id")), hashed).alias("doc_id"),
        title.alias("title"),
        text.alias("text"),
        url.alias("url"),
        published.alias("published_at"),
        F.array_distinct(
            F.filter(
                F.transform(
                    F.coalesce(F.col("categories"), F.array().cast("array<string>")), lambda c: F.trim(c)
                ),
                lambda c: c != "",
            )
        ).alias("categories"),
        _blank_to_null(F.col("lang")).alias("lang"),
        _blank_to_null(F.col("seed_query")).alias("seed_query"),
        F.coalesce(F.col("fetched_at"), F.lit(loaded_at)).alias("fetched_at"),
        reason.alias("reason"),
        F.substring(detail, 1, MAX_DETAIL_CHARS).alias("detail"),
    )
    accepted = F.col("reason").isNull()
    first = Window.partitionBy("doc_id", accepted).orderBy("origin", "row_number", "raw")
    duplicate = accepted & (F.row_number().over(first) > 1)
    return cleaned.withColumn(
        "detail", F.when(duplicate, F.col("doc_id")).otherwise(F.col("detail"))
    ).withColumn("reason", F.when(duplicate, F.lit("duplicate_doc_id")).otherwise(F.col("reason")))


def to_documents(validated: DataFrame) -> DataFrame:
    """Accepted rows in the ``bronze.trend_documents`` columns."""
    return validated.filter(F.col("reason").isNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in DOCUMENT_SCHEMA.fields]
    )


def to_quarantine(validated: DataFrame, loaded_at: dt.datetime) -> DataFrame:
    """Rejected rows in the ``bronze.trend_documents_quarantine`` columns."""
    rejected = validated.filter(F.col("reason").isNotNull()).withColumns(
        {"raw": F.substring("raw", 1, MAX_RAW_CHARS), "loaded_at": F.lit(loaded_at)}
    )
    return rejected.select(*[F.col(f.name).cast(f.dataType) for f in QUARANTINE_SCHEMA.fields])


def visible_as_of(documents: DataFrame, as_of: dt.date) -> DataFrame:
    """Documents published by the end of ``as_of`` (UTC), and undated ones.

    An evaluation run as of a past date must not read a document published later.
    """
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return documents.filter(F.col("published_at").isNull() | (F.col("published_at") < F.lit(end)))


def _describe(src: TrendSourceConf) -> str:
    where = src.path or src.table or src.url
    return f"{src.kind} {where}" if where else src.kind


def _progress(counts: SourceCounts, src: TrendSourceConf, failures: list[HttpFailure]) -> str:
    line = (
        f"trends: source {src.name} ({_describe(src)}): {counts.read:,} read, "
        f"{counts.accepted:,} accepted, {counts.quarantined:,} quarantined"
    )
    if counts.by_reason:
        line += " (" + ", ".join(f"{r} {n:,}" for r, n in sorted(counts.by_reason.items())) + ")"
    mine = [f for f in failures if f.source == src.name]
    if mine:
        classes: dict[str, int] = {}
        for f in mine:
            classes[f.error_class] = classes.get(f.error_class, 0) + 1
        line += (
            f"; {len(mine)} seed(s) failed ("
            + ", ".join(f"{c} {n}" for c, n in sorted(classes.items()))
            + ")"
        )
    return line


def load_documents(
    spark: SparkSession,
    conf: Config,
    as_of: dt.date,
    seeds: list[dict[str, Any]] | None = None,
    derived: DataFrame | None = None,
) -> DocumentLoad:
    """Load every source of ``conf.trends.sources`` into ``bronze.trend_documents``.

    Parameters
    ----------
    spark : the session.
    conf : configuration; ``trends.sources`` lists the sources.
    as_of : run date: http sources are asked for documents published in the
        ``trends.document_days`` up to it, and ``documents`` holds what is visible then.
    seeds : dicts with ``seed_id``, ``text`` and ``category`` (may be None); only http
        sources use them, one request per seed. None or empty: http sources are skipped.
    derived : documents in :data:`DOCUMENT_SCHEMA` (``doc_id`` and ``fetched_at`` may be
        null) for ``derived`` sources; None: those sources are skipped with a note.

    Returns
    -------
    DocumentLoad
        Visible documents, per-source counts, new-document count and http failures.

    Raises
    ------
    ValueError
        A source configured wrongly (missing folder, http without url, unset key variable...).
    """
    sources = conf.trends.sources
    check_sources(sources)
    loaded_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    since = as_of - dt.timedelta(days=conf.trends.document_days)
    python_rows: list[dict[str, Any]] = []
    frames: list[DataFrame] = []
    failures: list[HttpFailure] = []
    used: list[TrendSourceConf] = []
    for src in sources:
        if src.kind == "folder":
            python_rows.extend(read_folder(src))
        elif src.kind == "delta":
            df, origin = read_delta(spark, conf, src)
            frames.append(staged_from_frame(df, src.name, origin))
        elif src.kind == "derived":
            if derived is None:
                log.info(f"trends: source {src.name} (derived): skipped, no derived documents given")
                continue
            frames.append(staged_from_frame(derived, src.name, "derived"))
        elif src.kind == "http":
            if not seeds:
                log.info(f"trends: source {src.name} ({_describe(src)}): skipped, no seed queries")
                continue
            rows, failed = fetch_http(src, seeds, since, as_of)
            python_rows.extend(rows)
            failures.extend(failed)
        used.append(src)

    staged = spark.createDataFrame([tuple(r[c] for c in STAGED_COLUMNS) for r in python_rows], STAGED_SCHEMA)
    for frame in frames:
        staged = staged.unionByName(frame)
    validated = validate(staged, loaded_at).persist(StorageLevel.MEMORY_AND_DISK)

    counts = {src.name: SourceCounts(src.name, src.kind) for src in used}
    for r in validated.groupBy("source", "reason").count().collect():
        c = counts[r["source"]]
        c.read += r["count"]
        if r["reason"] is None:
            c.accepted += r["count"]
        else:
            c.quarantined += r["count"]
            c.by_reason[r["reason"]] = r["count"]

    inserted = tables.merge_insert_new(to_documents(validated), conf, DOCUMENTS_TABLE, keys=["doc_id"])
    if any(c.quarantined for c in counts.values()):
        tables.append(to_quarantine(validated, loaded_at), conf, QUARANTINE_TABLE)
    validated.unpersist()

    for src in used:
        log.info(_progress(counts[src.name], src, failures))
    log.info(f"trends: {inserted:,} new document(s) in {DOCUMENTS_TABLE}")
    documents = visible_as_of(tables.read(spark, conf, DOCUMENTS_TABLE), as_of)
    return DocumentLoad(documents=documents, sources=counts, inserted=inserted, http_failures=failures)
