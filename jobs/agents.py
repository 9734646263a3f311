"""Run an agent over a DataFrame on Spark: heuristic, or an LLM with a Delta response cache.

LLM path, in order:

1. **Render** every input row into chat messages (``mapInPandas``); the cache key is the
   SHA-256 of the whole request body: model, messages (so the prompt version and the
   template text), temperature, max_tokens and response format.
2. **Look up** the keys in ``silver.llm_responses``, an append-only log of every answer;
   only keys without an ``ok`` answer are sent (failed ones again, unless
   ``llm.runtime.retry_failed`` is false). Duplicate prompts are sent once.
3. **Call** in chunks of ``llm.runtime.commit_every`` keys: each chunk is spread over
   ``llm.runtime.tasks`` Spark tasks, each task sends its requests concurrently
   (``max_in_flight``) under the job-wide rate limit (:mod:`udfs.llm.ratelimit`), and the
   chunk's answers are appended to the log in one Delta commit. A crash loses at most
   the chunk in flight; a re-run sends only what the log does not hold.
4. **Assemble** the output from the log (never from the UDF directly: Spark may run a UDF
   more than once): per input row the agent's output struct and the accounting columns
   ``status, error_class, error_message, model, prompt_version, input_tokens,
   output_tokens, latency_ms, attempts, answered_at, cache_key``. A failed input is a row
   with ``status = 'failed'``, never a missing row.

Heuristic path: the agent's heuristic in ``mapInPandas``, the same output columns, with
``status = 'heuristic'`` and ``model = 'heuristic'``.

Fallback (``fallback="heuristic"``, the default): with an LLM backend, a row whose answer
failed carries the heuristic's output with ``status = 'failed'`` (the error columns say
why) and ``model = 'heuristic'``.

Example
-------
>>> from udfs.agents import item_profile
>>> run = run_agent(items, item_profile.AGENT, conf, key_columns=["item_id"],
...                 context=item_profile.context(conf))
>>> run.output.select("item_id", "output.short_title", "status").show()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core import tables
from core.config import Config, ConfigError, LLMEndpointConf, LLMRuntimeConf
from prompts import Prompt, load_prompt
from udfs.llm.agent import Agent, spark_schema
from udfs.llm.client import CallSettings, Secret, agent_request, answer_parser, call_all
from udfs.llm.ratelimit import NoRateLimit, RateLimitServer, RemoteRateLimiter

log = logging.getLogger(__name__)

RESPONSES_TABLE = "silver.llm_responses"
HEURISTIC = "heuristic"
# Answers that are used (and not sent again): whole, or cut off and completed (partial).
USABLE = ("ok", "partial")

RESPONSE_SCHEMA = T.StructType(
    [
        T.StructField("cache_key", T.StringType()),
        T.StructField("agent", T.StringType()),
        T.StructField("model", T.StringType()),
        T.StructField("prompt_version", T.StringType()),
        T.StructField("status", T.StringType()),
        T.StructField("output_json", T.StringType()),
        T.StructField("raw_output", T.StringType()),
        T.StructField("error_class", T.StringType()),
        T.StructField("error_message", T.StringType()),
        T.StructField("input_tokens", T.LongType()),
        T.StructField("output_tokens", T.LongType()),
        T.StructField("latency_ms", T.LongType()),
        T.StructField("attempts", T.IntegerType()),
        T.StructField("answered_at", T.TimestampType()),
        T.StructField("run_id", T.StringType()),
    ]
)

# Accounting columns of every output row, after the key columns and `output`.
META_COLUMNS = [
    "status",
    "error_class",
    "error_message",
    "model",
    "prompt_version",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "attempts",
    "answered_at",
    "cache_key",
]
# The accounting columns the output tables of the agent jobs keep (items, portraits).
KEPT_META_COLUMNS = ("status", "error_class", "model", "prompt_version", "input_tokens", "output_tokens")


@dataclass
class AgentRun:
    """The output of one agent run and what it cost."""

    agent: str
    backend: str
    output: DataFrame
    inputs: int = 0
    distinct_requests: int = 0
    cached: int = 0
    sent: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts per status and token totals of the output (one Spark job)."""
        row = self.output.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.when(F.col("status") == "ok", 1).otherwise(0)).alias("ok"),
            F.sum(F.when(F.col("status") == "partial", 1).otherwise(0)).alias("partial"),
            F.sum(F.when(F.col("status") == "failed", 1).otherwise(0)).alias("failed"),
            F.sum(F.when(F.col("status") == "heuristic", 1).otherwise(0)).alias("heuristic"),
            F.sum("input_tokens").alias("input_tokens"),
            F.sum("output_tokens").alias("output_tokens"),
        ).collect()[0]
        out = {k: int(row[k] or 0) for k in row.asDict()}
        out.update(agent=self.agent, backend=self.backend, cached=self.cached, sent=self.sent)
        return out


