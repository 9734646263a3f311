"""The ``http`` source: a search adapter speaking the JSON protocol of docs/trends.md, asked
once per seed query, with the retry policy of ``core.retry``; the API key is read from the
environment and never written anywhere."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.config import TrendSourceConf
from core.retry import (
    BAD_RESPONSE,
    CONNECTION,
    TIMEOUT,
    Backoff,
    parse_retry_after,
    scrub,
    status_class,
)
from jobs.trends.documents.records import (
    MAX_DETAIL_CHARS,
    HttpFailure,
    record_fields,
    staged_row,
)

log = logging.getLogger(__name__)

HTTP_WORKERS = 4


BACKOFF_BASE_S = 0.5


BACKOFF_MAX_S = 30.0
# A Retry-After longer than this fails the seed instead of stalling the whole job.


MAX_RETRY_AFTER_S = 60.0

# Failure classes of http seeds.


REQUEST_ERROR = "request_error"  # anything else that went wrong sending: not retried


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET without the body; a redirect is
    # reported as the 3xx it is instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def api_key(src: TrendSourceConf) -> str | None:
    if not src.api_key_env:
        return None
    key = os.environ.get(src.api_key_env)
    if not key:
        # Name the variable, never a value.
        raise ValueError(f"trends source {src.name!r}: environment variable {src.api_key_env} is not set")
    return key


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
                body = scrub(response.read().decode("utf-8", errors="replace"), key)
            documents = _answer_documents(body)
            if documents is not None:
                return documents, None, "", attempts
            # A deterministic adapter bug, not a transient fault: retrying would not help.
            return None, BAD_RESPONSE, f"not the protocol's JSON: {body[:200]!r}", attempts
        except urllib.error.HTTPError as e:
            status = e.code
            detail = f"HTTP {status}"
            e.close()
            error, retryable = status_class(status)
            if status == 429:
                wait = parse_retry_after(e.headers.get("Retry-After"))
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
        time.sleep(Backoff(backoff_base_s, BACKOFF_MAX_S).delay(retry, wait))
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
    key = api_key(src)
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
                    detail=scrub(detail, key)[:MAX_DETAIL_CHARS],
                )
            )
            continue
        for doc in documents:
            position += 1
            raw = json.dumps(doc, ensure_ascii=False)
            common = {"seed_query": seed["text"], "fetched_at": fetched_at}
            if isinstance(doc, dict):
                rows.append(
                    staged_row(src.name, src.url or "", position, raw, **record_fields(doc), **common)
                )
            else:
                detail = f"a JSON {type(doc).__name__}, not an object"
                rows.append(
                    staged_row(
                        src.name, src.url or "", position, raw, reason="invalid_json", detail=detail, **common
                    )
                )
    return rows, failures
