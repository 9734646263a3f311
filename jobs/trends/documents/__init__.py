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

from jobs.trends.documents.folder import parse_csv, parse_jsonl, parse_markdown, read_folder
from jobs.trends.documents.frames import staged_from_frame
from jobs.trends.documents.http_search import fetch_http
from jobs.trends.documents.load import (
    DOCUMENTS_TABLE,
    QUARANTINE_TABLE,
    DocumentLoad,
    load_documents,
    validate,
    visible_as_of,
)
from jobs.trends.documents.records import DOCUMENT_SCHEMA, MAX_TEXT_CHARS, record_fields

__all__ = [
    "DOCUMENTS_TABLE",
    "DOCUMENT_SCHEMA",
    "MAX_TEXT_CHARS",
    "QUARANTINE_TABLE",
    "DocumentLoad",
    "fetch_http",
    "load_documents",
    "parse_csv",
    "parse_jsonl",
    "parse_markdown",
    "read_folder",
    "record_fields",
    "staged_from_frame",
    "validate",
    "visible_as_of",
]
