"""Nearline end-to-end latency: event timestamp -> the user's refreshed list committed.

Copies the batch tables of a warehouse built by ``discovery pipeline`` (default
``warehouse``) to a scratch root, starts the nearline stream there with the U2Q agent on
the scripted OpenAI-compatible server (``--llm-latency-ms``, 300 by default), then, while
the stream runs, appends waves of events that trigger ``--users`` distinct users (a
purchase, a search, or five detail views, in turn), each event stamped with the wall
clock just before its append (``--producer``: by a Spark job in the stream's driver, the
default, or by delta-rs from the bench's process, as a producer outside the stream). A
user's latency is the commit time of the MERGE that wrote the list for that trigger
(``silver.nearline_batches.committed_at``) minus the triggering event's timestamp: the
producer's append, the stream's pick-up, the refresh and the MERGE all count. Prints p50 / p95 / max and the per-batch phase times, once per commit engine
(``nearline.commit``: auto = delta-rs for a local warehouse, and spark), side by side in
one run.

    python bench/nearline.py                      # 50 users, 300 ms LLM, both engines
    python bench/nearline.py --commit auto        # the default engine only
    python bench/nearline.py --users 20 --wave 2 --interval 1.5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pipeline_scale import Sampler  # noqa: E402


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def measure(spark, args, source: Path, server, commit: str) -> dict:
    """One stream on a fresh copy of the warehouse; the latencies of its triggered users."""
    from core import tables
    from core.config import load_config
    from jobs import nearline

    scratch = Path(tempfile.mkdtemp(prefix="bench_nearline_"))
    for layer in ("bronze", "silver", "gold"):
        shutil.copytree(source / layer, scratch / layer, ignore=shutil.ignore_patterns("evaluation"))
    print(f"bench: nearline.commit={commit}, scratch warehouse {scratch}", flush=True)
    endpoint = {"base_url": server.base_url, "model": "scripted", "api_key_env": None}
    conf = load_config(
        overrides=[
            f"storage.root={scratch}",
            "spark.shuffle_partitions=2",
            "tracking.enabled=false",
            f"llm.endpoints.bench={json.dumps(endpoint)}",
            "llm.agents.u2q.backend=openai",
            "llm.agents.u2q.endpoint=bench",
            f"nearline.commit={commit}",
        ]
    )
    calls_before = server.stats()["count"]
    # The driver's memory: this process and its JVM (Python UDF workers left out).
    sampler = Sampler(os.getpid(), every_s=0.5).start()
    lists_written = [0]  # counted by the stream's callback: no polling job competes with it
    query, handler = nearline.start(
        spark, conf, on_batch=lambda b: lists_written.__setitem__(0, lists_written[0] + b["written"])
    )
    try:
        events = tables.read(spark, conf, "bronze.events")
        schema = events.schema
        template = events.first().asDict()
        users = [
            r[0] for r in events.select("user_id").distinct().orderBy("user_id").limit(args.users).collect()
        ]
        items = [r[0] for r in events.filter("event_type = 'purchase'").select("item_id").distinct().orderBy("item_id").limit(50).collect()]  # fmt: skip
        expected: dict[str, tuple[str, dt.datetime]] = {}
        n_events = 0
        append_s: list[float] = []
        for w in range(0, len(users), args.wave):
            rows = []
            for i, user in enumerate(users[w : w + args.wave]):
                kind = ("purchase", "search", "views")[(w + i) % 3]
                item = items[(w + i) % len(items)]
                now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                base = dict(template, user_id=user, dt=now.date(), quantity=None, amount=None, order_id=None)
                if kind == "views":
                    for v in range(5):
                        ts = now - dt.timedelta(milliseconds=40 * (4 - v))
                        rows.append(dict(base, event_id=f"bench-{user}-v{v}", event_type="view", item_id=items[(w + i + v) % len(items)], ts=ts, query=None))  # fmt: skip
                    expected[user] = (f"bench-{user}-v4", now)
                elif kind == "search":
                    rows.append(dict(base, event_id=f"bench-{user}-s", event_type="search", item_id=None, ts=now, query="red retrospot bag"))  # fmt: skip
                    expected[user] = (f"bench-{user}-s", now)
                else:
                    rows.append(dict(base, event_id=f"bench-{user}-p", event_type="purchase", item_id=item, ts=now, query=None))  # fmt: skip
                    expected[user] = (f"bench-{user}-p", now)
            t0 = time.perf_counter()
            if args.producer == "delta-rs":  # a producer outside the stream's driver JVM
                names = schema.fieldNames()
                tables.append_rows(
                    spark, conf, "bronze.events", [tuple(r[n] for n in names) for r in rows], schema
                )
            else:
                tables.append(spark.createDataFrame(rows, schema), conf, "bronze.events")
            append_s.append(time.perf_counter() - t0)
            n_events += len(rows)
            time.sleep(args.interval)

        deadline = time.monotonic() + args.timeout
        latencies: dict[str, float] = {}
        waits: dict[str, float] = {}
        work: dict[str, float] = {}
        while time.monotonic() < deadline and len(latencies) < len(expected):
            if lists_written[0] >= len(expected):
                recs = tables.read(spark, conf, nearline.RECOMMENDATIONS).select(
                    "user_id", "trigger_event_id", "batch_id", "batch_started_at"
                )
                log = tables.read(spark, conf, nearline.BATCHES).select("batch_id", "committed_at")
                for r in recs.join(log, "batch_id").collect():
                    want = expected.get(r["user_id"])
                    if want and r["trigger_event_id"] == want[0] and r["committed_at"] is not None:
                        latencies[r["user_id"]] = (r["committed_at"] - want[1]).total_seconds()
                        # event -> its micro-batch started (the append, the pick-up, the wait
                        # for the batch before), and the batch's start -> its MERGE committed.
                        waits[r["user_id"]] = (r["batch_started_at"] - want[1]).total_seconds()
                        work[r["user_id"]] = (r["committed_at"] - r["batch_started_at"]).total_seconds()
            time.sleep(1.0)
    finally:
        query.stop()
        sampler.stop()
    batches = tables.read(spark, conf, nearline.BATCHES).orderBy("batch_id").collect()
    shutil.rmtree(scratch, ignore_errors=True)
    if len(latencies) < len(expected):
        print(
            f"bench: only {len(latencies)} of {len(expected)} users got their list in time", file=sys.stderr
        )
    phases = {k: [b[k] for b in batches if b["triggers"]] for k in ("read_s", "refresh_s", "merge_s")}
    peak = max(sampler.samples, key=lambda x: x.rss_mib, default=None)
    return {
        "commit": f"{commit} ({handler.engine})",
        "users": len(latencies),
        "expected": len(expected),
        "events": n_events,
        "batches": len(batches),
        "llm_calls": server.stats()["count"] - calls_before,
        "latencies": list(latencies.values()),
        "waits": list(waits.values()),
        "work": list(work.values()),
        "append_s": append_s,
        "phases": phases,
        "fallbacks": sum(b["u2q_fallbacks"] for b in batches),
        "peak_rss_mib": peak.rss_mib if peak else float("nan"),
        "peak_jvm_mib": peak.jvm_mib if peak else float("nan"),
        "clones_left_out": sampler.clones,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", default="warehouse", help="storage root of a finished batch run")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--wave", type=int, default=5, help="users triggered per append")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between appends")
    parser.add_argument("--llm-latency-ms", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the last list")
    parser.add_argument(
        "--commit", default="auto,spark", help="nearline.commit values to measure, in turn (default both)"
    )
    parser.add_argument(
        "--producer",
        choices=("spark", "delta-rs"),
        default="spark",
        help="how the bench appends the events: a Spark job in the stream's own driver (default; "
        "it waits for the cores the refresh holds), or delta-rs from this process, as a "
        "producer outside the stream would",
    )
    parser.add_argument(
        "--driver-memory", default=None, help="spark.driver.memory of the stream (default: the profile's)"
    )
    args = parser.parse_args(argv)
    # The stream's line per micro-batch (events, triggers, where the refresh went).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jobs.nearline").setLevel(logging.INFO)

    from core.config import load_config
    from core.session import get_spark
    from testing import answers
    from testing.scripted_server import ScriptedLLMServer

    source = Path(args.warehouse)
    if not (source / "gold" / "recommendations").exists():
        print(
            f"{source}: no finished batch run (gold.recommendations): run `discovery pipeline` first",
            file=sys.stderr,
        )
        return 2
    server = ScriptedLLMServer(latency_s=args.llm_latency_ms / 1000.0, responder=answers.u2q).start()
    overrides = ["spark.shuffle_partitions=2", "tracking.enabled=false"]
    if args.driver_memory:
        overrides.append(f"spark.driver_memory={args.driver_memory}")
    spark = get_spark(load_config(overrides=overrides))
    try:
        results = [measure(spark, args, source, server, c.strip()) for c in args.commit.split(",")]
    finally:
        server.stop()
    print(f"\nnearline latency, event timestamp -> list committed ({args.users} users in waves of "
          f"{args.wave} every {args.interval:g}s, LLM {args.llm_latency_ms:.0f} ms, producer {args.producer}):")  # fmt: skip
    print(
        "| commit | users | micro-batches | p50 | p95 | max | event -> batch start p50 | batch start -> "
        "committed p50 | producer append p50 | read / refresh / merge (median per batch) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        v = r["latencies"]
        if not v:
            print(f"| {r['commit']} | 0 of {r['expected']} | {r['batches']} | - | - | - | - | - | - | - |")
            continue
        phases = " / ".join(
            f"{statistics.median(r['phases'][k]):.2f} s" if r["phases"][k] else "-"
            for k in ("read_s", "refresh_s", "merge_s")
        )
        print(
            f"| {r['commit']} | {r['users']} of {r['expected']} | {r['batches']} | {statistics.median(v):.2f} s | "
            f"{_percentile(v, 95):.2f} s | {max(v):.2f} s | {statistics.median(r['waits']):.2f} s | "
            f"{statistics.median(r['work']):.2f} s | {statistics.median(r['append_s']):.2f} s | {phases} |"
        )
    if len(results) == 2 and results[0]["latencies"] and results[1]["latencies"]:
        a, b = (statistics.median(r["latencies"]) for r in results)
        pa, pb = (_percentile(r["latencies"], 95) for r in results)
        print(
            f"\np50 ratio {results[1]['commit']} / {results[0]['commit']}: {b / a:.2f}x; p95 ratio {pb / pa:.2f}x"
        )
    for r in results:
        print(
            f"{r['commit']}: {r['events']} events, {r['llm_calls']} LLM calls, {r['fallbacks']} U2Q fallbacks, "
            f"driver peak RSS {r['peak_rss_mib']:,.0f} MiB (Python + JVM, from the stream's start; JVM "
            f"{r['peak_jvm_mib']:,.0f}; {r['clones_left_out']} sample(s) met a clone before its exec, left out)"
        )
    spark.stop()
    return 0 if all(r["users"] == r["expected"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