def output_source() -> Column:
    """Who wrote a row's ``output``: ``llm`` (an ok answer), ``heuristic`` (the heuristic
    backend) or ``heuristic_fallback`` (a failed answer, carrying the heuristic's)."""
    status = F.col("status")
    return (
        F.when(status.isin(*USABLE), "llm")
        .when(status == HEURISTIC, HEURISTIC)
        .otherwise("heuristic_fallback")
    )


def call_settings(
    endpoint: LLMEndpointConf, runtime: LLMRuntimeConf, agent: Agent, endpoint_name: str = "default"
) -> CallSettings:
    """Settings for the executors; reads the API key from the environment, on the driver."""
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {endpoint.api_key_env} is not set: it must hold the API key "
                "of the LLM endpoint (llm.endpoints.<name>.api_key_env; null for a server without keys)"
            )
    else:
        key = "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key
    return CallSettings(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=Secret(key),
        temperature=endpoint.temperature,
        max_tokens=endpoint.max_tokens,
        response_format=endpoint.response_format,
        max_in_flight=runtime.max_in_flight,
        timeout_s=runtime.timeout_s,
        max_retries=runtime.max_retries,
        backoff_initial_s=runtime.backoff_initial_s,
        backoff_max_s=runtime.backoff_max_s,
        repair=runtime.repair,
        agent=agent.name,
        endpoint=endpoint_name,
    )


def _key_fields(inputs: DataFrame, key_columns: list[str]) -> list[T.StructField]:
    return [inputs.schema[c] for c in key_columns]


def _output_frame(df: DataFrame, agent: Agent, key_columns: list[str]) -> DataFrame:
    return df.select(
        *key_columns,
        F.from_json("output_json", spark_schema(agent.output_model)).alias("output"),
        *[F.col(c).cast(RESPONSE_SCHEMA[c].dataType) for c in META_COLUMNS],
    )


def _run_heuristic(inputs: DataFrame, agent: Agent, key_columns: list[str], context: dict) -> DataFrame:
    schema = T.StructType(
        _key_fields(inputs, key_columns)
        + [f for f in RESPONSE_SCHEMA.fields if f.name in META_COLUMNS or f.name == "output_json"]
    )
    version = agent.heuristic_version
    columns = list(dict.fromkeys(key_columns + list(agent.input_columns)))

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = []
            for row in pdf.to_dict("records"):
                started = time.perf_counter()
                out = {k: row[k] for k in key_columns}
                try:
                    answer = agent.heuristic(row, context).model_dump(mode="json")
                    out.update(status="heuristic", output_json=json.dumps(answer, ensure_ascii=False))
                    out.update(error_class=None, error_message=None)
                except Exception as e:  # noqa: BLE001 - a bad row is a failed row, not a dead job
                    out.update(status="failed", output_json=None, error_class="heuristic_error")
                    out.update(error_message=f"{type(e).__name__}: {e}"[:500])
                out.update(
                    model="heuristic",
                    prompt_version=version,
                    input_tokens=0,
                    output_tokens=0,
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    attempts=0,
                    # Heuristic rows are recomputed, not answered: no timestamp, so that a
                    # re-run of a stage gives the same rows.
                    answered_at=None,
                    cache_key=None,
                )
                rows.append(out)
            yield pd.DataFrame(rows, columns=schema.fieldNames())

    return _output_frame(inputs.select(*columns).mapInPandas(apply, schema), agent, key_columns)


def _limiter_host(spark: SparkSession) -> str:
    master = spark.sparkContext.master
    if master.startswith("local"):
        return "127.0.0.1"
    return spark.conf.get("spark.driver.host", "127.0.0.1")


