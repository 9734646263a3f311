"""One retry policy for every HTTP call the project makes: the LLM client
(``udfs.llm.client``, on the executors) and the trend documents' http source
(``jobs.trends.documents.http``, on the driver).

- What is retried: 429 (honouring ``Retry-After``), 408, 409, 5xx, timeouts, dropped
  connections; a 2xx whose body is not the protocol's is the caller's to judge. Any other
  status (3xx, 4xx) is not: asking again would get the same answer.
- How long to wait: ``Retry-After`` when the server sent one (a floor, plus a little
  jitter so that concurrent callers do not wake together), else exponential backoff with
  full jitter, ``uniform(0, min(max_s, initial_s * 2**retry))``.
- Secrets never reach a message: :func:`scrub`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Error classes, as stored in failure rows.
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION = "connection_error"
BAD_RESPONSE = "bad_response"  # a 2xx whose body is not the protocol's answer
CLIENT_ERROR = "client_error"  # 3xx, 4xx other than 408 / 409 / 429: not retried


def status_class(status: int) -> tuple[str, bool]:
    """(error class, retryable) of an HTTP status that is not a success."""
    if status == 429:
        return RATE_LIMITED, True
    if status == 408:
        return TIMEOUT, True
    if status == 409 or status >= 500:
        return SERVER_ERROR, True
    return CLIENT_ERROR, False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header; None when absent or an HTTP date (the caller
    then backs off)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped at ``max_s``."""

    initial_s: float
    max_s: float

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        rng = rng or random
        if retry_after is not None:
            return retry_after + rng.uniform(0, 0.1 * retry_after + 0.05)
        return rng.uniform(0, min(self.max_s, self.initial_s * 2**retry))


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text
