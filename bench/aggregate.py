"""Benchmark: the project's Spark aggregation against DuckDB on the same Parquet files.

What is measured
----------------
``silver.user_week_category`` (user x ISO week x leaf category: a count per event type,
net amount and quantity over purchases and cancellations, distinct items and the five
most frequent search terms) computed from synthetic events in two ways:

- **Spark** (local mode): read the events and items Parquet files, join events to items on
  ``item_id`` for ``leaf_category`` (``'unknown'`` when there is none) and call
  ``jobs.aggregate.user_week_category(df, 5, 3)``, the project's own function.
- **DuckDB**: the same result written as one SQL query over the same files (the stop words
  and event types are taken from the project so that both sides use the same lists).

Both sides write their result as plain Parquet (no Delta), so only the aggregation
differs. One timed run = read + aggregate + write: its wall clock, and the CPU seconds of
the engine's process (the local-mode JVM for Spark, this process for DuckDB), which other
work on a shared machine disturbs less. The Spark session (JVM start) is created once and
is not timed; each size gets one untimed Spark warm-up (JIT), then ``--repeats`` runs of
each engine, alternating Spark and DuckDB. Each DuckDB run uses a fresh in-memory
connection with ``threads`` = the number of cores.

At the smallest size the two outputs are compared (row count, sum of every numeric
column, 1,000 sampled keys row by row, and a full row-by-row join); the script prints
PASS or FAIL and exits with status 1 on FAIL, before measuring the larger sizes.

Data (``jobs.ingest.synthetic.generate``, 365 days, seed 7, a ``dt`` date column added)
is written once under ``<out>/<size>/data/`` with a marker file and reused while the
marker matches; ``--regenerate`` forces a new copy. The engines write to
``<out>/<size>/result_spark/`` and ``<out>/<size>/result_duckdb.parquet``. Results are printed as a Markdown table and
written to ``<out>/results.md``. The figures are medians of a few runs on whatever
machine runs this; on a shared machine they are noisy.

Run
---
    .venv/bin/python bench/aggregate.py --quick                  # smoke test, ~0.2-0.8 M events
    .venv/bin/python bench/aggregate.py --sizes 5,10,20 --repeats 3
    .venv/bin/python bench/aggregate.py --sizes 5 --engines spark --shuffle-partitions 4 \\
        --spark-conf spark.sql.adaptive.enabled=false           # one Spark setting at a time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/aggregate.py` without an installed project
    sys.path.insert(0, str(ROOT))

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from core.categories import UNKNOWN_CATEGORY  # noqa: E402
from jobs.aggregate import STOPWORDS, user_week_category  # noqa: E402
from jobs.ingest.staging import EVENT_TYPES  # noqa: E402
from jobs.ingest.synthetic import generate  # noqa: E402

DAYS = 365
SEED = 7
EVENTS_PER_USER_DAY = 0.5
# generate() yields about 0.9 x users x days x rate events (the Pareto activity is capped);
# ask for 5 % more users than that suggests so that a size of N million gives >= N million.
EVENTS_PER_USER = 0.9 * DAYS * EVENTS_PER_USER_DAY
USER_MARGIN = 1.05
TOP_TERMS = 5
MIN_TERM_LENGTH = 3
EVENTS_PER_FILE = 2_500_000
MARKER = "_bench_data.json"
DATA_VERSION = 1  # bump when the layout of the generated files changes
KEYS = ("user_id", "week_start", "leaf_category")
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts", "dt", "query", "quantity", "amount")
QUICK_SIZES = (0.2, 0.4, 0.8)
FULL_SIZES = (5.0, 10.0, 20.0)


@dataclass(frozen=True)
class Run:
    """One timed run: wall clock and CPU seconds of the engine's process, 1-min load average."""

    wall: float
    cpu: float
    load: float


