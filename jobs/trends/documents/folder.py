"""The ``folder`` source: ``*.jsonl``, ``*.csv`` and ``*.md`` files under a folder, read on
the driver."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from core.config import TrendSourceConf, source_path
from jobs.trends.documents.records import (
    record_fields,
    staged_row,
)

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".csv", ".md")

# http sources: concurrent requests, and the backoff between attempts. Read at call
# time, so tests can shorten the backoff.


def parse_jsonl(text: str, source: str, origin: str) -> list[dict[str, Any]]:
    """Staged rows of a JSON-lines file: one per non-blank line (``invalid_json`` if not an object)."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(staged_row(source, origin, n, line, reason="invalid_json", detail=str(e)))
            continue
        if not isinstance(record, dict):
            detail = f"a JSON {type(record).__name__}, not an object"
            rows.append(staged_row(source, origin, n, line, reason="invalid_json", detail=detail))
            continue
        rows.append(staged_row(source, origin, n, line, **record_fields(record)))
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
                rows.append(
                    staged_row(source, origin, reader.line_num, raw, reason="bad_csv_row", detail=detail)
                )
                continue
            # An empty cell is a missing value, as in the JSON formats.
            record = {k: (v if v.strip() else None) for k, v in zip(names, values, strict=True)}
            rows.append(staged_row(source, origin, reader.line_num, raw, **record_fields(record)))
    except csv.Error as e:
        # The rest of the file cannot be split into rows: keep it as one quarantined record.
        rest = "\n".join(text.splitlines()[reader.line_num - 1 :])
        rows.append(staged_row(source, origin, reader.line_num, rest, reason="bad_csv_row", detail=str(e)))
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
        return staged_row(source, origin, None, content, reason="invalid_front_matter", detail=problem)
    fields = record_fields({**meta, "text": body})
    if fields["reason"] is None and not (fields["title"] or "").strip():
        heading = next((ln[2:].strip() for ln in body.splitlines() if ln.startswith("# ")), "")
        fields["title"] = heading or stem
    return staged_row(source, origin, None, content, **fields)


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
            rows.append(staged_row(src.name, origin, None, raw, reason="bad_encoding", detail=str(e)))
            continue
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            rows.extend(parse_jsonl(content, src.name, origin))
        elif suffix == ".csv":
            rows.extend(parse_csv(content, src.name, origin))
        else:
            rows.append(parse_markdown(content, src.name, origin, f.stem))
    return rows
