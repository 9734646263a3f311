"""Trend documents: external and derived texts the trend agent reads -> ``bronze.trend_documents``.

Every configured source (``trends.sources``, docs/trends.md) yields documents in one
format; the rows are validated together and written with a MERGE on ``doc_id``, so
loading the same files again adds nothing. A record that cannot be a document goes to
``bronze.trend_documents_quarantine`` with a reason: for every source, rows read =
rows accepted + rows quarantined.

Sources:

- ``folder``: ``*.jsonl``, ``*.csv`` and ``*.md`` files under a folder, read on the
  driver. A local corpus is assumed to be small (thousands of documents, tens of MB);
  a bigger one belongs in a Delta table.
- ``delta``: a Delta table (``path``) or a storage table (``table``) with a ``text``
  column and optionally the other fields.
- ``http``: a search adapter speaking the JSON protocol of docs/trends.md, asked once per
  seed query with timeouts, retries and failure records; the API key is read from the
  environment and never written anywhere.
- ``derived``: a DataFrame in the document format computed by the caller.

Example
-------
>>> load = load_documents(spark, conf, dt.date(2011, 12, 9), seeds=[{"seed_id": "s1",
...     "text": "christmas lights", "category": "christmas decorations"}])
>>> load.documents.count()
"""

from __future__ import annotations

import csv
import datetime as dt
import http.client
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from core import tables
from core.config import Config, TrendSourceConf, source_path

log = logging.getLogger(__name__)

DOCUMENTS_TABLE = "bronze.trend_documents"
QUARANTINE_TABLE = "bronze.trend_documents_quarantine"

# Longer texts are cut, not rejected: a long article is still a document.
MAX_TEXT_CHARS = 20_000
# Raw record kept in the quarantine (enough to see what was wrong).
MAX_RAW_CHARS = 2_000
MAX_DETAIL_CHARS = 500
# A document without a title gets the first line of its text, cut to this length.
MAX_TITLE_CHARS = 200
DOC_ID_HEX = 24
FILE_SUFFIXES = (".jsonl", ".csv", ".md")

# http sources: concurrent requests, and the backoff between attempts. Read at call
# time, so tests can shorten the backoff.
HTTP_WORKERS = 4
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
# A Retry-After longer than this fails the seed instead of stalling the whole job.
MAX_RETRY_AFTER_S = 60.0

