"""Benchmark: LLM requests per second through Spark, and the shared rate limit.

What is measured
----------------
The ``item_profile`` agent's LLM path (``udfs.llm.run_agent``: render, Delta cache
look-up, concurrent calls in ``mapInPandas``, one Delta commit of the answers) against the
scripted OpenAI-compatible server (``testing.scripted_server``), started as its own
process with a fixed latency (default 200 ms) and a cap of C requests processed at once
(beyond it requests queue). Every run starts from an empty warehouse, so every input is
sent.

1. **Throughput.** For each (tasks, in-flight per task, cap C) the achievable rate is
   ``min(C, in_flight x tasks) / latency``. Measured rate = requests / (server's first
   request -> last response). Target: measured / achievable >= 0.90. The wall time of the
   whole ``run_agent`` (Spark jobs, Python workers, Delta commits) is printed beside it.
2. **Shared limit.** ``requests_per_minute`` (default 600) with 2 and 4 tasks, each task
   free to send 16 at once: measured requests/minute between the first and the last
   request. Target: within 5 % of the limit (a per-task limit would give tasks x limit).

Run
---
    .venv/bin/python bench/llm_throughput.py            # ~3 min
    .venv/bin/python bench/llm_throughput.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from core.config import load_config  # noqa: E402
from core.session import get_spark  # noqa: E402
from jobs.agents import run_agent  # noqa: E402
from udfs.agents import item_profile as ip  # noqa: E402


class ServerProcess:
    """The scripted server in a child process (its CPU stays out of the driver's)."""

    def __init__(self, latency_ms: float, cap: int | None):
        cmd = [
            sys.executable, "-m", "testing.scripted_server", "--port", "0",
            "--latency-ms", str(latency_ms), "--no-record-bodies",
            "--responder", "testing.answers:item_profile",
        ]  # fmt: skip
        if cap:
            cmd += ["--cap", str(cap)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("scripted server did not start")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/_stats", timeout=10) as r:
            return json.load(r)

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.base_url}/_reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def items(spark, n: int, offset: int):
    rows = [(f"i{offset + i}", f"RED HEART MUG {offset + i:06d}", 1.5, "mid", None, None) for i in range(n)]
    return spark.createDataFrame(
        rows,
        "item_id string, title string, price double, price_band string, leaf_category string, image_url string",
    )


def one_run(spark, base_url: str, n: int, tasks: int, in_flight: int, rpm: int | None, offset: int) -> float:
    root = tempfile.mkdtemp(prefix="bench-llm-")
    overrides = [
        f"storage.root={root}",
        "llm.agents.item_profile.backend=openai",
        f"llm.endpoints.default.base_url={base_url}",
        "llm.endpoints.default.api_key_env=null",
        f"llm.runtime.tasks={tasks}",
        f"llm.runtime.max_in_flight={in_flight}",
        "llm.runtime.commit_every=1000000",
        "llm.runtime.timeout_s=30",
    ]
    if rpm:
        overrides.append(f"llm.endpoints.default.requests_per_minute={rpm}")
    conf = load_config(overrides=overrides)
    started = time.perf_counter()
    run = run_agent(items(spark, n, offset), ip.AGENT, conf, ["item_id"], ip.context())
    summary = run.summary()
    wall = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    if summary["ok"] != n:
        raise RuntimeError(f"expected {n} ok answers, got {summary}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=8, help="target length of a throughput run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2, 1

    latency = args.latency_ms / 1000
    # (tasks, in-flight per task, server cap)
    configs = [(2, 8, 64), (4, 8, 64), (4, 16, 32), (4, 16, 128)]
    conf = load_config(overrides=["spark.master=local[8]", "spark.shuffle_partitions=4"])
    spark = get_spark(conf)
    print(f"# LLM throughput through Spark ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, latency {args.latency_ms:.0f} ms)\n", flush=True)  # fmt: skip
    offset = 0
    lines = [
        "| tasks | in-flight / task | cap C | achievable req/s | requests | measured req/s (median) "
        "| measured / achievable | run_agent wall s (median) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for tasks, in_flight, cap in configs:
        achievable = min(cap, in_flight * tasks) / latency
        n = int(achievable * args.seconds)
        server = ServerProcess(args.latency_ms, cap)
        rates, walls = [], []
        try:
            one_run(spark, server.base_url, 2 * tasks * in_flight, tasks, in_flight, None, 10**8)  # warm-up
            for _ in range(args.repeats):
                server.reset()
                walls.append(one_run(spark, server.base_url, n, tasks, in_flight, None, offset))
                offset += n
                s = server.stats()
                assert s["count"] == n, s["count"]
                rates.append(n / (s["last_response_at"] - s["first_request_at"]))
        finally:
            server.stop()
        rate = statistics.median(rates)
        lines.append(
            f"| {tasks} | {in_flight} | {cap} | {achievable:.0f} | {n:,} | {rate:.1f} | "
            f"{rate / achievable:.2f} | {statistics.median(walls):.1f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        "| tasks | limit req/min | requests | measured req/min | measured / limit |",
        "|--:|--:|--:|--:|--:|",
    ]
    n = max(20, int(args.rpm / 60 * args.seconds * 2.5))
    for tasks in (2, 4):
        server = ServerProcess(args.latency_ms, None)
        try:
            one_run(spark, server.base_url, n, tasks, 16, args.rpm, offset)
            offset += n
            s = server.stats()
        finally:
            server.stop()
        # Requests leave evenly spaced: (n - 1) intervals between the first and the last.
        per_min = (n - 1) / (s["last_response_at"] - latency - s["first_request_at"]) * 60
        lines.append(f"| {tasks} | {args.rpm} | {n} | {per_min:.1f} | {per_min / args.rpm:.3f} |")
        print(lines[-1], flush=True)

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
