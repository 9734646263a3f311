"""Benchmark: chosen stages against the number of buyers, the catalog held fixed.

Why
---
``bench/pipeline_scale.py`` grows the buyers and, up to 20,000 of them, the synthetic
catalog with them, so its exponents between two sizes mix the two. This bench takes one
finished warehouse (a ``pipeline_scale`` size, or any warehouse) and makes copies of it
that keep a share of its buyers: in every Delta table with a ``user_id`` column the rows
of buyers whose ``pmod(xxhash64(user_id), 1000)`` is below ``share x 1000``; the item,
text, trend and index tables whole. Each named stage then runs on each copy, as its own
``discovery <stage>`` process with the same run date; the exponent
log(seconds ratio) / log(buyers ratio) between two copies is the stage's growth with
the buyers alone, on the same catalog and the same inputs of earlier stages.

Shares above 1 (whole numbers) grow the buyers instead: every row of a per-buyer table
is written ``share`` times, copy ``k`` with ``~k`` appended to its ``user_id`` and to the
other keys that name one buyer's rows (``REPLICA_KEYS``: a query id is derived from its
buyer, an event or order id belongs to one buyer), so each copy of a buyer is a new buyer
with the same behaviour. That measures what grows with the rows (joins, per-buyer
lookups, the lists written), not what grows with distinct behaviour: the replicas' query
texts are the originals', so ``q2i`` (one search per distinct text) and the agents' work
per distinct input are understated. Quote replicated sizes as such.

What is measured
----------------
Per stage and copy: seconds (``silver.stage_runs``), CPU seconds and peak RSS of the
stage's process tree (the JVM's part in brackets; ``pipeline_scale.Sampler``), rows in
and out. With ``--repeats N`` each (stage, copy) runs N times, the copies taking turns,
and the median seconds is reported with the range.

Copies: Parquet data and index shard files are hard links to the source's (neither is
ever rewritten in place), every other file a copy; the deletes then write new files in
the copy only. The share 1.0 copy is the source's contents, run on a copy so the source
is not touched. In a replicated copy ``gold.candidate_features`` is then written again
through the candidates stage's writer, so its files are by user range as the stage
writes them (the appended replicas would each span every buyer).

Run
---
    .venv/bin/python bench/buyer_scale.py --warehouse /tmp/scale30k/users_30000/warehouse \\
        --shares 0.333,1 --stages candidates,q2i,u2q --out /tmp/buyer_scale
    .venv/bin/python bench/buyer_scale.py --warehouse /tmp/scale10k/users_10000/warehouse \
        --shares 1,3,10 --stages rank,u2q --out /tmp/buyer_replicas

The table is printed as Markdown and written to ``<out>/results.md`` (and
``<out>/results.json``). A shared 2-core machine is noisy: quote the medians and ranges.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_scale import ROOT, Sampler, exponent, jvm_part  # noqa: E402

log = logging.getLogger("buyer_scale")
LAYERS = ("bronze", "silver", "gold")
# Besides user_id, the string columns whose values name one buyer's rows: a replica's are
# suffixed too, so it joins to its own rows only (u2q's query id is a hash of its buyer).
REPLICA_KEYS = ("user_id", "query_id", "event_id", "order_id")


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link files that are never rewritten in place (Parquet data, index shards)."""
    if src.endswith(".parquet") or f"{os.sep}indexes{os.sep}" in src:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem: copy
            pass
    shutil.copy2(src, dst)


def delta_tables(warehouse: Path) -> list[Path]:
    return sorted(
        p for layer in LAYERS if (warehouse / layer).is_dir() for p in (warehouse / layer).iterdir()
        if (p / "_delta_log").is_dir()
    )  # fmt: skip


