"""Benchmark: clustering N generated trend queries at several sizes, time and peak memory.

What is measured
----------------
``udfs.clustering.threshold_clusters`` (threshold 0.8, k 32, HNSW from 20,000 rows up)
on N query vectors, for each size in ``--sizes`` (default 50k, 100k, 200k):

- the wall-clock seconds and the CPU seconds (all threads of the process) of one call,
  median of ``--repeats`` calls on the same input;
- the peak resident memory (``ru_maxrss``) of the process. Each size runs in a fresh
  Python subprocess, so the peak belongs to that size alone; it includes the interpreter,
  numpy/faiss/scikit-learn and the N x 384 float32 input itself (1.5 KiB per query);
- the number of clusters found.

The table compares the time ratios to the smallest size (wall-clock and CPU) with the
n ratio and the n·log n ratio. Growth counts as "no worse than n·log n" when every time
ratio is at most the n·log n ratio x 1.15: the 15 % absorbs run-to-run noise, which is
large on a shared machine; there the CPU-time verdict is the steadier of the two.

The queries are synthetic paraphrases, not model output
-------------------------------------------------------
Embedding hundreds of thousands of generated queries would take longer than clustering
them, so only a base of real texts is embedded: ``--base`` (default 2,000) distinct
product descriptions from the bundled online-retail data (``data/online_retail/by-day``),
encoded once with ``udfs.embedding.encode`` (in a subprocess of its own, see ``main``) and
cached in ``bench/out/trends_base.npz``.
Each synthetic query picks a base vector ``b`` at random and becomes

    q = c·b + sqrt(1 - c²)·u,  re-normalised,

with ``c`` drawn uniformly from [0.85, 0.95] and ``u`` Gaussian noise with its component
along ``b`` removed, scaled to unit length. So every query has cosine ``c`` to its base
and two paraphrases of one base are about 0.72-0.90 similar: close to the 0.8
threshold on purpose, as real paraphrases are. Bases that are themselves near
duplicates ("RED ..." / "BLUE ..." variants) make fewer clusters than bases.

Run
---
    .venv/bin/python bench/trends.py                       # 50k, 100k, 200k; 3 repeats
    .venv/bin/python bench/trends.py --sizes 10000,20000 --repeats 1

The table is printed and written to ``bench/out/trends.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/trends.py` without an installed project
    sys.path.insert(0, str(ROOT))

DATA_DIR = ROOT / "data" / "online_retail" / "by-day"
OUT_DIR = ROOT / "bench" / "out"
BASE_CACHE = OUT_DIR / "trends_base.npz"
# Product stock codes start with five digits; POST, M, DOT, BANK CHARGES, ... do not.
PRODUCT_CODE = re.compile(r"^(\d{5})")
# Real product descriptions are upper case with words; notes such as "check", "?" or
# "damages" (stock adjustments) are not.
PRODUCT_TEXT = re.compile(r"[A-Z]{3}")
MIN_COSINE, MAX_COSINE = 0.85, 0.95
GROWTH_TOLERANCE = 1.15
THRESHOLD = 0.8
K = 32


def distinct_products(data_dir: Path = DATA_DIR) -> list[tuple[str, str]]:
    """Sorted distinct (StockCode, Description) pairs of products in the bundled data.

    Codes are upper-cased ("85049a" is "85049A"), descriptions trimmed with inner spaces
    collapsed; codes without a five-digit stem and descriptions that are not upper-case
    product names (stock-adjustment notes, empty) are dropped.
    """
    pairs: set[tuple[str, str]] = set()
    for path in sorted(data_dir.glob("*.csv.gz")):
        with gzip.open(path, "rt", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                code = row["StockCode"].strip().upper()
                text = " ".join((row["Description"] or "").split())
                if PRODUCT_CODE.match(code) and text == text.upper() and PRODUCT_TEXT.search(text):
                    pairs.add((code, text))
    if not pairs:
        raise SystemExit(f"no product rows found under {data_dir}")
    return sorted(pairs)


def base_texts(n_base: int, seed: int = 0) -> list[str]:
    """``n_base`` distinct product descriptions, a seeded sample in sorted order."""
    texts = sorted({text for _, text in distinct_products()})
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(texts), size=min(n_base, len(texts)), replace=False).tolist())
    return [texts[i] for i in chosen]


def cached_base_matches(texts: list[str]) -> bool:
    """Whether ``BASE_CACHE`` holds the embeddings of exactly ``texts``."""
    if not BASE_CACHE.exists():
        return False
    return np.load(BASE_CACHE, allow_pickle=False)["texts"].tolist() == texts


def embed_base(texts: list[str]) -> None:
    """Encode ``texts`` with the project's model and cache them in ``BASE_CACHE``."""
    from udfs.embedding import encode

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(BASE_CACHE, texts=np.array(texts), vectors=encode(texts))