# Failure classes of http seeds.
TIMEOUT = "timeout"
CONNECTION = "connection_error"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CLIENT_ERROR = "client_error"  # 3xx and 4xx other than 408 / 429: not retried
BAD_RESPONSE = "bad_response"  # a 2xx whose body is not the protocol's JSON: not retried
REQUEST_ERROR = "request_error"  # anything else that went wrong sending: not retried

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
_STAGED_SCHEMA = T.StructType(
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
_STAGED_COLUMNS = [f.name for f in _STAGED_SCHEMA.fields]


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


# ---------------------------------------------------------------------------------------
# Configuration checks


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
            _api_key(src)  # fails now if the variable is missing


def _api_key(src: TrendSourceConf) -> str | None:
    if not src.api_key_env:
        return None
    key = os.environ.get(src.api_key_env)
    if not key:
        # Name the variable, never a value.
        raise ValueError(f"trends source {src.name!r}: environment variable {src.api_key_env} is not set")
    return key


# ---------------------------------------------------------------------------------------
# Records -> staged fields (pure Python: folder files and http answers)


def _cut(text: str | None, limit: int) -> str | None:
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


def _row(source: str, origin: str, row_number: int | None, raw: str, **fields: Any) -> dict[str, Any]:
    row = dict.fromkeys(_STAGED_COLUMNS)
    row.update(source=source, origin=origin, row_number=row_number, raw=_cut(raw, MAX_RAW_CHARS))
    row.update(fields)
    if row["categories"] is None and row["reason"] is None:
        row["categories"] = []
    return row


def parse_jsonl(text: str, source: str, origin: str) -> list[dict[str, Any]]:
    """Staged rows of a JSON-lines file: one per non-blank line (``invalid_json`` if not an object)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(_row(source, origin, n, line, reason="invalid_json", detail=str(e)))
            continue
        if not isinstance(record, dict):
            detail = f"a JSON {type(record).__name__}, not an object"
            rows.append(_row(source, origin, n, line, reason="invalid_json", detail=detail))
            continue
        rows.append(_row(source, origin, n, line, **record_fields(record)))
    return rows


def parse_csv(text: str, source: str, origin: str) -> list[dict[str, Any]]:
    """Staged rows of a CSV file with a header row; ``row_number`` is the line the row ends on."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    names = [h.strip() for h in header]
    rows = []
    try:
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            buf = io.StringIO()
            csv.writer(buf).writerow(values)
            raw = buf.getvalue().rstrip("\r\n")
            if len(values) != len(names):
                detail = f"{len(values)} fields, the header has {len(names)}"
                rows.append(_row(source, origin, reader.line_num, raw, reason="bad_csv_row", detail=detail))
                continue
            # An empty cell is a missing value, as in the JSON formats.
            record = {k: (v if v.strip() else None) for k, v in zip(names, values, strict=True)}
            rows.append(_row(source, origin, reader.line_num, raw, **record_fields(record)))
    except csv.Error as e:
        # The rest of the file cannot be split into rows: keep it as one quarantined record.
        rest = "\n".join(text.splitlines()[reader.line_num - 1 :])
        rows.append(_row(source, origin, reader.line_num, rest, reason="bad_csv_row", detail=str(e)))
    return rows


def _front_matter(content: str) -> tuple[dict[str, Any], str, str | None]:
    """(front matter, body, problem) of a Markdown file."""
    lines = content.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, content, None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            try:
                meta = yaml.safe_load("".join(lines[1:i]))
            except yaml.YAMLError as e:
                return {}, "", f"front matter is not valid YAML: {str(e).splitlines()[0]}"
            if meta is None:
                meta = {}
            if not isinstance(meta, dict):
                return {}, "", f"front matter is a YAML {type(meta).__name__}, not a mapping"
            return meta, "".join(lines[i + 1 :]), None
    return {}, "", "front matter opened with --- is never closed"


def parse_markdown(content: str, source: str, origin: str, stem: str) -> dict[str, Any]:
    """The staged row of one Markdown document.

    The body is the text; the title is the front matter's ``title``, else the first
    ``# `` heading, else ``stem`` (the file name without its extension).
    """
    meta, body, problem = _front_matter(content)
    if problem:
        return _row(source, origin, None, content, reason="invalid_front_matter", detail=problem)
    fields = record_fields({**meta, "text": body})
    if fields["reason"] is None and not (fields["title"] or "").strip():
        heading = next((ln[2:].strip() for ln in body.splitlines() if ln.startswith("# ")), "")
        fields["title"] = heading or stem
    return _row(source, origin, None, content, **fields)


def _visible_file(path: Path, root: Path) -> bool:
    # Hidden and underscore files/folders are tooling (.git, _SUCCESS), not documents.
    parts = path.relative_to(root).parts
    return (
        path.is_file()
        and path.suffix.lower() in FILE_SUFFIXES
        and not any(p.startswith((".", "_")) for p in parts)
    )


def read_folder(src: TrendSourceConf) -> list[dict[str, Any]]:
    """Staged rows of every ``*.jsonl``, ``*.csv`` and ``*.md`` file under the source's folder.

    Folders are read recursively; other files are ignored. A file that is not UTF-8 is
    one quarantined record (``bad_encoding``).
    """
    assert src.path is not None
    root = Path(source_path(src.path))
    rows: list[dict[str, Any]] = []
    for f in sorted(p for p in root.rglob("*") if _visible_file(p, root)):
        origin = str(f)
        data = f.read_bytes()
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raw = data.decode("utf-8", errors="replace")
            rows.append(_row(src.name, origin, None, raw, reason="bad_encoding", detail=str(e)))
            continue
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            rows.extend(parse_jsonl(content, src.name, origin))
        elif suffix == ".csv":
            rows.extend(parse_csv(content, src.name, origin))
        else:
            rows.append(parse_markdown(content, src.name, origin, f.stem))
    return rows


# ---------------------------------------------------------------------------------------
# http sources


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET without the body; a redirect is
    # reported as the 3xx it is instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


def _backoff(retry: int, base_s: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**retry``."""
    ceiling = min(BACKOFF_MAX_S, base_s * 2**retry)
    return random.uniform(ceiling / 2, ceiling)


def _answer_documents(body: str) -> list[Any] | None:
    """The ``documents`` list of a protocol answer, or None if the body is not one."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("documents"), list):
        return None
    return answer["documents"]


def _post(
    src: TrendSourceConf, payload: dict[str, Any], key: str | None, backoff_base_s: float
) -> tuple[list[Any] | None, str | None, str, int]:
    """(documents, error class, detail, attempts) of one seed's request, retried as documented."""
    assert src.url is not None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(payload).encode("utf-8")
    attempts = 0
    for retry in range(src.max_retries + 1):
        attempts += 1
        wait: float | None = None
        request = urllib.request.Request(src.url, data=data, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=src.timeout_s) as response:
                # An adapter that echoes the request must not carry the key into a row.
                body = _scrub(response.read().decode("utf-8", errors="replace"), key)
            documents = _answer_documents(body)
            if documents is not None:
                return documents, None, "", attempts
            # A deterministic adapter bug, not a transient fault: retrying would not help.
            return None, BAD_RESPONSE, f"not the protocol's JSON: {body[:200]!r}", attempts
        except urllib.error.HTTPError as e:
            status = e.code
            detail = f"HTTP {status}"
            e.close()
            if status == 429:
                error, retryable = RATE_LIMITED, True
                wait = _retry_after(e.headers.get("Retry-After"))
            elif status == 408:
                error, retryable = TIMEOUT, True
            elif status >= 500:
                error, retryable = SERVER_ERROR, True
            else:
                error, retryable = CLIENT_ERROR, False
        except TimeoutError as e:
            error, retryable, detail = TIMEOUT, True, f"no answer within {src.timeout_s:g}s ({e})"
        except urllib.error.URLError as e:
            timed_out = isinstance(e.reason, TimeoutError)
            error, retryable = (TIMEOUT if timed_out else CONNECTION), True
            detail = f"{type(e).__name__}: {e.reason}"
        except (OSError, http.client.HTTPException) as e:  # reset / dropped connections, broken HTTP
            error, retryable, detail = CONNECTION, True, f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - a seed's failure must never end the job
            error, retryable, detail = REQUEST_ERROR, False, f"{type(e).__name__}: {e}"
        if not retryable or retry == src.max_retries:
            return None, error, detail, attempts
        if wait is not None and wait > MAX_RETRY_AFTER_S:
            return None, error, f"{detail}, Retry-After {wait:g}s is over {MAX_RETRY_AFTER_S:g}s", attempts
        # Retry-After is a floor; a little jitter keeps concurrent seeds from waking together.
        time.sleep(wait + random.uniform(0, 0.1) if wait is not None else _backoff(retry, backoff_base_s))
    raise AssertionError("unreachable")


def fetch_http(
    src: TrendSourceConf,
    seeds: list[dict[str, Any]],
    since: dt.date,
    until: dt.date,
    backoff_base_s: float | None = None,
) -> tuple[list[dict[str, Any]], list[HttpFailure]]:
    """Ask an http source once per seed; (staged rows, failure records). Never raises for a seed.

    Each document's ``row_number`` is its position among all documents of this source
    (seed order, then answer order), so duplicates resolve the same way on every run.
    """
    key = _api_key(src)
    base = BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s

    def ask(seed: dict[str, Any]) -> tuple[list[Any] | None, str | None, str, int, dt.datetime]:
        payload = {
            "query": seed["text"],
            "category": seed.get("category"),
            "since": since.isoformat(),
            "until": until.isoformat(),
            "limit": src.per_query,
        }
        documents, error, detail, attempts = _post(src, payload, key, base)
        return documents, error, detail, attempts, dt.datetime.now(dt.timezone.utc)

    if not seeds:
        return [], []
    with ThreadPoolExecutor(max_workers=min(HTTP_WORKERS, len(seeds))) as pool:
        answers = list(pool.map(ask, seeds))
    rows: list[dict[str, Any]] = []
    failures: list[HttpFailure] = []
    position = 0
    for seed, (documents, error, detail, attempts, fetched_at) in zip(seeds, answers, strict=True):
        if documents is None:
            failures.append(
                HttpFailure(
                    source=src.name,
                    seed_id=seed.get("seed_id"),
                    seed_query=seed["text"],
                    error_class=error or BAD_RESPONSE,
                    attempts=attempts,
                    detail=_scrub(detail, key)[:MAX_DETAIL_CHARS],
                )
            )
            continue
        for doc in documents:
            position += 1
            raw = json.dumps(doc, ensure_ascii=False)
            common = {"seed_query": seed["text"], "fetched_at": fetched_at}
            if isinstance(doc, dict):
                rows.append(_row(src.name, src.url or "", position, raw, **record_fields(doc), **common))
            else:
                detail = f"a JSON {type(doc).__name__}, not an object"
                rows.append(
                    _row(
                        src.name, src.url or "", position, raw, reason="invalid_json", detail=detail, **common
                    )
                )
    return rows, failures


# ---------------------------------------------------------------------------------------
# DataFrame sources (delta, derived)


def staged_from_frame(df: DataFrame, source: str, origin: str) -> DataFrame:
    """Staged rows of a DataFrame with a ``text`` column and optionally the other fields.

    ``doc_id`` (kept as it is) or ``id`` (the document's own id), title, url, lang,
    seed_query: any type, read as text; ``published_at``: timestamp, date or ISO text;
    ``categories``: array of strings or one ``|``-separated string. A column of another
    type is a configuration error (``ValueError``), not a row problem.
    """
    types = {f.name: f.dataType for f in df.schema.fields}
    if "text" not in types:
        raise ValueError(f"trends source {source!r}: {origin} has no text column (columns: {sorted(types)})")

    def text_col(name: str) -> Column:
        return F.col(name).cast("string") if name in types else F.lit(None).cast("string")

    published = types.get("published_at")
    if published is not None and not isinstance(
        published, (T.TimestampType, T.TimestampNTZType, T.DateType, T.StringType)
    ):
        raise ValueError(f"trends source {source!r}: published_at is {published.simpleString()}, not a time")
    cats = types.get("categories")
    if cats is None:
        categories = F.lit(None).cast("array<string>")
    elif isinstance(cats, T.StringType):
        categories = F.split(F.col("categories"), r"\|")
    elif isinstance(cats, T.ArrayType) and isinstance(cats.elementType, T.StringType):
        categories = F.col("categories")
    else:
        raise ValueError(
            f"trends source {source!r}: categories is {cats.simpleString()}, not array<string> or string"
        )
    fetched = types.get("fetched_at")
    fetched_at = (
        F.col("fetched_at").cast("timestamp")
        if isinstance(fetched, (T.TimestampType, T.TimestampNTZType))
        else F.lit(None).cast("timestamp")
    )
    return df.select(
        F.lit(source).alias("source"),
        F.lit(origin).alias("origin"),
        F.lit(None).cast("long").alias("row_number"),
        F.substring(F.to_json(F.struct(*[F.col(c) for c in df.columns])), 1, MAX_RAW_CHARS).alias("raw"),
        text_col("doc_id").alias("doc_id"),
        text_col("id").alias("id"),
        text_col("title").alias("title"),
        text_col("text").alias("text"),
        text_col("url").alias("url"),
        text_col("published_at").alias("published_at"),
        categories.alias("categories"),
        text_col("lang").alias("lang"),
        text_col("seed_query").alias("seed_query"),
        fetched_at.alias("fetched_at"),
        F.lit(None).cast("string").alias("reason"),
        F.lit(None).cast("string").alias("detail"),
    )


def _read_delta(spark: SparkSession, conf: Config, src: TrendSourceConf) -> tuple[DataFrame, str]:
    if src.table:
        if not tables.exists(spark, conf, src.table):
            raise ValueError(f"trends source {src.name!r}: table {src.table} does not exist")
        return tables.read(spark, conf, src.table), f"table {src.table}"
    assert src.path is not None
    path = source_path(src.path)
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        raise ValueError(f"trends source {src.name!r}: {src.path} is not a Delta table")
    return spark.read.format("delta").load(path), src.path


# ---------------------------------------------------------------------------------------
# Validation and output (DataFrame -> DataFrame)


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


# ---------------------------------------------------------------------------------------
# Entry point


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
            df, origin = _read_delta(spark, conf, src)
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

    staged = spark.createDataFrame(
        [tuple(r[c] for c in _STAGED_COLUMNS) for r in python_rows], _STAGED_SCHEMA
    )
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
