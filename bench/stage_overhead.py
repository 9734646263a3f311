"""Seconds and Spark jobs per stage of the daily pipeline on the small synthetic warehouse
of the tests (24 buyers, 60 days): on data this small a stage's time is mostly fixed cost
(Spark jobs, Delta commits, bookkeeping), which is what the tests pay for every pipeline.

    python bench/stage_overhead.py [--profile]

``--profile`` adds the 60 most expensive calls (cProfile, cumulative) after the table.
"""

from __future__ import annotations

import cProfile
import json
import logging
import pstats
import sys
import tempfile
import time

from core.config import load_config
from core.session import get_spark
from jobs.stages import daily_stages, run_stages


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    extra = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    base = load_config(
        overrides=["spark.master=local[2]", "spark.shuffle_partitions=2", "spark.driver_memory=3g",
                   f"spark.extra={json.dumps(extra)}"]
    )  # fmt: skip
    spark = get_spark(base)
    source = {"name": "syn", "format": "synthetic", "users": 24, "days": 60, "seed": 5}
    conf = load_config(
        overrides=[f"storage.root={tempfile.mkdtemp()}/warehouse", "spark.shuffle_partitions=2",
                   f"ingest.sources=[{json.dumps(source)}]", "trends.sources=[]", "tracking.enabled=false",
                   "rank.top_k=5", "q2i.k=10", "nearline.tasks=1"]
    )  # fmt: skip
    sc = spark.sparkContext
    prof = cProfile.Profile() if "--profile" in sys.argv else None
    total, jobs_total = 0.0, 0
    print(f"{'stage':12s} {'seconds':>8s} {'spark jobs':>11s}")
    for name in daily_stages():
        sc.setJobGroup(name, name)
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        run_stages(spark, conf, [name])
        if prof:
            prof.disable()
        seconds = time.perf_counter() - t0
        jobs = len(sc.statusTracker().getJobIdsForGroup(name))
        total, jobs_total = total + seconds, jobs_total + jobs
        print(f"{name:12s} {seconds:8.1f} {jobs:11d}", flush=True)
    print(f"{'total':12s} {total:8.1f} {jobs_total:11d}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
