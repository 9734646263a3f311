"""The trend documents' formats: the document and quarantine schemas, the staged row
every source yields, and the mapping of one record's fields onto it."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import types as T

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000
# Raw record kept in the quarantine (enough to see what was wrong).


MAX_RAW_CHARS = 2_000


MAX_DETAIL_CHARS = 500
# A document without a title gets the first line of its text, cut to this length.


MAX_TITLE_CHARS = 200


DOC_ID_HEX = 24


DOCUMENT_SCHEMA = T.StructType(
    [
        T.StructField("doc_id", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("title", T.StringType(), False),
        T.StructField("text", T.StringType(), False),
        T.StructField("url", T.StringType(), True),
        # Null = undated: visible to every run date.
        T.StructField("published_at", T.TimestampType(), True),
        T.StructField("categories", T.ArrayType(T.StringType()), False),
        T.StructField("lang", T.StringType(), True),
        # The seed query an http source answered; null for other sources.
        T.StructField("seed_query", T.StringType(), True),
        T.StructField("fetched_at", T.TimestampType(), False),
    ]
)


DOCUMENT_COLUMNS = [f.name for f in DOCUMENT_SCHEMA.fields]


QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), False),
        # File, url, Delta path or table the record came from.
        T.StructField("origin", T.StringType(), True),
        # Line of a .jsonl / .csv file, position of an http answer's document; else null.
        T.StructField("row_number", T.LongType(), True),
        T.StructField("raw", T.StringType(), True),
        T.StructField("reason", T.StringType(), False),
        T.StructField("detail", T.StringType(), True),
        T.StructField("seed_query", T.StringType(), True),
        T.StructField("loaded_at", T.TimestampType(), False),
    ]
)

# One row per input record, every source alike, before validation. ``reason`` is set
# where the reader already knows the record is unusable (invalid JSON, ...).


STAGED_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), False),
        T.StructField("origin", T.StringType(), True),
        T.StructField("row_number", T.LongType(), True),
        T.StructField("raw", T.StringType(), True),
        T.StructField("doc_id", T.StringType(), True),  # a final id (derived / Delta doc_id)
        T.StructField("id", T.StringType(), True),  # the document's own id
        T.StructField("title", T.StringType(), True),
        T.StructField("text", T.StringType(), True),
        T.StructField("url", T.StringType(), True),
        T.StructField("published_at", T.StringType(), True),  # parsed in `validate`
        T.StructField("categories", T.ArrayType(T.StringType()), True),
        T.StructField("lang", T.StringType(), True),
        T.StructField("seed_query", T.StringType(), True),
        T.StructField("fetched_at", T.TimestampType(), True),
        T.StructField("reason", T.StringType(), True),
        T.StructField("detail", T.StringType(), True),
    ]
)


STAGED_COLUMNS = [f.name for f in STAGED_SCHEMA.fields]


@dataclass
class SourceCounts:
    """What one source gave in one load: ``read == accepted + quarantined``."""

    name: str
    kind: str
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class HttpFailure:
    """A seed an http source never answered: it yields no documents."""

    source: str
    seed_id: str | None
    seed_query: str
    error_class: str
    attempts: int
    detail: str


def cut(text: str | None, limit: int) -> str | None:
    return text[:limit] if text is not None else None


def _categories(value: Any) -> tuple[list[str] | None, str | None]:
    """(categories, problem): a list of strings, or one string separated by ``|``."""
    if value is None:
        return [], None
    if isinstance(value, str):
        return [c.strip() for c in value.split("|") if c.strip()], None
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [c.strip() for c in value if c.strip()], None
    return None, f"categories must be a list of strings or a '|'-separated string, got {value!r}"


def record_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """Staged fields of one document record (a JSON object, YAML front matter, a CSV row).

    Returns the keys id, title, text, url, published_at, categories, lang, reason and
    detail; ``reason`` is set (``bad_field``, ``bad_categories``, ``bad_published_at``)
    when a field has the wrong type. Unknown keys are ignored. Missing text and
    unparseable dates are left to :func:`validate`, which checks every source alike.
    """
    out: dict[str, Any] = {"id": None, "categories": [], "reason": None, "detail": None}

    def reject(reason: str, detail: str) -> dict[str, Any]:
        return {**out, "reason": reason, "detail": detail[:MAX_DETAIL_CHARS]}

    for name in ("title", "text", "url", "lang"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return reject("bad_field", f"{name} must be a string, got {type(value).__name__}")
        out[name] = value
    own_id = record.get("id")
    if isinstance(own_id, int) and not isinstance(own_id, bool):
        own_id = str(own_id)
    if own_id is not None and not isinstance(own_id, str):
        return reject("bad_field", f"id must be a string or an integer, got {type(own_id).__name__}")
    out["id"] = own_id
    published = record.get("published_at")
    # YAML front matter turns 2024-05-01 into a date: take it back as ISO text.
    if isinstance(published, (dt.date, dt.datetime)):
        published = published.isoformat()
    if published is not None and not isinstance(published, str):
        return reject("bad_published_at", f"published_at must be an ISO date or time, got {published!r}")
    out["published_at"] = published
    cats, problem = _categories(record.get("categories"))
    if problem:
        return reject("bad_categories", problem)
    out["categories"] = cats
    return out


def staged_row(source: str, origin: str, row_number: int | None, raw: str, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(STAGED_COLUMNS)
    row.update(source=source, origin=origin, row_number=row_number, raw=cut(raw, MAX_RAW_CHARS))
    row.update(fields)
    if row["categories"] is None and row["reason"] is None:
        row["categories"] = []
    return row
