"""The pipeline at size on a Spark standalone cluster, compared with a local-mode run.

Takes a warehouse that ``discovery pipeline`` finished in local mode (for instance one of
``bench/pipeline_scale.py``: ``<out>/users_<n>/warehouse``), copies its bronze tables to a
fresh storage root, starts a standalone cluster on this machine (a master and
``--workers`` workers, one core and ``--worker-memory`` each, every process on 127.0.0.1)
and runs the stages from ``items`` to ``candidates`` there through ``./spark-submit.sh``
with the local run's run date and settings; the executors are JVMs and Python workers of
their own, fed with the code zip, as on a real cluster. Then it compares, table by table,
the cluster run with the local one: the silver tables and the user queries row for row,
the candidate features of the run date within float noise (``testing/standalone.py``:
the same checks as ``tests/test_cluster.py``, which does this at a tiny size).

Prints per stage the seconds of both runs (``silver.stage_runs``) and per table whether
the two runs agree, with the first differences where they do not; writes
``<out>/results.md`` and ``<out>/results.json``. Exit status 1 when a table differs.

    .venv/bin/python bench/cluster_scale.py --warehouse /tmp/scale10k/users_10000/warehouse \\
        --out /tmp/cluster10k

The settings that decide the local run's results must be given again when they differ
from the defaults (``--set k=v``): those of ``bench/pipeline_scale.py`` are the default
here (no trend sources, tracking off, no early work, a 2 GB driver, 8 shuffle partitions).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.stages import stage_names  # noqa: E402
from testing.standalone import (  # noqa: E402
    QUERY_COLUMNS,
    SILVER_TABLES,
    StandaloneCluster,
    assert_same_features,
    assert_same_rows,
    child_env,
    kill_group,
    submit_command,
    tail,
)

log = logging.getLogger("cluster_scale")
# bench/pipeline_scale.py's settings (besides the storage root and the ingest source).
PIPELINE_SCALE_SETS = ["trends.sources=[]", "tracking.enabled=false", "run.early_work=false",
                       "spark.driver_memory=2g"]  # fmt: skip


def stage_runs(root: Path):
    """silver.stage_runs of a storage root, as pandas (read without Spark)."""
    from deltalake import DeltaTable

    return DeltaTable(str(root / "silver" / "stage_runs")).to_pandas()


def run_on_cluster(args, cluster_root: Path, run_date: str, stages: list[str]) -> float:
    """The stages through ./spark-submit.sh on a fresh standalone cluster; wall seconds."""
    cli = ["pipeline", "--restart", "--only", *stages, "--run-date", run_date,
           *[x for s in PIPELINE_SCALE_SETS + args.sets for x in ("--set", s)]]  # fmt: skip
    logs = args.out / "cluster.log"
    with StandaloneCluster(
        args.out / "standalone", workers=args.workers, memory=args.worker_memory
    ) as cluster:
        cmd = submit_command(
            cluster.master_url, cli, cluster_root, "discovery-cluster-scale",
            shuffle_partitions=args.shuffle_partitions,
            spark_conf=("spark.databricks.delta.snapshotPartitions=2", f"spark.executor.memory={args.executor_memory}"),
        )  # fmt: skip
        log.warning("cluster %s, %d workers x 1 core: %s (log %s)", cluster.master_url, args.workers,
                    " ".join(cmd[:4]), logs)  # fmt: skip
        started = time.time()
        with open(logs, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_group(proc, grace=2)
        wall = time.time() - started
    if rc != 0:
        raise SystemExit(f"the cluster run {'timed out' if rc is None else f'exited {rc}'} after {wall:.0f} s:\n"
                         f"{tail(logs)}")  # fmt: skip
    return wall


def compare(local_root: Path, cluster_root: Path, run_date: str) -> list[dict]:
    """Per table: agrees or not (with the first differences), rows compared."""
    from pyspark.sql import functions as F

    from core import tables
    from core.config import load_config
    from core.session import get_spark

    spark = get_spark(load_config(overrides=["spark.driver_memory=2g", "spark.shuffle_partitions=8"]))

    def both(name: str):
        return [tables.read(spark, load_config(overrides=[f"storage.root={r}"]), name)
                for r in (local_root, cluster_root)]  # fmt: skip

    checks = [(name, lambda n=name: assert_same_rows(n, *both(n))) for name in SILVER_TABLES]
    checks.append(("gold.user_queries",
                   lambda: assert_same_rows("gold.user_queries", *(t.select(QUERY_COLUMNS) for t in both("gold.user_queries")))))  # fmt: skip

    def features() -> int:
        local, cluster = (
            t.filter(F.col("as_of") == F.lit(run_date)) for t in both("gold.candidate_features")
        )
        assert_same_features(local, cluster)
        return local.count()

    checks.append(("gold.candidate_features (run date)", features))
    results = []
    for name, check in checks:
        started = time.time()
        try:
            rows, same, detail = check(), True, ""
        except AssertionError as e:
            rows, same, detail = None, False, str(e)[:2000]
        results.append({"table": name, "same": same, "rows": rows, "detail": detail})
        log.warning("%s: %s (%.0f s)%s", name, "same" if same else "DIFFERS", time.time() - started,
                    f"\n{detail}" if detail else "")  # fmt: skip
    spark.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", type=Path, required=True, help="a warehouse finished in local mode")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory", default="3g", help="memory each worker offers (default 3g)")
    parser.add_argument("--executor-memory", default="2g", help="spark.executor.memory (default 2g)")
    parser.add_argument("--shuffle-partitions", type=int, default=8, help="as the local run's (default 8)")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds for the cluster run")
    parser.add_argument(
        "--stages", default=None,
        help="stages to run, comma-separated (default items..candidates on a fresh copy of bronze; given, they "
        "rerun on the cluster warehouse of an earlier run in <out> when there is one)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-only", action="store_true", help="compare with the cluster run in <out>, do not rerun"
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more pipeline settings, k=v")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    local_root = args.warehouse.resolve()
    names = stage_names()
    stages = (
        args.stages.split(",") if args.stages else names[names.index("items") : names.index("candidates") + 1]
    )
    if unknown := sorted(set(stages) - set(names)):
        parser.error(f"unknown stage(s) {', '.join(unknown)}; the stages: {', '.join(names)}")
    local_runs = stage_runs(local_root)
    local_runs = local_runs[local_runs.stage.isin(stages)].sort_values("finished_at")
    missing = sorted(set(stages) - set(local_runs.stage))
    if missing:
        parser.error(
            f"{local_root}: the local run has not finished {', '.join(missing)}: run the pipeline first"
        )
    run_date = str(local_runs.run_date.iloc[-1])[:10]
    cluster_root = args.out / "warehouse"
    if args.compare_only:
        wall = float("nan")
    else:
        if (
            args.stages and (cluster_root / "bronze").is_dir()
        ):  # a rerun of some stages on the earlier cluster run
            shutil.rmtree(args.out / "standalone", ignore_errors=True)
        else:
            if args.out.exists():
                shutil.rmtree(args.out)
            cluster_root.mkdir(parents=True)
            shutil.copytree(local_root / "bronze", cluster_root / "bronze")
        wall = run_on_cluster(args, cluster_root, run_date, stages)
    cluster_runs = stage_runs(cluster_root)
    seconds = {
        s: (float(local_runs[local_runs.stage == s].seconds.iloc[-1]),
            float(cluster_runs[cluster_runs.stage == s].seconds.iloc[-1]))
        for s in stages
    }  # fmt: skip
    results = compare(local_root, cluster_root, run_date)
    lines = [f"run date {run_date}; the cluster: {args.workers} workers x 1 core, executors "
             f"{args.executor_memory}; {wall:.0f} s wall", "",
             "| stage | local s | cluster s | ratio |", "|---|--:|--:|--:|"]  # fmt: skip
    lines += [f"| {s} | {a:.1f} | {b:.1f} | {b / a:.2f} |" for s, (a, b) in seconds.items()]
    total_a, total_b = (sum(v[i] for v in seconds.values()) for i in (0, 1))
    lines += [f"| **stages summed** | {total_a:.1f} | {total_b:.1f} | {total_b / total_a:.2f} |", "",
              "| table | cluster = local | rows |", "|---|---|--:|"]  # fmt: skip
    for r in results:
        verdict = "yes" if r["same"] else "NO: " + r["detail"][:300].replace("\n", " ")
        lines.append(f"| {r['table']} | {verdict} | {'' if r['rows'] is None else format(r['rows'], ',')} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps({"run_date": run_date, "wall_s": wall, "seconds": seconds, "tables": results}, indent=1)
    )
    return 0 if all(r["same"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