def _render(
    inputs: DataFrame,
    agent: Agent,
    prompt: Prompt,
    settings: CallSettings,
    key_columns: list[str],
    context: dict,
) -> DataFrame:
    schema = T.StructType(
        _key_fields(inputs, key_columns)
        + [
            T.StructField("cache_key", T.StringType()),
            T.StructField("body_json", T.StringType()),
            T.StructField("input_json", T.StringType()),
        ]
    )
    columns = list(dict.fromkeys(key_columns + list(agent.input_columns)))

    def render(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = []
            for row in pdf.to_dict("records"):
                row = {k: (None if _is_missing(v) else v) for k, v in row.items()}
                key, body = agent_request(agent, prompt, settings, row, context)
                rows.append(
                    {
                        **{k: row[k] for k in key_columns},
                        "cache_key": key,
                        "body_json": json.dumps(body, ensure_ascii=False),
                        "input_json": json.dumps(
                            {c: row.get(c) for c in agent.input_columns}, ensure_ascii=False, default=str
                        ),
                    }
                )
            yield pd.DataFrame(rows, columns=schema.fieldNames())

    return inputs.select(*columns).mapInPandas(render, schema)


def _is_missing(v: Any) -> bool:
    try:
        return v is None or (not isinstance(v, (list, dict, str)) and bool(pd.isna(v)))
    except (TypeError, ValueError):
        return False


def _caller(
    agent: Agent,
    prompt: Prompt,
    settings: CallSettings,
    context: dict,
    limiter_address: str | None,
    limits_per_task: tuple[float | None, float | None],
    run_id: str,
):
    def call(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            inputs = dict(zip(pdf["cache_key"], pdf["input_json"], strict=True))
            requests = [(k, json.loads(b)) for k, b in zip(pdf["cache_key"], pdf["body_json"], strict=True)]

            def parse_for(key: str, inputs: dict = inputs):
                return answer_parser(agent, prompt, json.loads(inputs[key]), context)

            limiter = (
                RemoteRateLimiter(limiter_address, *limits_per_task) if limiter_address else NoRateLimit()
            )
            results = asyncio.run(call_all(settings, limiter, requests, parse_for, prompt.render_repair))
            now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
            rows = [
                {
                    **r.as_row(),
                    "agent": agent.name,
                    "model": settings.model,
                    "prompt_version": prompt.version,
                    "answered_at": now,
                    "run_id": run_id,
                }
                for r in results
            ]
            yield pd.DataFrame(rows, columns=RESPONSE_SCHEMA.fieldNames())

    return call


def _best_answers(responses: DataFrame) -> DataFrame:
    """One response per key: an ok one if any, else a partial one, else the latest failure."""
    usable = F.when(F.col("status") == "ok", 2).when(F.col("status") == "partial", 1).otherwise(0)
    rank = F.struct(usable, F.col("answered_at"))
    cols = [c for c in RESPONSE_SCHEMA.fieldNames() if c != "cache_key"]
    return (
        responses.groupBy("cache_key")
        .agg(F.max_by(F.struct(*cols), rank).alias("r"))
        .select("cache_key", "r.*")
    )


def _run_llm(
    spark: SparkSession,
    inputs: DataFrame,
    agent: Agent,
    conf: Config,
    key_columns: list[str],
    context: dict,
    run: AgentRun,
) -> DataFrame:
    agent_conf = conf.llm.agent(agent.name)
    endpoint = conf.llm.endpoint_of(agent.name)
    runtime = conf.llm.runtime
    prompt = load_prompt(agent.name, agent_conf.prompt_version)
    settings = call_settings(endpoint, runtime, agent, agent_conf.endpoint)
    run_id = conf.run.run_id or uuid.uuid4().hex[:12]

    rendered = _render(inputs, agent, prompt, settings, key_columns, context).persist()
    run.inputs = rendered.count()
    requests = rendered.select("cache_key", "body_json", "input_json").dropDuplicates(["cache_key"])
    run.distinct_requests = requests.count()

    if tables.exists(spark, conf, RESPONSES_TABLE):
        done = tables.read(spark, conf, RESPONSES_TABLE)
        if runtime.retry_failed:
            done = done.filter(F.col("status").isin(*USABLE))
        todo = requests.join(done.select("cache_key").distinct(), "cache_key", "left_anti")
    else:
        todo = requests
    todo = todo.persist()
    n_todo = todo.count()
    run.cached = run.distinct_requests - n_todo
    tasks = runtime.tasks or spark.sparkContext.defaultParallelism
    log.info(
        f"{agent.name}: {run.inputs:,} inputs, {run.distinct_requests:,} distinct prompts, "
        f"{run.cached:,} answered before, {n_todo:,} to send ({endpoint.model}, prompt {prompt.version})",
    )

    if n_todo:
        chunks = max(1, math.ceil(n_todo / runtime.commit_every))
        limited = endpoint.requests_per_minute or endpoint.tokens_per_minute
        server = None
        if limited:
            server = RateLimitServer(
                endpoint.requests_per_minute, endpoint.tokens_per_minute, host=_limiter_host(spark)
            ).start()
        per_task = (
            endpoint.requests_per_minute / tasks if endpoint.requests_per_minute else None,
            endpoint.tokens_per_minute / tasks if endpoint.tokens_per_minute else None,
        )
        call = _caller(agent, prompt, settings, context, server.address if server else None, per_task, run_id)
        try:
            for i in range(chunks):
                started = time.perf_counter()
                part = (
                    todo if chunks == 1 else todo.filter(F.pmod(F.xxhash64("cache_key"), F.lit(chunks)) == i)
                )
                answers = part.repartition(tasks).mapInPandas(call, RESPONSE_SCHEMA)
                written = tables.append(answers, conf, RESPONSES_TABLE)
                run.sent += written
                log.info(
                    f"{agent.name}: chunk {i + 1}/{chunks}: {written:,} answers committed "
                    f"in {time.perf_counter() - started:.1f}s",
                )
        finally:
            if server is not None:
                server.stop()
    todo.unpersist()

    keys = rendered.select("cache_key").distinct()
    best = _best_answers(
        tables.read(spark, conf, RESPONSES_TABLE).join(keys, "cache_key", "left_semi")
        if tables.exists(spark, conf, RESPONSES_TABLE)
        else spark.createDataFrame([], RESPONSE_SCHEMA)
    )
    joined = rendered.drop("body_json", "input_json").join(best, "cache_key", "left")
    # A key with no answer at all can only mean an answer was lost: say so, keep the row.
    joined = joined.withColumns(
        {
            "status": F.coalesce("status", F.lit("failed")),
            "error_class": F.when(F.col("status").isNull(), F.lit("no_response")).otherwise(
                F.col("error_class")
            ),
            "model": F.coalesce("model", F.lit(settings.model)),
            "prompt_version": F.coalesce("prompt_version", F.lit(prompt.version)),
        }
    )
    return _output_frame(joined, agent, key_columns)


def with_heuristic_fallback(answers: DataFrame, heuristic: DataFrame, key_columns: list[str]) -> DataFrame:
    """``answers`` (an LLM run's output) where every row whose answer is not usable (``ok``, or
    ``partial``: cut off, its complete items kept and the rest filled by the heuristic) carries
    the heuristic's ``output`` and ``prompt_version`` instead, with ``model = 'heuristic'``;
    ``status`` and the error columns stay as the LLM call left them, so a failure still
    shows. The one meaning of a fallback row: ``status`` tells what happened to the call,
    ``model`` who wrote the output."""
    fb = heuristic.select(
        *key_columns, F.col("output").alias("_fb_output"), F.col("prompt_version").alias("_fb_version")
    )
    ok = F.col("status").isin(*USABLE)
    return (
        answers.join(fb, key_columns, "left")
        .withColumn("output", F.when(ok, F.col("output")).otherwise(F.col("_fb_output")))
        .withColumn("prompt_version", F.when(ok, F.col("prompt_version")).otherwise(F.col("_fb_version")))
        .withColumn("model", F.when(ok, F.col("model")).otherwise(F.lit(HEURISTIC)))
        .drop("_fb_output", "_fb_version")
    )


def run_agent(
    inputs: DataFrame,
    agent: Agent,
    conf: Config,
    key_columns: list[str],
    context: dict | None = None,
    fallback: str | None = HEURISTIC,
) -> AgentRun:
    """Run ``agent`` over ``inputs`` with the backend configured for it (``llm.agents.<name>``).

    Parameters
    ----------
    inputs : rows holding ``key_columns`` and the agent's ``input_columns``.
    key_columns : identify an input row; copied to the output.
    context : values shared by all rows (e.g. a category vocabulary), passed to the
        template, the validator and the heuristic. Must be picklable.
    fallback : with an LLM backend, what a row whose answer failed (timeout, error,
        invalid answer) carries: ``"heuristic"`` (default), the agent's heuristic answer
        (:func:`with_heuristic_fallback`); None, a null ``output`` (the caller has a
        fallback of its own).

    Returns
    -------
    AgentRun whose ``output`` has one row per input row: the key columns, ``output``
    (the agent's struct; null when failed without a fallback) and the accounting columns.
    """
    if fallback not in (HEURISTIC, None):
        raise ValueError(f"agent {agent.name}: fallback must be 'heuristic' or None, not {fallback!r}")
    missing = [c for c in list(key_columns) + list(agent.input_columns) if c not in inputs.columns]
    if missing:
        raise ValueError(f"agent {agent.name}: input columns missing: {missing}")
    context = dict(context or {})
    backend = conf.llm.agent(agent.name).backend
    run = AgentRun(agent=agent.name, backend=backend, output=None)  # type: ignore[arg-type]
    if backend == "heuristic":
        run.output = _run_heuristic(inputs, agent, list(key_columns), context)
        return run
    answers = _run_llm(inputs.sparkSession, inputs, agent, conf, list(key_columns), context, run)
    if fallback == HEURISTIC:
        answers = with_heuristic_fallback(
            answers, _run_heuristic(inputs, agent, list(key_columns), context), list(key_columns)
        )
    run.output = answers
    return run
