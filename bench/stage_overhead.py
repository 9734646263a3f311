"""Seconds and Spark jobs per stage of the daily pipeline on the small synthetic warehouse
of the tests (24 buyers, 60 days): on data this small a stage's time is mostly fixed cost
(Spark jobs, Delta commits, bookkeeping), which is what the tests pay for every pipeline.

    python bench/stage_overhead.py [--profile]
    python bench/stage_overhead.py --compare spark.sql.adaptive.enabled=false [--repeats 3]

``--profile`` adds the 60 most expensive calls (cProfile, cumulative) after the table.

``--compare KEY=VALUE``: one Spark SQL setting side by side with the session's default.
The warehouse is built once (untimed, the ranker's training included), then the stages
after ingest (``train`` left out: its model is young and it does nothing) run again
``--repeats`` times with each setting, alternating; the table gives each stage's median
seconds with both and the ratio, the last line the whole rerun's.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import statistics
import tempfile
import time

from core.config import load_config
from core.session import get_spark
from jobs.stages import daily_stages, run_stages


def timed_stages(
    spark, conf, names: list[str], prof: cProfile.Profile | None = None
) -> dict[str, tuple[float, int]]:
    """Run ``names`` one at a time: {stage: (seconds, Spark jobs)}."""
    sc = spark.sparkContext
    out = {}
    for name in names:
        group = f"{name}-{time.monotonic_ns()}"
        sc.setJobGroup(group, name)
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        run_stages(spark, conf, [name])
        if prof:
            prof.disable()
        out[name] = (time.perf_counter() - t0, len(sc.statusTracker().getJobIdsForGroup(group)))
    return out


def compare(spark, conf, setting: str, repeats: int) -> None:
    key, _, value = setting.partition("=")
    default = spark.conf.get(key, None)
    run_stages(spark, conf, daily_stages())  # the warehouse (and the ranker's model), untimed
    names = [s for s in daily_stages() if s not in ("ingest", "train")]
    seconds: dict[str, dict[str, list[float]]] = {
        "default": {n: [] for n in names},
        setting: {n: [] for n in names},
    }
    for i in range(repeats):
        for label in ("default", setting):
            if label == setting:
                spark.conf.set(key, value)
            elif default is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, default)
            times = timed_stages(spark, conf, names)
            for n, (s, _) in times.items():
                seconds[label][n].append(s)
            logging.getLogger("bench").warning("repeat %d/%d %s: %.1f s", i + 1, repeats, label,
                                               sum(s for s, _ in times.values()))  # fmt: skip
    print(
        f"{'stage':12s} {'default s':>10s} {'with s':>8s} {'ratio':>6s}   (medians of {repeats}; with {setting})"
    )
    for n in names:
        a, b = statistics.median(seconds["default"][n]), statistics.median(seconds[setting][n])
        print(f"{n:12s} {a:10.2f} {b:8.2f} {b / a:6.2f}")
    totals = {
        label: [sum(v[i] for v in per.values()) for i in range(repeats)] for label, per in seconds.items()
    }
    a, b = statistics.median(totals["default"]), statistics.median(totals[setting])
    print(f"{'total':12s} {a:10.2f} {b:8.2f} {b / a:6.2f}")
    print("totals per repeat:", {k: [round(x, 1) for x in v] for k, v in totals.items()})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", metavar="KEY=VALUE", help="a Spark SQL setting against the default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
    if args.compare:
        compare(spark, conf, args.compare, args.repeats)
        return
    prof = cProfile.Profile() if args.profile else None
    times = timed_stages(spark, conf, daily_stages(), prof)
    print(f"{'stage':12s} {'seconds':>8s} {'spark jobs':>11s}")
    for name, (seconds, jobs) in times.items():
        print(f"{name:12s} {seconds:8.1f} {jobs:11d}")
    print(f"{'total':12s} {sum(s for s, _ in times.values()):8.1f} {sum(j for _, j in times.values()):11d}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
