"""Benchmark: a nearline lookup of a few buyers' rows in a Delta table, against its files.

The nearline reads the rows of the buyers a micro-batch triggers from Delta tables laid
out by user range (``gold.candidate_features``, ``gold.nearline_user_features``), with
delta-rs on the driver (``core.tables.rs_read``). A table grows in files as the buyers
grow, so what a lookup costs per file of the table, not per file it reads, decides
whether the stream's latency grows with the buyers.

This builds one table per ``--files`` value in a scratch folder: files of
``--users-per-file`` buyers each by user range, ``--rows-per-user`` rows a buyer, in two
run-date partitions (``as_of``), as the stage writers lay them out. It then times a
lookup of ``--buyers`` random buyers of one run date, ``--repeats`` times, two ways side
by side:

- ``all files``: the pyarrow dataset of every live file, its statistics as fragment
  guarantees, filtered while scanning (what ``rs_read`` did before);
- ``pruned``: ``core.tables.rs_read``, which has delta-rs choose the files from the log's
  partition values and min/max statistics first.

Both must return the same rows (checked on every repeat). Prints the medians and their
ratio per table size.

    python bench/delta_lookup.py                          # 40, 160, 640 files
    python bench/delta_lookup.py --files 100 1000 --repeats 9
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import tables  # noqa: E402

DAYS = (dt.date(2025, 12, 24), dt.date(2025, 12, 31))


def _user(i: int) -> str:
    return f"U{i:07d}"


def build(path: str, files: int, users_per_file: int, rows_per_user: int) -> None:
    """One append per file and run date, so every file holds one user range of one day."""
    import pyarrow as pa
    from deltalake import write_deltalake

    for day in DAYS:
        for f in range(files // len(DAYS)):
            users = [_user(u) for u in range(f * users_per_file, (f + 1) * users_per_file)]
            rows = pa.table(
                {
                    "user_id": [u for u in users for _ in range(rows_per_user)],
                    "item_id": [f"I{k}" for _ in users for k in range(rows_per_user)],
                    "score": [k / rows_per_user for _ in users for k in range(rows_per_user)],
                    "as_of": pa.array([day] * (len(users) * rows_per_user), pa.date32()),
                }
            )
            write_deltalake(path, rows, mode="append", partition_by=["as_of"])


def all_files(path: str, users: list[str], day: dt.date):
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    where = pc.field("user_id").isin(users) & (pc.field("as_of") == day)
    return (
        DeltaTable(path)
        .to_pyarrow_dataset()
        .to_table(columns=["user_id", "item_id"], filter=where)
        .to_pandas()
    )


def pruned(path: str, users: list[str], day: dt.date):
    return tables.rs_read(path, ["user_id", "item_id"], [("user_id", "in", users), ("as_of", "=", day)])


def _rows(frame) -> list[tuple]:
    return sorted(map(tuple, frame.to_numpy().tolist()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--files", type=int, nargs="+", default=[40, 160, 640], help="files per table (both days)"
    )
    ap.add_argument("--users-per-file", type=int, default=50)
    ap.add_argument("--rows-per-user", type=int, default=20)
    ap.add_argument("--buyers", type=int, default=5, help="buyers per lookup")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    rng = random.Random(0)
    lines = [
        "| files | all files (median) | pruned (median) | all / pruned | files read | rows |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    with tempfile.TemporaryDirectory(prefix="delta_lookup_") as scratch:
        for n in args.files:
            path = f"{scratch}/t{n}"
            t0 = time.perf_counter()
            build(path, n, args.users_per_file, args.rows_per_user)
            print(f"built {n} files in {time.perf_counter() - t0:.1f} s", flush=True)
            n_users = n // len(DAYS) * args.users_per_file
            timings: dict[str, list[float]] = {"all": [], "pruned": []}
            for _ in range(args.repeats):
                users = sorted(_user(rng.randrange(n_users)) for _ in range(args.buyers))
                answers = {}
                for name, fn in (("all", all_files), ("pruned", pruned)):
                    t = time.perf_counter()
                    answers[name] = fn(path, users, DAYS[1])
                    timings[name].append(time.perf_counter() - t)
                if _rows(answers["all"]) != _rows(answers["pruned"]):
                    raise SystemExit(f"the two lookups differ for {users}")
            from deltalake import DeltaTable

            read = len(
                DeltaTable(path).file_uris(
                    file_pruning_predicate=[("user_id", "in", users), ("as_of", "=", DAYS[1])]
                )
            )
            a, p = statistics.median(timings["all"]), statistics.median(timings["pruned"])
            lines.append(
                f"| {n} | {a:.3f} s | {p:.3f} s | {a / p:.1f}x | {read} | {len(answers['pruned'])} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
