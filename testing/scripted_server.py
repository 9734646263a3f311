"""A small OpenAI-compatible HTTP server whose answers, latency and failures are scripted.

It speaks the real chat-completions protocol, so the unmodified ``openai`` client (and
anything built on it) can be tested and benchmarked against it without a network, a key
or a bill: every answer comes from a ``responder`` function, every request can be delayed
by a fixed or computed latency, and a chosen share of requests fails the way real
endpoints fail (429 with ``Retry-After``, 500, a hang past any client timeout, a body that
is not JSON or is cut short, an answer that is not JSON or has the wrong shape). A cap on
concurrent completions either queues or rejects the excess, and thread-safe counters
record what happened (outcomes, peak concurrency, request bodies).

Fault draws are deterministic: a request's fault depends only on the seed, a hash of its
messages and how many times those same messages were seen before, never on thread timing.
A retry of the same prompt therefore draws again and can succeed, and a replay with the
same seed gives the same outcomes.

Only the standard library is used. Handlers run in daemon threads, so a hanging request
never blocks :meth:`ScriptedLLMServer.stop`.

Example
-------
>>> import openai
>>> from testing.scripted_server import ScriptedLLMServer
>>> with ScriptedLLMServer(latency_s=0.2, faults={"rate_limit": 0.1}, seed=1) as srv:
...     client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
...     reply = client.chat.completions.create(
...         model="scripted-model", messages=[{"role": "user", "content": "hi"}]
...     )
...     reply.choices[0].message.content
'{"echo": "hi"}'

From the command line (the first stdout line is the base URL)::

    python -m testing.scripted_server --port 0 --latency-ms 200 --cap 32 \\
        --faults rate_limit=0.2,server_error=0.1
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import math
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "FAULTS",
    "ScriptedLLMServer",
    "default_responder",
    "estimate_tokens",
    "message_text",
    "main",
]

#: The fault names understood by ``faults``.
FAULTS: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "hang",
    "non_json_body",
    "truncated_json_body",
    "invalid_json",
    "wrong_schema",
)

#: Assistant content returned by the ``invalid_json`` fault.
INVALID_JSON_CONTENT = 'Sure! {"short_title": "red'
#: Assistant content returned by the ``wrong_schema`` fault.
WRONG_SCHEMA_CONTENT = '{"unexpected": [1, 2]}'
_NON_JSON_BODY = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>\n"

FaultSpec = Mapping[str, float] | Callable[[int, dict, int], "str | None"]


def _content_parts_text(content: Any) -> list[str]:
    """The text pieces of one message ``content`` (a string or a list of content parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message, its text parts joined by newlines.

    Parameters
    ----------
    message : Mapping
        A chat message; ``content`` is a string or a list of content parts
        (``{"type": "text", "text": ...}``, ``{"type": "image_url", ...}``); non-text parts
        are ignored.

    Returns
    -------
    str
        The message text, ``""`` when it has none.
    """
    return "\n".join(_content_parts_text(message.get("content")))


def estimate_tokens(text_chars: int) -> int:
    """Token estimate used for ``usage``: ``ceil(chars / 4)``.

    Parameters
    ----------
    text_chars : int
        Number of characters.

    Returns
    -------
    int
        The estimated number of tokens.
    """
    return math.ceil(text_chars / 4)


def default_responder(body: dict[str, Any]) -> str:
    """Default answer: ``{"echo": <text of the last user message>}`` as JSON.

    Parameters
    ----------
    body : dict
        The chat-completions request body.

    Returns
    -------
    str
        The assistant content.
    """
    messages = body.get("messages") or []
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = message_text(message)
            break
    return json.dumps({"echo": last_user})


def _messages_digest(body: Mapping[str, Any]) -> str:
    """A stable hash of a request's messages (roles, texts and other parts such as images)."""
    messages = body.get("messages")
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _uniform(seed: int, digest: str, attempt: int) -> float:
    """A uniform number in [0, 1) derived from (seed, messages digest, attempt)."""
    h = hashlib.sha256(f"{seed}:{digest}:{attempt}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _format_seconds(value: float) -> str:
    """``Retry-After`` value: ``0.2`` -> ``"0.2"``, ``1.0`` -> ``"1"``."""
    return f"{value:g}"


class _HTTPServer(http.server.ThreadingHTTPServer):
    """Threading HTTP server with daemon handler threads, a deep backlog and no DNS look-up."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ScriptedLLMServer):
        self.owner = owner
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, which can stall on a DNS look-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.owner._stopping.is_set():
            return  # client went away, or the server is stopping
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Request handler; all state lives on the owning :class:`ScriptedLLMServer`."""

    protocol_version = "HTTP/1.1"
    server_version = "ScriptedLLM/1.0"
    disable_nagle_algorithm = True
    server: _HTTPServer
    #: called just before a response is written (set per completion request)
    before_send: Callable[[], None] | None = None

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if self.before_send is not None:
            self.before_send()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), headers=headers)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _authorized(self) -> bool:
        key = self.server.owner.api_key
        if key is None:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {key}"

    def _send_unauthorized(self) -> None:
        self._send_json(
            401,
            _error_body(
                "Incorrect API key provided. You can find your API key in the server configuration.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        )

    def _send_not_found(self) -> None:
        self._send_json(
            404,
            _error_body(
                f"Unknown request URL: {self.command} {self._path()}.", "invalid_request_error", "unknown_url"
            ),
        )

    # -- endpoints ---------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self._path()
        if path == "/v1/models":
            if not self._authorized():
                self._send_unauthorized()
                return
            self._send_json(200, owner._models_payload())
        elif path == "/v1/_stats":
            include_bodies = "bodies=1" in self.path.partition("?")[2].split("&")
            self._send_json(200, owner.stats(include_bodies=include_bodies))
        else:
            self._send_not_found()

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        path = self._path()
        if path == "/v1/chat/completions":
            try:
                owner._handle_completion(self, raw)
            finally:
                self.before_send = None
        elif path == "/v1/_reset":
            owner.reset()
            self._send_json(200, {"ok": True})
        else:
            self._send_not_found()


class ScriptedLLMServer:
    """An OpenAI-compatible chat-completions server with scripted answers, latency and faults.

    Parameters
    ----------
    host : str
        Interface to listen on.
    port : int
        Port; ``0`` picks a free one (see :attr:`port` once started).
    model : str
        Model id listed by ``GET /v1/models`` and answered when a request names none.
    latency_s : float or callable
        Seconds every completion takes once it has a slot (faults included), or
        ``callable(body) -> float``.
    responder : callable, optional
        ``responder(body) -> str``: the assistant content of a normal answer. Defaults to
        :func:`default_responder`. An exception in it gives a 500 (outcome
        ``"responder_error"``).
    faults : dict or callable, optional
        ``{fault_name: probability}`` (probabilities sum to at most 1, names from
        :data:`FAULTS`), drawn per request from (seed, hash of the messages, attempt); or
        ``callable(request_no, body, attempt) -> fault_name | None`` where ``request_no``
        counts completion requests from 0 and ``attempt`` is how many times the same
        messages were seen before.
    concurrency_cap : int, optional
        Most completions processed at once (latency included).
    cap_mode : {"queue", "reject"}
        Beyond the cap, wait for a slot (``"queue"``) or answer 429 with ``Retry-After``
        (``"reject"``, outcome ``"cap_rejected"``).
    api_key : str, optional
        When set, requests must carry ``Authorization: Bearer <api_key>`` or get 401
        (outcome ``"unauthorized"``). The control endpoints ``/v1/_stats`` and
        ``/v1/_reset`` need no key.
    seed : int
        Seed of the fault draws.
    record_bodies : bool
        Keep every received completion request body in :attr:`bodies`.
    retry_after_s : float
        ``Retry-After`` value of 429 answers.
    hang_s : float
        How long the ``hang`` fault waits before answering normally.
    max_output_tokens : int, optional
        The server's own cap on an answer's tokens (4 characters each); with the request's
        ``max_tokens``, the smaller cuts a longer answer off (``finish_reason: length``).

    Attributes
    ----------
    count : int
        Completion requests received, all outcomes.
    by_outcome : dict of str to int
        Outcome name -> number of requests: ``"ok"``, a fault name, ``"cap_rejected"``,
        ``"unauthorized"``, ``"bad_request"``, ``"responder_error"``.
    max_concurrent : int
        Peak number of completions in flight (holding a slot).
    in_flight : int
        Completions in flight now.
    first_request_at, last_response_at : float or None
        ``time.time()`` of the first completion request received and of the last
        completion response sent.
    bodies : list of dict
        Received request bodies as sent (when ``record_bodies``).
    auth_ok : int
        Requests whose key matched (when ``api_key`` is set).

    Examples
    --------
    >>> with ScriptedLLMServer(faults={"server_error": 0.5}, seed=3) as srv:
    ...     srv.base_url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: str = "scripted-model",
        latency_s: float | Callable[[dict], float] = 0.0,
        responder: Callable[[dict], str] | None = None,
        faults: FaultSpec | None = None,
        concurrency_cap: int | None = None,
        cap_mode: str = "queue",
        api_key: str | None = None,
        seed: int = 0,
        record_bodies: bool = True,
        retry_after_s: float = 0.2,
        hang_s: float = 30.0,
        max_output_tokens: int | None = None,
    ):
        if cap_mode not in ("queue", "reject"):
            raise ValueError(f"cap_mode must be 'queue' or 'reject', not {cap_mode!r}")
        if concurrency_cap is not None and concurrency_cap < 1:
            raise ValueError("concurrency_cap must be at least 1")
        if faults is not None and not callable(faults):
            faults = dict(faults)
            unknown = sorted(set(faults) - set(FAULTS))
            if unknown:
                raise ValueError(f"unknown fault names {unknown}; known: {list(FAULTS)}")
            if any(p < 0 for p in faults.values()):
                raise ValueError("fault probabilities must be non-negative")
            if sum(faults.values()) > 1 + 1e-9:
                raise ValueError("fault probabilities must sum to at most 1")
        self.host = host
        self._requested_port = port
        self.model = model
        self.latency_s = latency_s
        self.responder = responder or default_responder
        self.faults = faults
        self.concurrency_cap = concurrency_cap
        self.cap_mode = cap_mode
        self.api_key = api_key
        self.seed = seed
        self.record_bodies = record_bodies
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.max_output_tokens = max_output_tokens

        self._lock = threading.Lock()
        self._slots = threading.Semaphore(concurrency_cap) if concurrency_cap else None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._seen: dict[str, int] = {}
        self._request_no = 0
        self._zero_counters()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ScriptedLLMServer:
        """Bind and serve in a background daemon thread.

        Returns
        -------
        ScriptedLLMServer
            ``self``.
        """
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"scripted-llm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; returns promptly even with hanging requests."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port listened on (the one picked when ``port=0``)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``, the ``base_url`` for the ``openai`` client."""
        return f"http://{self.host}:{self.port}/v1"

    # -- counters ----------------------------------------------------------------------

    def _zero_counters(self) -> None:
        self.count = 0
        self.by_outcome: dict[str, int] = {}
        self.max_concurrent = 0
        self.in_flight = 0
        self.first_request_at: float | None = None
        self.last_response_at: float | None = None
        self.bodies: list[dict[str, Any]] = []
        self.auth_ok = 0

    def reset(self) -> None:
        """Zero the counters, forget recorded bodies and the attempt history of messages."""
        with self._lock:
            in_flight = self.in_flight
            self._zero_counters()
            self.in_flight = in_flight
            self._seen.clear()
            self._request_no = 0

    def stats(self, include_bodies: bool = False) -> dict[str, Any]:
        """A snapshot of the counters (what ``GET /v1/_stats`` answers).

        Parameters
        ----------
        include_bodies : bool
            Include the recorded request bodies (``GET /v1/_stats?bodies=1``).

        Returns
        -------
        dict
            ``count``, ``by_outcome``, ``max_concurrent``, ``in_flight``,
            ``first_request_at``, ``last_response_at``, ``auth_ok``, ``n_bodies`` and,
            if asked, ``bodies``.
        """
        with self._lock:
            snapshot: dict[str, Any] = {
                "count": self.count,
                "by_outcome": dict(self.by_outcome),
                "max_concurrent": self.max_concurrent,
                "in_flight": self.in_flight,
                "first_request_at": self.first_request_at,
                "last_response_at": self.last_response_at,
                "auth_ok": self.auth_ok,
                "n_bodies": len(self.bodies),
            }
            if include_bodies:
                snapshot["bodies"] = list(self.bodies)
        return snapshot

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _outcome(self, name: str) -> None:
        with self._lock:
            self.by_outcome[name] = self.by_outcome.get(name, 0) + 1

    def _responded(self) -> None:
        now = time.time()
        with self._lock:
            self.last_response_at = now

    # -- payloads ----------------------------------------------------------------------

    def _models_payload(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}],
        }

    def _completion_payload(self, body: dict[str, Any], content: str, request_no: int) -> dict[str, Any]:
        messages = body.get("messages") or []
        prompt_chars = sum(
            len(text)
            for m in messages
            if isinstance(m, dict)
            for text in _content_parts_text(m.get("content"))
        )
        prompt_tokens = estimate_tokens(prompt_chars)
        # As a real server does: generation stops at the request's max_tokens or the server's
        # own limit (llama.cpp's --n-predict), 4 characters a token here, cutting the answer
        # off mid-way, with finish_reason "length".
        finish_reason = "stop"
        asked = body.get("max_tokens")
        limits = [n for n in (asked if isinstance(asked, int) else None, self.max_output_tokens) if n]
        limit = min(limits) if limits else None
        if limit and estimate_tokens(len(content)) > limit:
            content, finish_reason = content[: 4 * limit], "length"
        completion_tokens = estimate_tokens(len(content))
        model = body.get("model") if isinstance(body.get("model"), str) else self.model
        return {
            "id": f"chatcmpl-scripted-{request_no}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _draw_fault(self, request_no: int, body: dict[str, Any], attempt: int, digest: str) -> str | None:
        faults = self.faults
        if faults is None:
            return None
        if callable(faults):
            return faults(request_no, body, attempt)
        u = _uniform(self.seed, digest, attempt)
        cumulative = 0.0
        for name, probability in faults.items():
            cumulative += probability
            if u < cumulative:
                return name
        return None

    def _latency(self, body: dict[str, Any]) -> float:
        latency = self.latency_s
        return float(latency(body)) if callable(latency) else float(latency)

    def _rate_limit_headers(self) -> dict[str, str]:
        return {"Retry-After": _format_seconds(self.retry_after_s)}

    # -- the completion endpoint -------------------------------------------------------

    def _handle_completion(self, handler: _Handler, raw: bytes) -> None:
        now = time.time()
        # Stamped before the bytes leave, so a client that has its reply never sees it unset.
        handler.before_send = self._responded
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        valid = isinstance(body, dict) and isinstance(body.get("messages"), list)
        authorized = handler._authorized()
        with self._lock:
            request_no = self._request_no
            self._request_no += 1
            self.count += 1
            if self.first_request_at is None:
                self.first_request_at = now
            if self.api_key is not None and authorized:
                self.auth_ok += 1
            if self.record_bodies and isinstance(body, dict):
                self.bodies.append(body)

        if not authorized:
            self._outcome("unauthorized")
            handler._send_unauthorized()
            return
        if not valid:
            self._outcome("bad_request")
            handler._send_json(
                400,
                _error_body(
                    "The request body must be a JSON object with a 'messages' list.",
                    "invalid_request_error",
                    "invalid_request",
                ),
            )
            return
        assert isinstance(body, dict)
        if body.get("stream"):
            self._outcome("bad_request")
            handler._send_json(
                400,
                _error_body("Streaming is not supported by this server.", "invalid_request_error", "stream"),
            )
            return

        slots = self._slots
        if slots is not None:
            if self.cap_mode == "reject":
                if not slots.acquire(blocking=False):
                    self._outcome("cap_rejected")
                    handler._send_json(
                        429,
                        _error_body(
                            "Too many concurrent requests; retry later.",
                            "rate_limit_exceeded",
                            "rate_limit_exceeded",
                        ),
                        headers=self._rate_limit_headers(),
                    )
                    return
            else:
                slots.acquire()
        try:
            with self._lock:
                self.in_flight += 1
                if self.in_flight > self.max_concurrent:
                    self.max_concurrent = self.in_flight
            try:
                self._answer(handler, body, request_no)
            finally:
                with self._lock:
                    self.in_flight -= 1
        finally:
            if slots is not None:
                slots.release()

    def _answer(self, handler: _Handler, body: dict[str, Any], request_no: int) -> None:
        digest = _messages_digest(body)
        with self._lock:
            attempt = self._seen.get(digest, 0)
            self._seen[digest] = attempt + 1
        fault = self._draw_fault(request_no, body, attempt, digest)

        latency = self._latency(body)
        if latency > 0 and self._stopping.wait(latency):
            handler.close_connection = True
            return

        if fault is None or fault == "hang":
            if fault == "hang":
                self._outcome("hang")
                if self._stopping.wait(self.hang_s):
                    handler.close_connection = True
                    return
            try:
                content = self.responder(body)
            except Exception as exc:  # reported to the client as a 500
                self._outcome("responder_error")
                handler._send_json(
                    500, _error_body(f"responder failed: {type(exc).__name__}", "server_error", None)
                )
                return
            if fault is None:
                self._outcome("ok")
            handler._send_json(200, self._completion_payload(body, content, request_no))
            return

        self._outcome(fault)
        if fault == "rate_limit":
            handler._send_json(
                429,
                _error_body(
                    "Rate limit reached for requests. Please try again later.",
                    "rate_limit_exceeded",
                    "rate_limit_exceeded",
                ),
                headers=self._rate_limit_headers(),
            )
        elif fault == "server_error":
            handler._send_json(
                500,
                _error_body("The server had an error while processing your request.", "server_error", None),
            )
        elif fault == "non_json_body":
            handler._send(200, _NON_JSON_BODY, content_type="text/html; charset=utf-8")
        elif fault == "truncated_json_body":
            full = json.dumps(self._completion_payload(body, WRONG_SCHEMA_CONTENT, request_no)).encode()
            handler._send(200, full[: len(full) // 2])
        elif fault == "invalid_json":
            handler._send_json(200, self._completion_payload(body, INVALID_JSON_CONTENT, request_no))
        elif fault == "wrong_schema":
            handler._send_json(200, self._completion_payload(body, WRONG_SCHEMA_CONTENT, request_no))
        else:
            handler._send_json(
                500, _error_body(f"unknown scripted fault {fault!r}", "server_error", "unknown_fault")
            )


# -- command line ------------------------------------------------------------------------


def _parse_faults(text: str) -> dict[str, float]:
    faults: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"fault {item!r} is not NAME=PROBABILITY")
        try:
            faults[name.strip()] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"fault {item!r}: {value!r} is not a number") from exc
    return faults


def main(argv: list[str] | None = None) -> int:
    """Serve until killed; print the base URL as the first stdout line.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m testing.scripted_server",
        description="Scriptable OpenAI-compatible chat-completions server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--cap", type=int, default=None, help="most completions processed at once")
    parser.add_argument("--cap-mode", choices=("queue", "reject"), default="queue")
    parser.add_argument(
        "--faults", type=_parse_faults, default=None, help="e.g. rate_limit=0.2,server_error=0.1"
    )
    parser.add_argument("--model", default="scripted-model")
    parser.add_argument(
        "--responder",
        default=None,
        help="MODULE:FUNCTION returning the answer content, e.g. testing.answers:item_profile",
    )
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=0.2, help="Retry-After seconds of 429 answers")
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--no-record-bodies", action="store_true", help="do not keep request bodies")
    args = parser.parse_args(argv)
    responder = None
    if args.responder:
        import importlib

        module, _, func = args.responder.partition(":")
        responder = getattr(importlib.import_module(module), func)

    server = ScriptedLLMServer(
        args.host,
        args.port,
        model=args.model,
        responder=responder,
        latency_s=args.latency_ms / 1000.0,
        faults=args.faults,
        concurrency_cap=args.cap,
        cap_mode=args.cap_mode,
        api_key=args.api_key,
        seed=args.seed,
        record_bodies=not args.no_record_bodies,
        retry_after_s=args.retry_after,
        hang_s=args.hang_s,
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    print(server.base_url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
