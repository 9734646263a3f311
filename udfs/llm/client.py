"""Calling an OpenAI-compatible endpoint for many inputs at once, politely and safely.

For each distinct request: wait for a slot of the shared rate limit, send it with a
per-request timeout, retry what is worth retrying (429 honouring ``Retry-After``, 5xx,
timeouts, dropped connections, garbled responses) with exponential backoff and full
jitter up to a bound, validate the answer, and make one repair attempt that shows the model
its invalid answer. The result is always a :class:`CallResult`: ``ok`` with the parsed
output, or ``failed`` with an error class and message. Nothing raises for a bad answer.

The ``openai`` client is used as it is, with its own retries off so that every attempt is
counted here and ``Retry-After`` is honoured exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import openai

from core.retry import (
    BAD_RESPONSE,
    CONNECTION,
    RATE_LIMITED,
    TIMEOUT,
    Backoff,
    parse_retry_after,
    scrub,
    status_class,
)
from prompts import Prompt
from udfs.llm.agent import (
    Agent,
    AnswerError,
    Context,
    Row,
    Salvaged,
    estimate_tokens,
    max_tokens_for,
    read_answer,
    request_hash,
)

# Error classes written to the output rows.


@dataclass(frozen=True)
class CallSettings:
    """What the executors need to call one endpoint; picklable, the key never printed."""

    base_url: str | None
    model: str
    api_key: Secret
    temperature: float
    max_tokens: int | None  # None: derived from each request's answer schema
    response_format: str  # json_object | json_schema | json_object_schema | none
    max_in_flight: int
    timeout_s: float
    max_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    repair: bool
    agent: str = "agent"  # names the schema sent and the errors
    endpoint: str = "default"

    @property
    def max_attempts(self) -> int:
        """Upper bound of requests for one input: retries, twice if a repair is made."""
        return (self.max_retries + 1) * (2 if self.repair else 1)

    def output_tokens(self, schema: dict[str, Any] | None) -> int:
        """``max_tokens`` of a request whose answer follows ``schema``: the endpoint's, or
        derived from the schema's bounds; a schema whose answers may not fit is refused."""
        bound = max_tokens_for(schema) if schema is not None else None
        where = f"llm.endpoints.{self.endpoint}.max_tokens"
        if self.max_tokens is None:
            if bound is None:
                raise ValueError(
                    f"{self.agent}: its answer schema sets no maximum on some list or string, so "
                    f"max_tokens cannot be derived from it: set {where}"
                )
            return bound
        if bound is not None and bound > self.max_tokens:
            raise ValueError(
                f"{self.agent}: an answer within its schema's bounds may take {bound} tokens (with "
                f"a margin), more than {where} = {self.max_tokens}, so it could be cut off: raise "
                "it, leave it unset (derived from the schema), or ask for fewer or shorter items"
            )
        return self.max_tokens

    def body(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None = None) -> dict[str, Any]:
        """The chat-completions request body (also what the cache key hashes); ``schema``:
        the JSON schema of this request's answer (sent as the response format's schema)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.output_tokens(schema),
        }
        if self.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif self.response_format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self.agent, "schema": schema, "strict": True},
            }
        elif self.response_format == "json_object_schema":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body


def agent_request(
    agent: Agent, prompt: Prompt, settings: CallSettings, row: Row, context: Context
) -> tuple[str, dict[str, Any]]:
    """(cache key, request body) of one input: the rendered messages and the answer schema
    of this input; the key is the hash of exactly what is sent."""
    body = settings.body(agent.messages(prompt, row, context), agent.schema_for(row, context))
    return request_hash(body), body


def answer_parser(agent: Agent, prompt: Prompt, row: Row, context: Context) -> Callable[[str], Any]:
    """``parse(text)`` for :meth:`Caller.call`: the answer as JSON, or a salvaged one."""

    def parse(text: str) -> Any:
        answer = read_answer(text, agent, row, context, prompt.example)
        return answer if isinstance(answer, Salvaged) else answer.model_dump(mode="json")

    return parse


class Secret:
    """A string that does not show itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):  # picklable for the trip to the executors
        return (Secret, (self._value,))


@dataclass
class CallResult:
    cache_key: str
    status: str  # ok | partial (cut off, salvaged) | failed
    output_json: str | None
    raw_output: str | None
    error_class: str | None
    error_message: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: int
    attempts: int

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


class _Failure(Exception):
    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


def _retry_after(err: openai.APIStatusError) -> float | None:
    return parse_retry_after(err.response.headers.get("retry-after") if err.response is not None else None)


def _classify(err: BaseException) -> tuple[str, bool]:
    """(error class, retryable) of an exception raised while sending."""
    if isinstance(err, openai.RateLimitError):
        return RATE_LIMITED, True
    if isinstance(err, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError)):
        return TIMEOUT, True
    if isinstance(err, openai.APIConnectionError):
        return CONNECTION, True
    if isinstance(err, openai.APIStatusError):
        return status_class(err.status_code)
    # A 200 whose body is not a completion (HTML, truncated JSON...): a server fault.
    return BAD_RESPONSE, True