def synthetic_queries(base: np.ndarray, n: int, seed: int, chunk: int = 50_000) -> np.ndarray:
    """(n, d) unit vectors, each at a cosine in [0.85, 0.95] to a random base row.

    Built in chunks so that the float temporaries stay small next to the result.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        b = base[rng.integers(0, len(base), stop - start)]
        noise = rng.standard_normal(b.shape, dtype=np.float32)
        noise -= np.einsum("ij,ij->i", noise, b)[:, None] * b
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        c = rng.uniform(MIN_COSINE, MAX_COSINE, (stop - start, 1)).astype(np.float32)
        q = c * b + np.sqrt(1.0 - c * c) * noise
        out[start:stop] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return out


def run_one_size(n: int, repeats: int, seed: int) -> dict:
    """Child process: cluster n synthetic queries ``repeats`` times; times and peak RSS."""
    from udfs.clustering import threshold_clusters

    cached = np.load(BASE_CACHE, allow_pickle=False)
    queries = synthetic_queries(cached["vectors"], n, seed=seed + n)
    walls, cpus, clusters = [], [], set()
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        labels = threshold_clusters(queries, threshold=THRESHOLD, k=K)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        clusters.add(int(labels.max()) + 1)
        del labels
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"n": n, "walls": walls, "cpus": cpus, "clusters": sorted(clusters), "peak_bytes": peak}


def markdown(results: list[dict], args: argparse.Namespace, n_base: int) -> str:
    """The results table and the verdict on growth, for wall-clock and for CPU time."""
    small = results[0]
    small_wall = statistics.median(small["walls"])
    small_cpu = statistics.median(small["cpus"])
    small_nlogn = small["n"] * math.log(small["n"])
    lines = [
        f"# threshold_clusters at scale (threshold {THRESHOLD}, k {K}, HNSW from 20,000 rows)",
        "",
        f"Synthetic paraphrases of {n_base} embedded product descriptions (cosine "
        f"{MIN_COSINE}-{MAX_COSINE} to their base); median of {args.repeats} runs; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| n | clusters | median s | median CPU s | peak RSS MiB | time ratio | CPU ratio "
        "| n·log n ratio | n ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    wall_within = cpu_within = True
    for r in results:
        wall, cpu = statistics.median(r["walls"]), statistics.median(r["cpus"])
        limit = r["n"] * math.log(r["n"]) / small_nlogn
        wall_within &= wall / small_wall <= limit * GROWTH_TOLERANCE
        cpu_within &= cpu / small_cpu <= limit * GROWTH_TOLERANCE
        clusters = "/".join(str(c) for c in r["clusters"])  # one value unless runs differ
        lines.append(
            f"| {r['n']:,} | {clusters} | {wall:.1f} | {cpu:.1f} | {r['peak_bytes'] / 2**20:,.0f} "
            f"| {wall / small_wall:.2f} | {cpu / small_cpu:.2f} | {limit:.2f} | {r['n'] / small['n']:.2f} |"
        )
    lines += [
        "",
        f"Growth no worse than n·log n (ratio <= n·log n ratio x {GROWTH_TOLERANCE}, the "
        f"{GROWTH_TOLERANCE - 1:.0%} allowing for timing noise): wall-clock "
        f"**{'yes' if wall_within else 'NO'}**, CPU time **{'yes' if cpu_within else 'NO'}**. "
        "CPU time (all threads) is less disturbed by other work on a shared machine.",
        "",
        "Runs (s): "
        + "; ".join(f"{r['n']:,}: " + ", ".join(f"{w:.1f}" for w in r["walls"]) for r in results),
        "Peak RSS includes the interpreter, the libraries and the n x 384 float32 input (1.5 KiB per query).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every size in its own subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50000,100000,200000", help="comma-separated query counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=int, default=2000, help="distinct real texts to paraphrase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT_DIR / "trends.md"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one size, JSON on stdout
    parser.add_argument("--embed-base", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_one_size(args.child, args.repeats, args.seed)))
        return 0
    texts = base_texts(args.base, seed=args.seed)
    if args.embed_base:
        embed_base(texts)
        return 0

    # Linux keeps a process's peak RSS across fork and exec, so a child's ru_maxrss is at
    # least this process's size when it started the child: the model is loaded in a
    # subprocess of its own and this process stays small.
    if not cached_base_matches(texts):
        print(f"embedding {len(texts)} base texts ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, __file__, "--embed-base", "--base", str(args.base), "--seed", str(args.seed)],
            check=True,
        )
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = []
    for n in sizes:
        print(f"n={n:,}: {args.repeats} run(s) in a fresh process ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", str(n), "--repeats", str(args.repeats)]
        cmd += ["--seed", str(args.seed)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = markdown(results, args, len(texts))
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
