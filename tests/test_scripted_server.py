"""The scripted OpenAI-compatible server, driven by the unmodified ``openai`` client."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from testing.scripted_server import ScriptedLLMServer

REPO = Path(__file__).resolve().parent.parent
MODEL = "scripted-model"


def _client(srv: ScriptedLLMServer, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("api_key", "x")
    return openai.OpenAI(base_url=srv.base_url, max_retries=0, **kwargs)


def _ask(client: openai.OpenAI, text: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **kwargs)


def _post(conn: http.client.HTTPConnection, text: str) -> int:
    """One completion over a kept-alive connection; the HTTP status."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_completion_parsed_with_responder_content_and_usage():
    def responder(body):
        return json.dumps({"title": body["messages"][-1]["content"].upper()})

    with ScriptedLLMServer(responder=responder) as srv:
        reply = _client(srv).chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are terse."},  # 14 chars
                {"role": "user", "content": "red shoes"},  # 9 chars
            ],
        )
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == "stop"
        content = reply.choices[0].message.content
        assert content == '{"title": "RED SHOES"}'
        assert reply.usage.prompt_tokens == 6  # ceil(23 / 4)
        assert reply.usage.completion_tokens == 6  # ceil(22 / 4)
        assert reply.usage.total_tokens == 12
        assert srv.count == 1 and srv.by_outcome == {"ok": 1}
        assert srv.first_request_at is not None and srv.last_response_at >= srv.first_request_at


def test_default_responder_echoes_last_user_message_and_models_list():
    with ScriptedLLMServer(model="my-model") as srv:
        client = _client(srv)
        reply = _ask(client, "hello there")
        assert json.loads(reply.choices[0].message.content) == {"echo": "hello there"}
        assert [m.id for m in client.models.list()] == ["my-model"]


def test_rate_limit_is_a_rate_limit_error_with_retry_after():
    with ScriptedLLMServer(faults={"rate_limit": 1.0}, retry_after_s=0.2) as srv:
        with pytest.raises(openai.RateLimitError) as info:
            _ask(_client(srv), "q")
        assert info.value.response.headers["retry-after"] == "0.2"
        assert info.value.status_code == 429
        assert info.value.code == "rate_limit_exceeded"
        assert srv.by_outcome == {"rate_limit": 1}


def test_server_error_is_an_internal_server_error():
    with ScriptedLLMServer(faults={"server_error": 1.0}) as srv:
        with pytest.raises(openai.InternalServerError):
            _ask(_client(srv), "q")


def test_hang_times_out_the_client_and_does_not_block_stop():
    srv = ScriptedLLMServer(faults={"hang": 1.0}, hang_s=30).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            _ask(_client(srv, timeout=0.5), "q")
        assert time.monotonic() - t0 < 1.5
        assert srv.by_outcome == {"hang": 1}
    finally:
        t1 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t1 < 2.0


def test_non_json_body_comes_back_as_text_or_a_validation_error():
    # openai 1.x does not raise for a 200 whose content-type is not JSON: the default client
    # returns the raw text instead of a ChatCompletion; with strict response validation it
    # raises APIResponseValidationError.
    with ScriptedLLMServer(faults={"non_json_body": 1.0}) as srv:
        reply = _ask(_client(srv), "q")
        assert isinstance(reply, str) and reply.startswith("<html>")
        with pytest.raises(openai.APIResponseValidationError):
            _ask(_client(srv, _strict_response_validation=True), "q")
        assert srv.by_outcome == {"non_json_body": 2}


def test_truncated_json_body_raises_a_json_decode_error():
    with ScriptedLLMServer(faults={"truncated_json_body": 1.0}) as srv:
        with pytest.raises(json.JSONDecodeError):
            _ask(_client(srv), "q")


def test_invalid_json_and_wrong_schema_are_well_formed_completions():
    with ScriptedLLMServer(faults={"invalid_json": 1.0}) as srv:
        content = _ask(_client(srv), "q").choices[0].message.content
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
    with ScriptedLLMServer(faults={"wrong_schema": 1.0}) as srv:
        content = _ask(_client(srv), "q").choices[0].message.content
        assert json.loads(content) == {"unexpected": [1, 2]}


def test_wrong_api_key_is_an_authentication_error_without_the_key():
    secret = "sk-right-key-1234"
    wrong = "sk-wrong-key-98765"
    with ScriptedLLMServer(api_key=secret) as srv:
        with pytest.raises(openai.AuthenticationError) as info:
            _ask(_client(srv, api_key=wrong), "q")
        text = f"{info.value} {info.value.body} {info.value.response.text}"
        assert wrong not in text and secret not in text
        with pytest.raises(openai.AuthenticationError):
            _client(srv, api_key=wrong).models.list()
        assert _ask(_client(srv, api_key=secret), "q").choices[0].message.content == '{"echo": "q"}'
        assert srv.auth_ok == 1
        assert srv.by_outcome == {"unauthorized": 1, "ok": 1}