@dataclass
class Timings:
    """The runs of one size."""

    label: str
    events: int
    output_rows: int = 0
    spark_warmup: Run | None = None
    spark: list[Run] = field(default_factory=list)
    duckdb: list[Run] = field(default_factory=list)

    def runs(self, engine: str) -> list[Run]:
        return self.spark if engine == "spark" else self.duckdb


# --- data -----------------------------------------------------------------------------


def size_label(millions: float) -> str:
    return f"{millions:g}M"


def users_for(millions: float) -> int:
    return math.ceil(millions * 1e6 * USER_MARGIN / EVENTS_PER_USER)


def data_params(millions: float) -> dict[str, object]:
    return {
        "version": DATA_VERSION,
        "users": users_for(millions),
        "days": DAYS,
        "seed": SEED,
        "events_per_user_day": EVENTS_PER_USER_DAY,
    }


def read_marker(folder: Path) -> dict[str, object] | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_data(spark: SparkSession, folder: Path, millions: float, regenerate: bool) -> int:
    """Write events and items Parquet under ``folder`` unless a matching copy is there.

    Returns the number of events.
    """
    params = data_params(millions)
    marker = read_marker(folder)
    if not regenerate and marker is not None and marker.get("params") == params:
        print(f"[{size_label(millions)}] reusing {folder} ({marker['events']:,} events)", flush=True)
        return int(marker["events"])
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    print(f"[{size_label(millions)}] generating {params['users']:,} users x {DAYS} days ...", flush=True)
    events, items = generate(
        spark, int(params["users"]), days=DAYS, seed=SEED, events_per_user_day=EVENTS_PER_USER_DAY
    )
    events = events.withColumn("dt", F.to_date("ts")).select(*EVENT_COLUMNS)
    # Files of ~2.5 M events in time order, as a daily ingest would append them.
    files = max(2, round(millions * 1e6 / EVENTS_PER_FILE))
    events.repartitionByRange(files, "ts").sortWithinPartitions("ts").write.parquet(str(folder / "events"))
    items.coalesce(1).write.parquet(str(folder / "items"))
    n_events = spark.read.parquet(str(folder / "events")).count()
    n_items = spark.read.parquet(str(folder / "items")).count()
    (folder / MARKER).write_text(json.dumps({"params": params, "events": n_events, "items": n_items}))
    print(
        f"[{size_label(millions)}] wrote {n_events:,} events, {n_items:,} items "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return n_events


# --- engines --------------------------------------------------------------------------


def spark_session(shuffle_partitions: int, extra: dict[str, str]) -> SparkSession:
    builder = (
        SparkSession.builder.master("local[*]")
        .appName("bench-aggregate")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_result(spark: SparkSession, data: Path, broadcast_items: bool) -> DataFrame:
    """user_week_category from the Parquet files, by the project's function."""
    events = spark.read.parquet(str(data / "events"))
    cats = spark.read.parquet(str(data / "items")).select("item_id", "leaf_category")
    if broadcast_items:  # as jobs.aggregate.with_category does
        cats = F.broadcast(cats)
    with_cat = events.join(cats, "item_id", "left").withColumn(
        "leaf_category", F.coalesce(F.col("leaf_category"), F.lit(UNKNOWN_CATEGORY))
    )
    return user_week_category(with_cat, TOP_TERMS, MIN_TERM_LENGTH)


def own_cpu_seconds() -> float:
    """CPU seconds of this process: the Py4J client, or DuckDB's threads."""
    t = os.times()
    return t.user + t.system


def jvm_cpu_seconds(spark: SparkSession) -> float:
    """CPU seconds of the local-mode JVM (driver and executor threads), nan if unknown."""
    try:
        pid = spark.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return float("nan")


def run_spark(spark: SparkSession, data: Path, out: Path, broadcast_items: bool) -> Run:
    load = os.getloadavg()[0]
    cpu0, started = jvm_cpu_seconds(spark) + own_cpu_seconds(), time.perf_counter()
    spark_result(spark, data, broadcast_items).write.mode("overwrite").parquet(str(out))
    wall = time.perf_counter() - started
    return Run(wall, jvm_cpu_seconds(spark) + own_cpu_seconds() - cpu0, load)


def sql_list(words: list[str]) -> str:
    return "[" + ", ".join("'" + w.replace("'", "''") + "'" for w in words) + "]"


def duckdb_sql(data: Path) -> str:
    """The same table as user_week_category, as one DuckDB query."""
    events = (data / "events" / "*.parquet").as_posix()
    items = (data / "items" / "*.parquet").as_posix()
    counts = ",\n        ".join(f"count(*) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in EVENT_TYPES)
    gmv = "event_type IN ('purchase', 'cancel')"
    stop = sql_list(sorted(STOPWORDS))
    return f"""
WITH ev AS (
    SELECT e.user_id, e.item_id, e.event_type, e.query, e.quantity, e.amount,
           CAST(date_trunc('week', e.dt) AS DATE) AS week_start,
           coalesce(i.leaf_category, '{UNKNOWN_CATEGORY}') AS leaf_category
    FROM read_parquet('{events}') e
    LEFT JOIN (SELECT item_id, leaf_category FROM read_parquet('{items}')) i
        ON e.item_id = i.item_id
),
measures AS (
    SELECT user_id, week_start, leaf_category,
        {counts},
        count(*) AS n_events,
        round(sum(amount) FILTER (WHERE {gmv}), 2) AS amount,
        CAST(sum(quantity) FILTER (WHERE {gmv}) AS BIGINT) AS quantity,
        count(DISTINCT item_id) AS distinct_items
    FROM ev
    GROUP BY user_id, week_start, leaf_category
),
search_terms AS (
    SELECT user_id, week_start, leaf_category,
        unnest(list_distinct(list_filter(
            regexp_split_to_array(lower(query), '[^\\p{{L}}\\p{{N}}]+'),
            lambda w: length(w) >= {MIN_TERM_LENGTH}
                 AND NOT regexp_full_match(w, '\\p{{N}}+')
                 AND NOT list_contains({stop}, w)
        ))) AS term
    FROM ev
    WHERE event_type = 'search' AND query IS NOT NULL
),
term_counts AS (
    SELECT user_id, week_start, leaf_category, term, count(*) AS n
    FROM search_terms
    GROUP BY user_id, week_start, leaf_category, term
),
top_terms AS (
    SELECT user_id, week_start, leaf_category,
        list(term ORDER BY n DESC, term)[1:{TOP_TERMS}] AS top_search_terms
    FROM term_counts
    GROUP BY user_id, week_start, leaf_category
)
SELECT m.user_id,
    strftime(m.week_start, '%G-W%V') AS iso_week,
    m.week_start,
    m.leaf_category,
    {", ".join(f"m.n_{t}" for t in EVENT_TYPES)},
    m.n_events, m.amount, m.quantity, m.distinct_items,
    coalesce(t.top_search_terms, CAST([] AS VARCHAR[])) AS top_search_terms
FROM measures m
LEFT JOIN top_terms t
    ON m.user_id = t.user_id AND m.week_start = t.week_start AND m.leaf_category = t.leaf_category
"""


def run_duckdb(data: Path, out: Path, threads: int) -> Run:
    load = os.getloadavg()[0]
    cpu0, started = own_cpu_seconds(), time.perf_counter()
    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {threads}")
        con.execute(f"COPY ({duckdb_sql(data)}) TO '{out.as_posix()}' (FORMAT parquet)")
    finally:
        con.close()
    return Run(time.perf_counter() - started, own_cpu_seconds() - cpu0, load)


# --- correctness ----------------------------------------------------------------------

MEASURES = [f"n_{t}" for t in EVENT_TYPES] + ["n_events", "quantity", "distinct_items"]
CENT = 0.01 + 1e-9


def _rows_differ(a: str, b: str) -> str:
    """SQL predicate: the rows ``a`` and ``b`` (same key) differ beyond amount rounding."""
    parts = [f"{a}.{c} IS DISTINCT FROM {b}.{c}" for c in MEASURES + ["iso_week", "top_search_terms"]]
    parts.append(f"({a}.amount IS NULL) <> ({b}.amount IS NULL)")
    parts.append(f"abs({a}.amount - {b}.amount) > {CENT}")
    return " OR ".join(parts)


def compare_outputs(spark_out: Path, duck_out: Path, sample: int = 1000) -> bool:
    """Print the comparison of the two results; True when they agree."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW s AS SELECT * FROM read_parquet('{(spark_out / '*.parquet').as_posix()}')")
    con.execute(f"CREATE VIEW d AS SELECT * FROM read_parquet('{duck_out.as_posix()}')")
    on = " AND ".join(f"s.{k} = d.{k}" for k in KEYS)
    ok = True

    def check(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"  {'ok  ' if passed else 'FAIL'} {name}: {detail}", flush=True)

    print("correctness check (Spark vs DuckDB output):", flush=True)
    n_s, n_d = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("s", "d"))
    check("row count", n_s == n_d, f"spark {n_s:,}, duckdb {n_d:,}")
    keys = ", ".join(KEYS)
    dup = con.execute(f"SELECT count(*) - count(DISTINCT ({keys})) FROM s").fetchone()[0]
    check("unique keys", dup == 0, f"{dup} duplicate keys in the Spark output")

    sums = ", ".join(f"sum({c})" for c in MEASURES)
    s_sums, d_sums = (con.execute(f"SELECT {sums} FROM {t}").fetchone() for t in ("s", "d"))
    bad = [f"{c}: {x} vs {y}" for c, x, y in zip(MEASURES, s_sums, d_sums, strict=True) if x != y]
    check("sums of integer columns", not bad, "; ".join(bad) or f"{len(MEASURES)} columns equal")
    sampled = con.execute(
        f"""SELECT count(*), count(d.user_id),
                   count(*) FILTER (WHERE d.user_id IS NOT NULL AND ({_rows_differ("s", "d")})),
                   count(*) FILTER (WHERE s.amount IS DISTINCT FROM d.amount)
            FROM (SELECT * FROM s ORDER BY hash({keys}), {keys} LIMIT {sample}) s
            LEFT JOIN d ON {on}"""
    ).fetchone()
    n, found, differ, amount_differ = sampled
    check(
        f"{sample:,} sampled keys",
        found == n and differ == 0,
        f"{n:,} sampled, {found:,} found in DuckDB output, {differ} rows differ "
        f"(amount differs in the last cent in {amount_differ})",
    )
    full = con.execute(
        f"""SELECT count(*) FILTER (WHERE s.user_id IS NULL OR d.user_id IS NULL),
                   count(*) FILTER (WHERE s.user_id IS NOT NULL AND d.user_id IS NOT NULL
                                    AND ({_rows_differ("s", "d")})),
                   count(*) FILTER (WHERE s.amount IS DISTINCT FROM d.amount),
                   count(*) FILTER (WHERE len(s.top_search_terms) > 0)
            FROM s FULL OUTER JOIN d ON {on}"""
    ).fetchone()
    missing, differ, amount_differ, with_terms = full
    check(
        "all rows",
        missing == 0 and differ == 0,
        f"{missing} keys on one side only, {differ} rows differ, "
        f"{amount_differ} amounts differ by 1 cent, {with_terms:,} rows with search terms",
    )
    # amount is a rounded sum of doubles: summed in another order, a total that lies on a
    # half cent may round the other way, so each row may differ by one cent (counted above).
    amount_sql = "SELECT sum(CAST(amount AS DECIMAL(38, 2))), count(amount) FROM {}"
    (s_amt, s_cnt), (d_amt, d_cnt) = (con.execute(amount_sql.format(t)).fetchone() for t in ("s", "d"))
    check(
        "sum of amount",
        s_cnt == d_cnt and abs(s_amt - d_amt) <= Decimal("0.01") * amount_differ,
        f"spark {s_amt} ({s_cnt:,} non-null), duckdb {d_amt} ({d_cnt:,} non-null)",
    )
    con.close()
    print(f"correctness: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


# --- report ---------------------------------------------------------------------------


def machine_info(duckdb_threads: int, spark: SparkSession) -> list[str]:
    import pyspark

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    conf = spark.conf
    return [
        f"- machine: nproc {len(os.sched_getaffinity(0))} ({cpu}), RAM {mem_gib:.1f} GiB, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, pyspark {pyspark.__version__}, duckdb {duckdb.__version__}, "
        f"{java[0] if java else 'java ?'}",
        f"- Spark: local[*], driver memory 6g, shuffle partitions "
        f"{conf.get('spark.sql.shuffle.partitions')}, AQE {conf.get('spark.sql.adaptive.enabled')}, "
        f"maxPartitionBytes {conf.get('spark.sql.files.maxPartitionBytes')}; DuckDB threads {duckdb_threads}",
    ]


def count_rows(pattern: Path) -> int:
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT count(*) FROM read_parquet('{pattern.as_posix()}')").fetchone()[0]
    finally:
        con.close()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def wall(runs: list[Run]) -> float:
    return median([r.wall for r in runs])


def cpu(runs: list[Run]) -> float:
    return median([r.cpu for r in runs])


def results_table(rows: list[Timings]) -> list[str]:
    lines = [
        "| size | events | output rows | Spark median s | DuckDB median s | Spark / DuckDB "
        "| Spark events/s | Spark s per M events | DuckDB s per M events "
        "| Spark CPU s | DuckDB CPU s | Spark / DuckDB (CPU) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in rows:
        s, d = wall(t.spark), wall(t.duckdb)
        cs, cd = cpu(t.spark), cpu(t.duckdb)
        m = t.events / 1e6
        lines.append(
            f"| {t.label} | {t.events:,} | {t.output_rows:,} | {s:.2f} | {d:.2f} | {s / d:.2f}x "
            f"| {t.events / s:,.0f} | {s / m:.2f} | {d / m:.2f} | {cs:.1f} | {cd:.1f} | {cs / cd:.2f}x |"
        )
    return lines


def runs_table(rows: list[Timings]) -> list[str]:
    def fmt(runs: list[Run]) -> str:
        return ", ".join(f"{r.wall:.2f} ({r.cpu:.0f} cpu, load {r.load:.1f})" for r in runs)

    lines = [
        "| size | Spark warm-up s | Spark runs s | DuckDB runs s |",
        "|---|---|---|---|",
    ]
    for t in rows:
        warm = fmt([t.spark_warmup]) if t.spark_warmup else "-"
        lines.append(f"| {t.label} | {warm} | {fmt(t.spark)} | {fmt(t.duckdb)} |")
    return lines


def growth_lines(rows: list[Timings]) -> list[str]:
    """Time per million events at each size, relative to the smallest size."""
    lines = []
    for engine in ("spark", "duckdb"):
        if len(rows) < 2 or not rows[0].runs(engine):
            continue
        for name, measure in (("wall", wall), ("CPU", cpu)):
            per_m = [measure(t.runs(engine)) / (t.events / 1e6) for t in rows]
            rel = ", ".join(f"{t.label} {p / per_m[0]:.2f}" for t, p in zip(rows, per_m, strict=True))
            lines.append(
                f"- {engine} {name} time per M events, relative to {rows[0].label}: {rel} (1.00 = linear)"
            )
    return lines


def report(rows: list[Timings], header: list[str], repeats: int) -> str:
    return "\n".join(
        [
            "## Aggregation benchmark: Spark (jobs.aggregate.user_week_category) vs DuckDB",
            "",
            f"Median of {repeats} runs per engine (read Parquet + aggregate + write Parquet), after one "
            "untimed Spark warm-up per size; engines alternate. Wall clock is what a user waits; CPU "
            "seconds (user + system of the engine's process) are less sensitive to other work on a "
            "shared machine. Medians on a noisy machine: see the load averages of each run below.",
            "",
            *header,
            "",
            *results_table(rows),
            "",
            *growth_lines(rows),
            "",
            "Individual runs, wall seconds (CPU seconds, 1-min load average at the start):",
            "",
            *runs_table(rows),
            "",
        ]
    )


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default=",".join(f"{s:g}" for s in FULL_SIZES),
        help="event counts in millions, comma-separated (default 5,10,20)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test with {','.join(f'{s:g}' for s in QUICK_SIZES)} million events",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine and size")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "out" / "aggregate",
        help="folder for data, outputs and results.md",
    )
    p.add_argument("--regenerate", action="store_true", help="write the data again")
    p.add_argument("--shuffle-partitions", type=int, default=8)
    p.add_argument(
        "--no-broadcast",
        action="store_true",
        help="let Spark choose the items join instead of broadcasting items",
    )
    p.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark setting, repeatable",
    )
    p.add_argument("--duckdb-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--engines", default="spark,duckdb", help="spark,duckdb or one of them")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--explain", action="store_true", help="print Spark's physical plan")
    return p.parse_args(argv)


def show(run: Run) -> str:
    return f"{run.wall:.2f} s wall, {run.cpu:.1f} s CPU, load {run.load:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted(QUICK_SIZES if args.quick else (float(s) for s in args.sizes.split(",")))
    engines = set(args.engines.split(","))
    extra = dict(kv.split("=", 1) for kv in args.spark_conf)
    spark = spark_session(args.shuffle_partitions, extra)
    header = machine_info(args.duckdb_threads, spark)
    if extra:
        header.append(f"- extra Spark settings: {extra}")
    print("\n".join(header), flush=True)
    broadcast = not args.no_broadcast

    rows: list[Timings] = []
    for i, millions in enumerate(sizes):
        label = size_label(millions)
        folder = args.out / label
        data = folder / "data"
        n_events = ensure_data(spark, data, millions, args.regenerate)
        spark_out, duck_out = folder / "result_spark", folder / "result_duckdb.parquet"
        t = Timings(label, n_events)
        if args.explain and i == 0:
            spark_result(spark, data, broadcast).explain()
        if "spark" in engines:
            t.spark_warmup = run_spark(spark, data, spark_out, broadcast)
            print(f"[{label}] spark warm-up {show(t.spark_warmup)}", flush=True)
        for r in range(args.repeats):
            if "spark" in engines:
                t.spark.append(run_spark(spark, data, spark_out, broadcast))
                print(f"[{label}] run {r + 1} spark  {show(t.spark[-1])}", flush=True)
            if "duckdb" in engines:
                t.duckdb.append(run_duckdb(data, duck_out, args.duckdb_threads))
                print(f"[{label}] run {r + 1} duckdb {show(t.duckdb[-1])}", flush=True)
        result = spark_out if "spark" in engines else duck_out
        pattern = (result / "*.parquet") if result.is_dir() else result
        t.output_rows = count_rows(pattern)
        rows.append(t)
        if i == 0 and engines == {"spark", "duckdb"} and not args.no_check:
            if not compare_outputs(spark_out, duck_out):
                return 1

    text = report(rows, header, args.repeats)
    print("\n" + text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    print(f"wrote {args.out / 'results.md'}", flush=True)
    if sizes and rows and rows[-1].events < sizes[-1] * 1e6:
        print(
            f"note: the largest size has {rows[-1].events:,} events, fewer than {sizes[-1]:g} M", flush=True
        )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