class Caller:
    """Sends the requests of one batch concurrently (one instance per event loop)."""

    def __init__(self, settings: CallSettings, limiter: Any, rng: random.Random | None = None):
        self.settings = settings
        self.limiter = limiter
        self.rng = rng or random.Random()
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.reveal(),
            max_retries=0,
            timeout=settings.timeout_s,
        )

    async def close(self) -> None:
        await self.client.close()
        await self.limiter.close()

    async def _send(self, body: dict[str, Any], tally: dict[str, int]) -> str:
        """One answer text, retrying transient failures; raises _Failure when out of attempts."""
        s = self.settings
        messages = body["messages"]
        budget_tokens = estimate_tokens(messages) + body["max_tokens"]
        for retry in range(s.max_retries + 1):
            await self.limiter.acquire(budget_tokens)
            tally["attempts"] += 1
            try:
                response = await asyncio.wait_for(
                    self.client.chat.completions.create(**body), timeout=s.timeout_s + 1.0
                )
                choice = response.choices[0]
                text = choice.message.content
                if text is None:
                    raise _Failure(BAD_RESPONSE, "completion without message content")
                usage = response.usage
                tally["input_tokens"] += usage.prompt_tokens if usage else estimate_tokens(messages)
                tally["output_tokens"] += usage.completion_tokens if usage else max(1, len(text) // 4)
                return text
            except _Failure as f:
                err_class, retryable, delay, message = f.error_class, True, None, str(f)
            except Exception as e:  # noqa: BLE001 - every failure becomes a row
                err_class, retryable = _classify(e)
                delay = _retry_after(e) if isinstance(e, openai.RateLimitError) else None
                message = f"{type(e).__name__}: {e}"
            if not retryable or retry == s.max_retries:
                raise _Failure(err_class, scrub(message, s.api_key.reveal())[:500])
            await asyncio.sleep(Backoff(s.backoff_initial_s, s.backoff_max_s).delay(retry, delay, self.rng))
        raise AssertionError("unreachable")

    async def call(
        self,
        cache_key: str,
        body: dict[str, Any],
        parse: Callable[[str], Any],
        repair_message: Callable[[str], str],
    ) -> CallResult:
        """Answer one request (its body as :meth:`CallSettings.body` built it): send,
        validate, repair once; never raises for a bad answer. ``parse(text)`` gives the
        output, a :class:`~udfs.llm.agent.Salvaged` one (status ``partial``) or raises
        :class:`~udfs.llm.agent.AnswerError`."""
        tally = {"attempts": 0, "input_tokens": 0, "output_tokens": 0}
        started = time.perf_counter()
        text: str | None = None

        def result(status: str, output: Any = None, err: str | None = None, msg: str | None = None):
            return CallResult(
                cache_key=cache_key,
                status=status,
                output_json=json.dumps(output, ensure_ascii=False) if output is not None else None,
                raw_output=text,
                error_class=err,
                error_message=msg,
                input_tokens=tally["input_tokens"],
                output_tokens=tally["output_tokens"],
                latency_ms=int((time.perf_counter() - started) * 1000),
                attempts=tally["attempts"],
            )

        request = body
        for phase in ("answer", "repair"):
            try:
                text = await self._send(request, tally)
            except _Failure as f:
                return result("failed", err=f.error_class, msg=str(f))
            try:
                parsed = parse(text)
            except AnswerError as e:
                if phase == "repair" or not self.settings.repair:
                    return result("failed", err=e.kind, msg=str(e)[:500])
                request = dict(body, messages=[
                    *body["messages"],
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": repair_message(str(e)[:300])},
                ])  # fmt: skip
                continue
            if isinstance(parsed, Salvaged):
                output = parsed.output.model_dump(mode="json")
                return result("partial", output=output, err=parsed.reason, msg=parsed.note)
            return result("ok", output=parsed)
        raise AssertionError("unreachable")


async def call_all(
    settings: CallSettings,
    limiter: Any,
    requests: list[tuple[str, dict[str, Any]]],
    parse_for: Callable[[str], Callable[[str], Any]],
    repair_message: Callable[[str], str],
) -> list[CallResult]:
    """Answer ``(cache_key, body)`` requests with at most ``max_in_flight`` at once.

    Duplicate keys are sent once. Results come back in the order of the distinct keys.
    """
    distinct: dict[str, dict[str, Any]] = {}
    for key, body in requests:
        distinct.setdefault(key, body)
    caller = Caller(settings, limiter)
    gate = asyncio.Semaphore(settings.max_in_flight)

    async def one(key: str, body: dict[str, Any]) -> CallResult:
        async with gate:
            return await caller.call(key, body, parse_for(key), repair_message)

    try:
        return list(await asyncio.gather(*(one(k, m) for k, m in distinct.items())))
    finally:
        await caller.close()