def _burst(srv: ScriptedLLMServer, n: int) -> tuple[list[object], float]:
    client = _client(srv)
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = _ask(client, f"prompt {i}")
        except openai.APIError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - t0


def test_concurrency_cap_queue_mode_waits_for_slots():
    with ScriptedLLMServer(latency_s=0.2, concurrency_cap=4, cap_mode="queue") as srv:
        results, elapsed = _burst(srv, 16)
        assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in results)
        assert srv.max_concurrent == 4
        assert elapsed >= 0.75
        assert srv.by_outcome == {"ok": 16}


def test_concurrency_cap_reject_mode_answers_429():
    with ScriptedLLMServer(latency_s=0.2, concurrency_cap=4, cap_mode="reject", retry_after_s=1.5) as srv:
        results, _ = _burst(srv, 16)
        rejected = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(rejected) == 12
        assert rejected[0].response.headers["retry-after"] == "1.5"
        assert srv.by_outcome == {"ok": 4, "cap_rejected": 12}
        assert srv.max_concurrent == 4


def test_no_cap_runs_requests_concurrently():
    with ScriptedLLMServer(latency_s=0.2) as srv:
        results, elapsed = _burst(srv, 16)
        assert all(isinstance(r, openai.types.chat.ChatCompletion) for r in results)
        assert srv.max_concurrent == 16
        assert elapsed < 0.75


def _outcomes(srv: ScriptedLLMServer, prompts: list[str]) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        return [_post(conn, p) for p in prompts]
    finally:
        conn.close()


def test_fault_probabilities_and_reproducibility():
    prompts = [f"distinct prompt number {i}" for i in range(2000)]
    faults = {"rate_limit": 0.2, "server_error": 0.1}
    with ScriptedLLMServer(faults=faults, seed=7, record_bodies=False) as srv:
        first = _outcomes(srv, prompts)
        assert srv.count == 2000
        assert srv.bodies == []
        assert abs(first.count(429) / 2000 - 0.2) <= 0.03
        assert abs(first.count(500) / 2000 - 0.1) <= 0.03
        assert first.count(429) == srv.by_outcome["rate_limit"]
        assert first.count(500) == srv.by_outcome["server_error"]
        srv.reset()
        assert srv.count == 0 and srv.by_outcome == {}
        assert _outcomes(srv, prompts[:300]) == first[:300]  # reset forgets the attempts too
    with ScriptedLLMServer(faults=faults, seed=7) as srv:
        assert _outcomes(srv, prompts[:300]) == first[:300]
    with ScriptedLLMServer(faults=faults, seed=8) as srv:
        assert _outcomes(srv, prompts[:300]) != first[:300]


def test_retrying_the_same_prompt_draws_again():
    with ScriptedLLMServer(faults={"rate_limit": 0.5}, seed=1) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        statuses = [_post(conn, "the same prompt") for _ in range(40)]
        conn.close()
        assert 200 in statuses and 429 in statuses


def test_callable_faults_get_request_number_and_attempt():
    seen = []

    def faults(request_no, body, attempt):
        seen.append((request_no, attempt))
        return "server_error" if attempt == 0 else None

    with ScriptedLLMServer(faults=faults) as srv:
        client = _client(srv)
        with pytest.raises(openai.InternalServerError):
            _ask(client, "a")
        assert _ask(client, "a").choices[0].message.content == '{"echo": "a"}'
        with pytest.raises(openai.InternalServerError):
            _ask(client, "b")
    assert seen == [(0, 0), (1, 1), (2, 0)]


def test_image_content_parts_are_accepted_and_recorded():
    url = "data:image/png;base64,iVBORw0KGgo="
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    with ScriptedLLMServer() as srv:
        reply = _client(srv).chat.completions.create(model=MODEL, messages=messages)
        assert json.loads(reply.choices[0].message.content) == {"echo": "what is this"}
        assert reply.usage.prompt_tokens == 3  # ceil(12 / 4): image parts carry no text
        assert srv.bodies[0]["messages"] == messages


def test_stats_reset_and_unknown_path_endpoints():
    with ScriptedLLMServer() as srv:
        _ask(_client(srv), "q")
        with urllib.request.urlopen(srv.base_url + "/_stats") as response:
            stats = json.load(response)
        assert stats["count"] == 1 and stats["by_outcome"] == {"ok": 1} and stats["max_concurrent"] == 1
        req = urllib.request.Request(srv.base_url + "/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req) as response:
            assert response.status == 200
        assert srv.count == 0 and srv.bodies == []
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(srv.base_url + "/nope")
        assert info.value.code == 404
        error = json.load(info.value)["error"]
        assert set(error) >= {"message", "type", "code"}


def test_cli_prints_url_and_serves_models():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "testing.scripted_server", "--port", "0", "--model", "cli-model"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:") and line.endswith("/v1")
        with urllib.request.urlopen(line + "/models", timeout=5) as response:
            models = json.load(response)
        assert models["object"] == "list" and models["data"][0]["id"] == "cli-model"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
