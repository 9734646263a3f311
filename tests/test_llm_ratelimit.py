"""The shared rate limit: the schedule's arithmetic, and one budget across processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import pytest

from udfs.llm.ratelimit import LocalRateLimiter, RateLimitServer, RemoteRateLimiter, Schedule


def test_requests_are_spaced_by_the_interval():
    s = Schedule(requests_per_minute=600)  # one every 0.1 s
    waits = [s.reserve(now=100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_idle_time_is_not_saved_up_as_a_burst():
    s = Schedule(requests_per_minute=60)
    assert s.reserve(now=0.0) == 0.0
    assert s.reserve(now=100.0) == 0.0
    assert s.reserve(now=100.0) == pytest.approx(1.0)


def test_token_budget_and_request_budget_both_hold():
    s = Schedule(requests_per_minute=6000, tokens_per_minute=60_000)  # 1,000 tokens a second
    assert s.reserve(tokens=500, now=0.0) == 0.0
    # The token budget binds: 500 tokens booked -> the next may go at 0.5 s.
    assert s.reserve(tokens=2000, now=0.0) == pytest.approx(0.5)
    assert s.reserve(tokens=10, now=0.0) == pytest.approx(2.5)


def test_unlimited_schedule_never_waits():
    s = Schedule()
    assert all(s.reserve(tokens=10**6, now=0.0) == 0.0 for _ in range(100))


def _worker(address: str, n: int, out: mp.Queue) -> None:
    async def go():
        limiter = RemoteRateLimiter(address)

        async def one():
            await limiter.acquire(tokens=10)
            return time.time()

        stamps = await asyncio.gather(*(one() for _ in range(n)))
        await limiter.close()
        return stamps

    out.put(asyncio.run(go()))


def test_one_budget_shared_by_several_processes():
    # 3 processes x 40 requests, each process firing all at once, under 1,200 requests/min.
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with RateLimitServer(requests_per_minute=1200) as server:
        procs = [ctx.Process(target=_worker, args=(server.address, 40, out)) for _ in range(3)]
        for p in procs:
            p.start()
        stamps = sorted(s for _ in procs for s in out.get(timeout=60))
        for p in procs:
            p.join(10)
    assert len(stamps) == 120
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert rate == pytest.approx(20.0, rel=0.05)  # 1,200 / 60; a per-process limit would give 60/s
    # No window of 1 s holds more than the limit allows (21 = 20 + the request at the edge).
    worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert worst <= 21


def test_unreachable_server_falls_back_to_the_task_share(caplog):
    async def go():
        limiter = RemoteRateLimiter("127.0.0.1:1", fallback_requests_per_minute=600, connect_timeout_s=1)
        t0 = time.perf_counter()
        for _ in range(4):
            await limiter.acquire()
        return time.perf_counter() - t0

    elapsed = asyncio.run(go())
    assert 0.28 <= elapsed < 1.5  # 4 requests at 10/s: 0.3 s of spacing
    assert "unreachable" in caplog.text


def test_local_limiter_paces_one_process():
    async def go():
        limiter = LocalRateLimiter(requests_per_minute=1200, tokens_per_minute=None)
        t0 = time.perf_counter()
        await asyncio.gather(*(limiter.acquire() for _ in range(11)))
        return time.perf_counter() - t0

    assert asyncio.run(go()) == pytest.approx(0.5, abs=0.1)
