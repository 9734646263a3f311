"""A rate limit shared by every task of a Spark job, in requests and tokens per minute.

A limit applied per task is multiplied by the number of tasks running at once, and that
number changes during a job. So the budget lives in one place: a tiny TCP service on the
driver (:class:`RateLimitServer`) that hands out *reservations*. A task asks "1 request and
~N tokens" and gets back how long to wait before sending; the server has already booked
that slot, so nobody polls and nobody overshoots.

The schedule is a virtual clock per budget (the GCRA idea): each reservation takes the
next free slot, ``60 / limit`` seconds per request (or per token) after the previous one.
Requests therefore leave evenly spaced, and over any window the rate stays at the limit.

If a task cannot reach the driver (a firewall between executors and driver), it falls
back to an even share of the limit per task (``limit / tasks``) and logs a warning: still
within the limit, only less adaptive.

Protocol: one line per reservation, ``R <requests> <tokens>\\n``; the answer is the wait
in seconds, ``0.125\\n``.

Example
-------
>>> with RateLimitServer(requests_per_minute=600) as server:
...     limiter = RemoteRateLimiter(server.address)       # in a task
...     asyncio.run(limiter.acquire(tokens=700))
"""

from __future__ import annotations

import asyncio
import logging
import socketserver
import threading
import time

log = logging.getLogger(__name__)


class Schedule:
    """Virtual-clock schedule of one or two budgets (requests/min, tokens/min); thread-safe."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self.request_interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.token_interval = 60.0 / tokens_per_minute if tokens_per_minute else 0.0
        self._next_request = 0.0
        self._next_token = 0.0
        self._lock = threading.Lock()

    def reserve(self, requests: int = 1, tokens: int = 0, now: float | None = None) -> float:
        """Book the next slot; returns the seconds to wait before sending (0 = now)."""
        with self._lock:
            now = time.monotonic() if now is None else now
            start_r = max(self._next_request, now)
            start_t = max(self._next_token, now)
            start = max(start_r, start_t)
            # Both budgets are consumed from the moment the request actually goes.
            if self.request_interval:
                self._next_request = start + requests * self.request_interval
            if self.token_interval:
                self._next_token = start + tokens * self.token_interval
            return start - now


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        schedule: Schedule = self.server.schedule  # type: ignore[attr-defined]
        for line in self.rfile:
            parts = line.split()
            if len(parts) != 3 or parts[0] != b"R":
                self.wfile.write(b"ERR\n")
                continue
            wait = schedule.reserve(int(parts[1]), int(parts[2]))
            self.wfile.write(f"{wait:.6f}\n".encode())


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RateLimitServer:
    """The shared budget, served from the driver for the duration of one agent run."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.schedule = Schedule(requests_per_minute, tokens_per_minute)
        self._server = _Server((host, port), _Handler)
        self._server.schedule = self.schedule  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="rate-limit", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> RateLimitServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RateLimitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoRateLimit:
    """No budget: every reservation is immediate."""

    async def acquire(self, tokens: int = 0) -> float:
        return 0.0

    async def close(self) -> None:
        return None


class LocalRateLimiter:
    """A budget inside one process (the fallback share of a task, or a plain script)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.schedule = Schedule(requests_per_minute, tokens_per_minute)

    async def acquire(self, tokens: int = 0) -> float:
        wait = self.schedule.reserve(1, tokens)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def close(self) -> None:
        return None


class RemoteRateLimiter:
    """Client of :class:`RateLimitServer`, for one event loop (one per task batch)."""

    def __init__(
        self,
        address: str,
        fallback_requests_per_minute: float | None = None,
        fallback_tokens_per_minute: float | None = None,
        connect_timeout_s: float = 5.0,
    ):
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self._fallback_limits = (fallback_requests_per_minute, fallback_tokens_per_minute)
        self._fallback: LocalRateLimiter | None = None
        self._connect_timeout_s = connect_timeout_s
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None

    async def _reserve(self, tokens: int) -> float:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self._connect_timeout_s
                )
            reader, writer = self._conn
            writer.write(f"R 1 {int(tokens)}\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self._connect_timeout_s)
            if not line:
                raise ConnectionError("rate-limit server closed the connection")
            return float(line)

    async def acquire(self, tokens: int = 0) -> float:
        """Wait for a slot for one request of about ``tokens`` tokens; returns the wait."""
        if self._fallback is None:
            try:
                wait = await self._reserve(tokens)
            except (OSError, asyncio.TimeoutError, ValueError) as e:
                log.warning(
                    "rate-limit server %s:%s unreachable (%s): using this task's share of the limit",
                    self.host,
                    self.port,
                    type(e).__name__,
                )
                self._conn = None
                self._fallback = LocalRateLimiter(*self._fallback_limits)
        if self._fallback is not None:
            return await self._fallback.acquire(tokens)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None
