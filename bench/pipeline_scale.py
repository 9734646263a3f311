"""Benchmark: the whole daily pipeline at growing numbers of buyers, stage by stage.

What is measured
----------------
For each size, a fresh warehouse and one run of ``discovery pipeline`` (heuristic agents,
local mode, the README's main command) in a process of its own, on a synthetic wholesale
log (``jobs/ingest/synthetic.py``: the ``synthetic`` ingest source, ``--days`` days, item
titles included, the same generator as ``discovery generate``; its generation is part of
the ingest stage's time). The ranker's first-run work is not started early
(``run.early_work=false``), so the stages run one after another and the train stage's
time includes building its training day.

Per stage, from ``silver.stage_runs`` (seconds, rows in and out) and from sampling the
driver's processes every 0.25 s (the Python driver and its JVM, which in local mode also
runs the executors' JVM work; the Python workers of UDFs are left out):

- **seconds** of the stage,
- **CPU seconds** of the driver's processes during the stage,
- **peak RSS** (MiB) of the driver's processes during the stage, and in brackets the
  JVM's part of it at that moment (the rest is the Python driver),
- **exponent** between consecutive sizes: log(seconds ratio) / log(buyers ratio); 1 is
  linear growth, above 1 a cost that grows faster than the buyers;
- **exponent by rows**: log(seconds ratio) / log(ratio of the stage's input rows, output
  rows for ingest): the cost against the work the stage was given. The synthetic catalog
  grows faster than the buyers up to 20,000 of them (``jobs.ingest.synthetic.sizes``:
  buyers / 50 categories of buyers / 10 items, at most 400 of 2,000), so between 10k and
  30k the stages that work on items get more than 3x the rows; from 20k on the catalog is
  fixed at 800k items.

Run
---
    .venv/bin/python bench/pipeline_scale.py --sizes 10000,30000,100000 --out /tmp/scale
    .venv/bin/python bench/pipeline_scale.py --sizes 500,1500 --days 90 --out /tmp/scale-smoke
    .venv/bin/python bench/pipeline_scale.py --out /tmp/scale --from-results a/results.json b/results.json

The table is printed as Markdown and written to ``<out>/results.md`` (and
``<out>/results.json``, ``<out>/scale.png``: seconds against buyers, log-log, per stage).
One run per size: on a shared machine the figures are noisy; quote them with that said.
When a size's pipeline fails, the figures of its finished stages are written to
``<out>/users_<n>/partial.json`` before the bench stops.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("pipeline_scale")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float  # time.time()
    rss_mib: float
    cpu_s: float
    jvm_mib: float = 0.0  # the java process's share of rss_mib (the rest: the Python driver)


def process_children() -> dict[int, list[int]]:
    """Parent pid -> the pids of its live children, for every process (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


@dataclass
class Sampler:
    """Samples the RSS and CPU time of a process and its descendants, Python UDF workers
    (``pyspark.daemon`` / ``pyspark.worker``) left out.

    A child running its parent's program is left out too: a fork or ``posix_spawn`` clone
    that has not yet called ``exec`` (the JVM starts ``chmod``, ``bash`` and the Python
    daemon that way, the Python driver its subprocesses) shares its parent's memory, so
    its RSS is the parent's, and adding it would count the JVM twice for that instant.
    ``clones`` counts the samples that met one, ``clone_peak_mib`` the largest left out.
    """

    pid: int
    every_s: float = 0.25
    nmt_above_mib: float = 0.0  # > 0: record the JVM's native memory summary above this RSS
    samples: list[Sample] = field(default_factory=list)
    nmt: list[dict] = field(default_factory=list)
    java_pid: int = 0
    clones: int = 0
    clone_peak_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _tree(self) -> list[int]:
        children = process_children()
        out, todo = [], [(self.pid, "")]
        while todo:
            pid, parent_exe = todo.pop()
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read()
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
                continue
            if exe == parent_exe:  # a clone before its exec: the parent's memory again
                self._note_clone(pid)
                continue
            out.append(pid)
            todo.extend((child, exe) for child in children.get(pid, []))
        return out

    def _note_clone(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                mib = int(fh.read().split()[1]) * PAGE / 2**20
        except (OSError, IndexError, ValueError):
            return
        self.clones += 1
        self.clone_peak_mib = max(self.clone_peak_mib, mib)

    def sample(self) -> None:
        rss = cpu = jvm = 0.0
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    pages = int(fh.read().split()[1]) * PAGE
                with open(f"/proc/{pid}/stat") as fh:
                    stat = fh.read()
                fields = stat.rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
            except (OSError, IndexError, ValueError):
                continue
            rss += pages
            if "(java)" in stat:
                jvm += pages
                self.java_pid = pid
        self.samples.append(Sample(time.time(), rss / 2**20, cpu, jvm / 2**20))
        if self.nmt_above_mib and jvm / 2**20 > self.nmt_above_mib and self.java_pid:
            self.native_memory(jvm / 2**20)

    def native_memory(self, jvm_mib: float) -> None:
        """The JVM's own account of its memory (``jcmd VM.native_memory summary``; needs
        ``-XX:NativeMemoryTracking=summary``), at most every 20 s while the JVM is above
        ``nmt_above_mib``: where memory outside the heap goes."""
        now = time.time()
        if self.nmt and now - self.nmt[-1]["t"] < 20:
            return
        jcmd = Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "jcmd"
        try:
            text = subprocess.run([str(jcmd), str(self.java_pid), "VM.native_memory", "summary", "scale=MB"],
                                  capture_output=True, text=True, timeout=30).stdout  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"jcmd failed: {e}"
        self.nmt.append({"t": now, "jvm_rss_mib": round(jvm_mib), "summary": text})

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def start(self) -> Sampler:
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def between(self, start: float, end: float) -> tuple[Sample, float]:
        """(the sample of peak RSS, CPU seconds) in [start, end]."""
        inside = [s for s in self.samples if start <= s.t <= end]
        before = [s for s in self.samples if s.t <= start] or self.samples[:1]
        after = [s for s in self.samples if s.t >= end] or self.samples[-1:]
        peak = max(inside, key=lambda s: s.rss_mib, default=after[0])
        # CPU time of processes still alive at both ends (a process that ended in between
        # took its ticks with it: a small undercount at most)
        return peak, max(after[0].cpu_s - before[-1].cpu_s, 0.0)


def run_size(
    users: int, days: int, out: Path, driver_memory: str, extra_sets: list[str], nmt_above_mib: float = 0.0
) -> dict:
    """One pipeline run on a fresh warehouse of ``users`` buyers; per-stage figures."""
    from deltalake import DeltaTable

    folder = out / f"users_{users}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    source = {"name": "syn", "format": "synthetic", "users": users, "days": days, "seed": 7}
    sets = [
        f"storage.root={folder / 'warehouse'}", f"ingest.sources=[{json.dumps(source)}]", "trends.sources=[]",
        "tracking.enabled=false", f"spark.driver_memory={driver_memory}", "run.early_work=false", *extra_sets,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "jobs", "pipeline", *[x for s in sets for x in ("--set", s)]]
    log.warning("%s buyers: %s", f"{users:,}", " ".join(cmd[1:4]))
    started = time.time()
    with open(folder / "pipeline.log", "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, nmt_above_mib=nmt_above_mib).start()
        rc = proc.wait()
        sampler.stop()
    wall = time.time() - started
    # The stages that finished, also when a later one failed: their figures are kept
    # (``<out>/users_<n>/partial.json``) before the failure is raised.
    stage_runs = folder / "warehouse" / "silver" / "stage_runs"
    runs = DeltaTable(str(stage_runs)).to_pandas() if (stage_runs / "_delta_log").is_dir() else None
    stages = []
    for r in runs.sort_values("finished_at").itertuples() if runs is not None else []:
        end = r.finished_at.to_pydatetime().replace(tzinfo=dt.timezone.utc).timestamp()
        peak, cpu = sampler.between(end - r.seconds, end)
        stages.append({"stage": r.stage, "seconds": float(r.seconds), "cpu_s": cpu, "peak_rss_mib": peak.rss_mib,
                       "peak_jvm_mib": peak.jvm_mib, "rows_in": int(r.rows_in), "rows_out": int(r.rows_out)})  # fmt: skip
    peak_all = max((s.rss_mib for s in sampler.samples), default=float("nan"))
    if rc != 0:
        partial = {"users": users, "days": days, "failed_after_s": wall, "exit_code": rc, "stages": stages}
        (folder / "partial.json").write_text(json.dumps(partial, indent=1))
        tail = (folder / "pipeline.log").read_text(errors="replace")[-3000:]
        raise SystemExit(
            f"pipeline at {users:,} buyers exited {rc} (the {len(stages)} finished stage(s) in "
            f"{folder / 'partial.json'}):\n{tail}"
        )
    log.warning("%s buyers: %d sample(s) met a clone before its exec, the largest %.0f MiB (left out)",
                f"{users:,}", sampler.clones, sampler.clone_peak_mib)  # fmt: skip
    if sampler.nmt:
        (folder / "native_memory.json").write_text(json.dumps(sampler.nmt, indent=1))
    return {"users": users, "days": days, "wall_s": wall, "peak_rss_mib": peak_all, "stages": stages,
            "clones_left_out": sampler.clones, "clone_peak_mib": sampler.clone_peak_mib}  # fmt: skip


def exponent(a: float, b: float, n_a: int, n_b: int) -> float:
    return (
        math.log(b / a) / math.log(n_b / n_a)
        if a > 0 and b > 0 and n_a > 0 and n_b > 0 and n_a != n_b
        else float("nan")
    )


def jvm_part(stage: dict) -> str:
    """The JVM's MiB at the stage's peak ("-" in results from before the split)."""
    return f"{stage['peak_jvm_mib']:.0f}" if "peak_jvm_mib" in stage else "-"


def work(stage: dict) -> int:
    """A stage's input rows (its output rows for ingest, whose input is outside the tables)."""
    return stage["rows_in"] or stage["rows_out"]


def table(results: list[dict]) -> str:
    sizes = [r["users"] for r in results]
    names = [s["stage"] for s in results[0]["stages"]]
    by = [{s["stage"]: s for s in r["stages"]} for r in results]
    head = ["stage"] + [f"{n:,}: s / CPU s / peak MiB (JVM) / rows out" for n in sizes]
    head += [f"exp {a:,}->{b:,}" for a, b in zip(sizes, sizes[1:], strict=False)]
    head += [f"exp by rows {a:,}->{b:,}" for a, b in zip(sizes, sizes[1:], strict=False)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "--:|" * (len(head) - 1)]
    for name in names:
        cells = [name]
        for b in by:
            s = b.get(name)
            cells.append(
                f"{s['seconds']:.1f} / {s['cpu_s']:.0f} / {s['peak_rss_mib']:.0f} ({jvm_part(s)})"
                f" / {s['rows_out']:,}"
                if s
                else "-"
            )
        pairs = [(by[i].get(name), by[i + 1].get(name)) for i in range(len(by) - 1)]
        for i, (a, c) in enumerate(pairs):
            cells.append(
                f"{exponent(a['seconds'], c['seconds'], sizes[i], sizes[i + 1]):.2f}" if a and c else "-"
            )
        for a, c in pairs:
            cells.append(f"{exponent(a['seconds'], c['seconds'], work(a), work(c)):.2f}" if a and c else "-")
        lines.append("| " + " | ".join(cells) + " |")
    total = ["**whole run (wall)**"] + [
        f"{r['wall_s']:.0f} s, peak {r['peak_rss_mib']:.0f} MiB" for r in results
    ]
    total += [f"{exponent(a['wall_s'], b['wall_s'], a['users'], b['users']):.2f}" for a, b in zip(results, results[1:], strict=False)]  # fmt: skip
    total += ["-"] * (len(results) - 1)
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = [r["users"] for r in results]
    for name in [s["stage"] for s in results[0]["stages"]]:
        secs = [
            next((s["seconds"] for s in r["stages"] if s["stage"] == name), float("nan")) for r in results
        ]
        ax.plot(sizes, secs, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("buyers")
    ax.set_ylabel("seconds")
    ax.set_title("discovery pipeline: seconds per stage against buyers")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,30000,100000", help="numbers of buyers, comma-separated")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more pipeline settings, k=v")
    parser.add_argument(
        "--from-results", nargs="+", type=Path, metavar="JSON",
        help="run nothing: one table (and plot) from the results.json of earlier runs, sizes in order",
    )  # fmt: skip
    parser.add_argument(
        "--native-memory-above", type=float, default=0.0, metavar="MIB",
        help="run the JVM with -XX:NativeMemoryTracking=summary and write its summary to "
        "<out>/users_<n>/native_memory.json whenever the JVM's RSS is above MIB (every 20 s at most)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.native_memory_above:
        options = {"spark.driver.extraJavaOptions": "-XX:NativeMemoryTracking=summary"}
        args.sets.append(f"spark.extra={json.dumps(options)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    sizes = [int(x) for x in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.from_results:
        results = sorted(
            (r for f in args.from_results for r in json.loads(f.read_text())), key=lambda r: r["users"]
        )
        sizes = []
    for users in sizes:
        results.append(
            run_size(users, args.days, args.out, args.driver_memory, args.sets, args.native_memory_above)
        )
        log.warning("%s buyers: %.0f s, peak driver RSS %.0f MiB", f"{users:,}", results[-1]["wall_s"],
                    results[-1]["peak_rss_mib"])  # fmt: skip
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    (args.out / "results.md").write_text(text + "\n")
    if len(results) > 1:
        plot(results, args.out / "scale.png")


if __name__ == "__main__":
    main()