def replicas(df, n: int):
    """Copies 1 .. n-1 of every row of ``df``, copy ``k`` with ``~k`` appended to each
    ``REPLICA_KEYS`` string column (the original rows are not included)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    keys = [f.name for f in df.schema.fields if f.name in REPLICA_KEYS and isinstance(f.dataType, StringType)]
    copies = df.withColumn("_replica", F.explode(F.sequence(F.lit(1), F.lit(n - 1))))
    for key in keys:
        copies = copies.withColumn(key, F.concat(F.col(key), F.lit("~"), F.col("_replica").cast("string")))
    return copies.drop("_replica")


def _relayout_candidate_features(spark, warehouse: Path) -> None:
    """Write each run date of the copy's ``gold.candidate_features`` again through the
    stage's own writer (files by user range, capped in rows, 1 MB row groups), as the
    stage would have written them for that many buyers: the appended replicas are files
    that each span every buyer, which a few buyers' lookup (the nearline's) would read
    whole, unlike any table the stage writes."""
    from core.config import load_config
    from jobs import candidates

    path = warehouse / "gold" / "candidate_features"
    if not (path / "_delta_log").is_dir():
        return
    copy_conf = load_config(overrides=[f"storage.root={warehouse}", "tracking.enabled=false"])
    table = spark.read.format("delta").load(str(path))
    for (as_of,) in table.select("as_of").distinct().orderBy("as_of").collect():
        rows = table.filter(table.as_of == as_of)
        candidates.write_features(spark, copy_conf, rows, as_of, prune=False)


def make_copies(source: Path, shares: list[float], out: Path, driver_memory: str) -> dict:
    """One copy of ``source`` per share, its per-buyer tables cut to that share; returns
    ``{"run_date": ..., "copies": {share: {"path": ..., "buyers": n}}}``."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from core.config import load_config
    from core.session import get_spark

    conf = load_config(overrides=[f"storage.root={source}", f"spark.driver_memory={driver_memory}",
                                  "tracking.enabled=false"])  # fmt: skip
    spark = get_spark(conf)
    events = spark.read.format("delta").load(str(source / "bronze" / "events"))
    run_date = events.agg(F.max("dt")).collect()[0][0]
    copies = {}
    for share in shares:
        dest = out / f"share_{share:g}" / "warehouse"
        if dest.exists():
            shutil.rmtree(dest)
        started = time.time()
        shutil.copytree(source, dest, copy_function=_link_or_copy)
        cut = F.pmod(F.xxhash64("user_id"), F.lit(1000)) >= F.lit(int(round(share * 1000)))
        for path in delta_tables(dest) if share != 1 else []:
            table = spark.read.format("delta").load(str(path))
            if "user_id" not in table.columns:
                continue
            if share < 1:
                DeltaTable.forPath(spark, str(path)).delete(cut)
            else:  # the snapshot read above, appended as copies 1 .. share-1 in one commit
                replicas(table, int(share)).write.format("delta").mode("append").save(str(path))
        if share > 1:
            _relayout_candidate_features(spark, dest)
        kept = spark.read.format("delta").load(str(dest / "bronze" / "events"))
        buyers = kept.select("user_id").distinct().count()
        log.warning("share %g: %s buyers in %s (%.0f s)", share, f"{buyers:,}", dest, time.time() - started)
        copies[share] = {"path": str(dest), "buyers": buyers}
    spark.stop()
    return {"run_date": run_date.isoformat(), "copies": copies}


def run_stage(stage: str, warehouse: Path, run_date: str, driver_memory: str, extra_sets: list[str],
              log_path: Path) -> dict:  # fmt: skip
    """One ``discovery <stage>`` on ``warehouse``: its figures from silver.stage_runs and the sampler."""
    from deltalake import DeltaTable

    sets = [f"storage.root={warehouse}", f"run.date={run_date}", "tracking.enabled=false",
            f"spark.driver_memory={driver_memory}", *extra_sets]  # fmt: skip
    cmd = [sys.executable, "-m", "jobs", stage, *[x for s in sets for x in ("--set", s)]]
    started = time.time()
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid).start()
        rc = proc.wait()
        sampler.stop()
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{stage} on {warehouse} exited {rc}:\n{tail}")
    runs = DeltaTable(str(warehouse / "silver" / "stage_runs")).to_pandas()
    r = runs[(runs.stage == stage) & (runs.finished_at.map(lambda t: t.timestamp()) >= started)]
    if r.empty:
        raise SystemExit(f"{stage} on {warehouse}: no row in silver.stage_runs after its run")
    r = r.sort_values("finished_at").iloc[-1]
    end = r.finished_at.to_pydatetime().replace(tzinfo=dt.timezone.utc).timestamp()
    peak, cpu = sampler.between(end - r.seconds, end)
    return {"seconds": float(r.seconds), "cpu_s": cpu, "peak_rss_mib": peak.rss_mib, "peak_jvm_mib": peak.jvm_mib,
            "rows_in": int(r.rows_in), "rows_out": int(r.rows_out)}  # fmt: skip


