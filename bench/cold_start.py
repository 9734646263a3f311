"""The daily pipeline in a fresh JVM on the tests' synthetic warehouse (24 buyers, 60
days), once per JVM or Spark setting, side by side: what a cold start costs and which
settings cut it.

Why: on data this small the first pipeline of a process costs several times a rerun
(about 170 s against 50-70 s for the evaluation test's as-of pipelines), and the JVM
does 90 % of the work. What it spends it on was the question: the JIT warming up (the
``c1`` setting: slower), or Janino compiling a class for each new plan and expression
(``interpreted``: 0.75x the time, docs/benchmarks.md). Each run is its own process with its own Spark
session, so each starts cold; the settings take turns (``--repeats``), and the table
gives each setting's median wall seconds and median CPU seconds of the process tree
(driver, JVM, Python workers), with the ratio to the first setting.

    python bench/cold_start.py                         # every named setting, once each
    python bench/cold_start.py --settings default c1 --repeats 2

Settings (``SETTINGS``): ``default`` (the tests' session settings,
``tests/conftest.py: session_settings``, with Spark's code generation on),
``c1`` (the JVM's JIT stops at its first tier: ``-XX:TieredStopAtLevel=1``),
``interpreted`` (no generated code: Spark evaluates expressions and plans by its
interpreters), ``c1+interpreted``, ``interpreted+serial_gc`` (the JVM's single-threaded
collector instead of G1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.pipeline_scale import process_children  # noqa: E402
from tests.conftest import NO_CODEGEN, session_settings, synthetic_warehouse  # noqa: E402

C1 = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}
INTERPRETED = NO_CODEGEN
SERIAL_GC = {"spark.driver.extraJavaOptions": "-XX:+UseSerialGC"}
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "c1": C1,
    "interpreted": INTERPRETED,
    "c1+interpreted": {**C1, **INTERPRETED},
    "interpreted+serial_gc": {**INTERPRETED, **SERIAL_GC},
}


def _tree_cpu_s(root: int) -> dict[str, float]:
    """CPU seconds (user + system, with those of reaped children) of ``root`` and every
    live descendant (from /proc), by part: ``jvm``, ``python_workers`` (the UDF daemon and
    its workers), ``driver`` (this process and anything else)."""
    children = process_children()
    tick, todo = os.sysconf("SC_CLK_TCK"), [(root, "driver")]
    parts = {"jvm": 0.0, "python_workers": 0.0, "driver": 0.0}
    while todo:
        pid, part = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"java" in cmd.split(b"\0")[0]:
            part = "jvm"
        elif b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
            part = "python_workers"
        parts[part] += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
        todo.extend((child, part) for child in children.get(pid, []))
    return parts


def child(setting: str) -> dict:
    """One cold run: a new session with ``setting``, the whole daily pipeline."""
    from core.config import load_config
    from core.session import get_spark
    from jobs.stages import daily_stages, run_stages

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    root = Path(tempfile.mkdtemp(prefix="cold_start_"))
    conf = load_config(
        overrides=session_settings(SETTINGS[setting]) + synthetic_warehouse(root / "warehouse")
    )
    started = time.perf_counter()
    spark = get_spark(conf)
    run_stages(spark, conf, daily_stages())
    wall = time.perf_counter() - started
    recs = spark.read.format("delta").load(str(root / "warehouse" / "gold" / "recommendations")).count()
    parts = _tree_cpu_s(os.getpid())
    spark.stop()
    return {"setting": setting, "wall_s": wall, "cpu_s": sum(parts.values()), "cpu_by_part": parts,
            "recommendations": recs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench.cold_start")
    runs: dict[str, list[dict]] = {s: [] for s in args.settings}
    for i in range(args.repeats):
        for setting in args.settings:
            out = subprocess.run(
                [sys.executable, __file__, "--child", setting], capture_output=True, text=True, cwd=REPO
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                raise SystemExit(f"{setting} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            result = json.loads(line[len("RESULT ") :])
            runs[setting].append(result)
            split = ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_by_part"].items())
            log.info("repeat %d/%d %s: %.1f s wall, %.1f s CPU (%s), %d list rows", i + 1, args.repeats,
                     setting, result["wall_s"], result["cpu_s"], split, result["recommendations"])  # fmt: skip
    base = args.settings[0]
    med = {s: (statistics.median(r["wall_s"] for r in rs), statistics.median(r["cpu_s"] for r in rs))
           for s, rs in runs.items()}  # fmt: skip
    print(
        f"{'setting':16s} {'wall s':>8s} {'ratio':>6s} {'CPU s':>8s} {'ratio':>6s}  (medians of {args.repeats})"
    )
    for s, (wall, cpu) in med.items():
        print(f"{s:16s} {wall:8.1f} {wall / med[base][0]:6.2f} {cpu:8.1f} {cpu / med[base][1]:6.2f}")


if __name__ == "__main__":
    main()