def table(results: dict) -> str:
    shares = sorted(results["copies"], key=float)
    buyers = {s: results["copies"][s]["buyers"] for s in shares}
    head = ["stage"] + [
        f"{buyers[s]:,} buyers: s (range) / CPU s / peak MiB (JVM) / rows in -> out" for s in shares
    ]
    head += [f"exp {buyers[a]:,}->{buyers[b]:,}" for a, b in zip(shares, shares[1:], strict=False)]
    head += [f"exp by rows in {buyers[a]:,}->{buyers[b]:,}" for a, b in zip(shares, shares[1:], strict=False)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "--:|" * (len(head) - 1)]
    for stage, per_share in results["stages"].items():
        med = {}
        cells = [stage]
        for s in shares:
            runs = per_share.get(s, [])
            if not runs:
                cells.append("-")
                continue
            secs = [r["seconds"] for r in runs]
            med[s] = (statistics.median(secs), runs[0]["rows_in"])
            top = max(runs, key=lambda r: r["peak_rss_mib"])
            spread = f" ({min(secs):.1f}-{max(secs):.1f})" if len(secs) > 1 else ""
            cells.append(
                f"{med[s][0]:.1f}{spread} / {statistics.median(r['cpu_s'] for r in runs):.0f} / "
                f"{top['peak_rss_mib']:.0f} ({jvm_part(top)}) / {runs[0]['rows_in']:,} -> {runs[0]['rows_out']:,}"
            )
        pairs = list(zip(shares, shares[1:], strict=False))
        for a, b in pairs:
            ok = a in med and b in med
            cells.append(f"{exponent(med[a][0], med[b][0], buyers[a], buyers[b]):.2f}" if ok else "-")
        for a, b in pairs:
            ok = a in med and b in med
            cells.append(f"{exponent(med[a][0], med[b][0], med[a][1], med[b][1]):.2f}" if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", type=Path, required=True, help="a finished warehouse (storage.root)")
    parser.add_argument(
        "--shares", default="0.333,1",
        help="shares of its buyers, comma-separated: in (0, 1] a cut, a whole number above 1 replicas",
    )  # fmt: skip
    parser.add_argument(
        "--stages", default="candidates",
        help="stages to run, comma-separated; empty: only make the copies (e.g. for bench/nearline.py)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more stage settings, k=v")
    parser.add_argument(
        "--reuse-copies", action="store_true", help="use the copies of an earlier run in --out"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    shares = sorted({float(x) for x in args.shares.split(",")})
    if not shares or shares[0] <= 0 or any(s > 1 and s != int(s) for s in shares):
        parser.error(f"--shares must lie in (0, 1] or be whole numbers above 1, got {args.shares}")
    if not (args.warehouse / "bronze" / "events" / "_delta_log").is_dir():
        parser.error(
            f"{args.warehouse} has no bronze.events: run the pipeline (or pipeline_scale) on it first"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    copies_file = args.out / "copies.json"
    if args.reuse_copies and copies_file.exists():
        made = json.loads(copies_file.read_text())
    else:
        made = make_copies(args.warehouse.resolve(), shares, args.out.resolve(), args.driver_memory)
        made["copies"] = {f"{s:g}": c for s, c in made["copies"].items()}
        copies_file.write_text(json.dumps(made, indent=1))
    results = {
        "source": str(args.warehouse),
        "run_date": made["run_date"],
        "copies": made["copies"],
        "stages": {},
    }
    for stage in [x for x in args.stages.split(",") if x.strip()]:
        per_share = results["stages"].setdefault(stage, {})
        for i in range(args.repeats):
            for s in sorted(made["copies"], key=float):
                copy = made["copies"][s]
                fig = run_stage(stage, Path(copy["path"]), made["run_date"], args.driver_memory, args.sets,
                                args.out / f"{stage}_{s}_{i}.log")  # fmt: skip
                per_share.setdefault(s, []).append(fig)
                log.warning("%s on %s buyers: %.1f s, peak %.0f MiB", stage, f"{copy['buyers']:,}",
                            fig["seconds"], fig["peak_rss_mib"])  # fmt: skip
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    print(text)
    (args.out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
