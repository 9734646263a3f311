"""Benchmark: sharded approximate query-to-item search (Q2I) against exact brute force.

Acceptance target: 1 M synthetic 384-d item vectors in >= 8 shards, 10k queries:
recall@100 of the sharded search vs exact brute force >= 0.95 and queries/second >= 5x
exact; the sharded search and a single index of the same type over all items reach the
same recall within 0.01.

What is measured
----------------
1. Exact: ``faiss.IndexFlatIP`` over all items, the brute force itself. Its search is
   timed on the first ``--exact-queries`` queries (default 1,000: searching 10k queries
   exhaustively over 1 M items takes many minutes on a few cores); queries/second is
   those queries over that time, which is what the full run would give, since the work
   per query does not depend on the batch size beyond a few hundred queries. Its answers
   are the truth for recall, so every recall below is measured on those queries.
2. Sharded: items split into ``--shards`` shards by a hash of the item id, one
   ``udfs.vector_index.build_index`` per shard (build time summed over shards), every
   query searched in every shard (``search``) and the answers merged to the top ``k``
   (``merge_topk``). Search + merge of all ``--queries`` queries are timed together.
   Each shard is asked for ``--shard-k`` results, by default fewer than ``k``: with ids
   hashed uniformly, the number of a query's top ``k`` in one shard is
   binomial(k, 1/shards) (12.5 ± 3.3 for k 100 and 8 shards), so the default is the
   fewest that hold them all but at odds of 1e-12 per shard and query (40 for k 100 and
   8 shards; the odds are printed). This matters for HNSW, whose efSearch must be at
   least the number of results asked: 100 per shard would force efSearch >= 100 in all
   8 graphs, while 40 lets efSearch 64 do.
3. Single: the same kind of index over all items, asked for ``k``, same search
   parameters (efSearch raised to ``k``); with ``--single-ef scaled`` its efSearch is
   the shards' times ``k / shard-k``, the same candidate list per result asked (a shard
   asked for 32 with efSearch 40 against one index asked for 100 with efSearch 125).
4. A sweep of the search parameter (efSearch or nprobe) on the exactly searched
   queries, sharded and single, with the plain setting (every shard asked for ``k``)
   added when ``--shard-k`` is below ``k``.

The table gives build seconds, search seconds, queries/second, recall@k and the
queries/second ratio to exact; lines below it say whether each target is met. Peak RSS
is the process's ``ru_maxrss``. Every timing uses all cores (faiss/OpenMP): timings are
only comparable within one run, and on a shared machine the load of other work shows in
them (the load average is printed).

Defaults: efSearch 64 (HNSW) and nprobe 32 (IVF). On the full-size data, HNSW shards at
efSearch 64 reached recall@100 0.97, at 40 0.95 (too close to the target), at 100 0.98.

Synthetic data, shaped like sentence embeddings
-----------------------------------------------
Uniform random unit vectors are the worst case for approximate search (no neighbour is
much closer than any other item) and unlike real embeddings. Items and queries are
instead drawn the same way, from 2,000 clusters (``--centres``):

    v = normalise(a·m + sqrt(1 - a²)·(c·centre + sqrt(1 - c²)·e))

- ``m`` is a direction shared by all vectors (a = 0.43): sentence embeddings are not
  centred, any two are about 0.19 similar;
- the centres and the noise ``e`` are anisotropic, with a standard deviation falling as
  (j + 1)^-0.5 along the j-th axis of a random rotation: real embeddings spread over
  fewer dimensions than they have;
- ``c``, the closeness to the cluster centre, is drawn per cluster from [0.55, 0.85];
  cluster sizes follow a log-normal (a few large clusters, many small ones).

These constants were set against the 2,000 real product-description embeddings (all-
MiniLM-L6-v2, 384-d) cached in ``bench/out/trends_base.npz``, against 2,000 drawn here:
mean-vector norm 0.44 there, 0.43 here; 90 % of the variance in 136 of 384 dimensions
there, 177 here; median similarity of a vector to its 10th nearest of the others 0.53
there, 0.49 here; median of all pairs 0.19 in both. They are synthetic all the same:
recall on real item embeddings should be checked on them.

Run
---
    .venv/bin/python bench/q2i.py                                   # 1 M items, 10k queries, 8 shards
    .venv/bin/python bench/q2i.py --items 200000 --queries 2000 --kind ivf_flat

The table is printed and written to ``bench/out/q2i.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/q2i.py` without an installed project
    sys.path.insert(0, str(ROOT))

from udfs.vector_index import INDEX_KINDS, build_index, choose_index_type, merge_topk, search  # noqa: E402

DIM = 384
SHARED_WEIGHT = 0.43
SPECTRUM_EXPONENT = 0.5
CENTRE_COSINE = (0.55, 0.85)
CHUNK = 100_000
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 5.0
TARGET_RECALL_GAP = 0.01
# Odds, per shard and query, that a shard holds more of the query's top k than it is
# asked for (see --shard-k): about one miss of one item in 10^11 query-shard searches.
SHARD_OVERFLOW_RISK = 1e-12
# 64-bit multiplicative hash (Fibonacci hashing): spreads any id pattern over shards.
HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class Embeddings:
    """Draws clustered, anisotropic unit vectors (see the module docstring)."""

    def __init__(self, n_centres: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(self.rng.standard_normal((DIM, DIM)))
        spread = (np.arange(DIM) + 1.0) ** -SPECTRUM_EXPONENT
        # Row j: the j-th axis of the rotation scaled by its standard deviation.
        self.basis = (spread[:, None] * rotation.T).astype(np.float32)
        self.shared = self._directions(1)[0]
        self.centres = self._directions(n_centres)
        sizes = self.rng.lognormal(0.0, 1.0, n_centres)
        self.cluster_p = sizes / sizes.sum()
        self.closeness = self.rng.uniform(*CENTRE_COSINE, n_centres).astype(np.float32)

    def _directions(self, n: int) -> np.ndarray:
        v = self.rng.standard_normal((n, DIM), dtype=np.float32) @ self.basis
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def draw(self, n: int) -> np.ndarray:
        """``n`` unit vectors, made in chunks to bound the temporary memory."""
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            cluster = self.rng.choice(len(self.centres), size=m, p=self.cluster_p)
            c = self.closeness[cluster, None]
            v = c * self.centres[cluster] + np.sqrt(1 - c**2) * self._directions(m)
            v = SHARED_WEIGHT * self.shared + np.sqrt(1 - SHARED_WEIGHT**2) * v
            out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard number of each item id (a hash of the id, as the indexing job does)."""
    hashed = ids.astype(np.uint64) * HASH_MULTIPLIER  # wraps modulo 2**64
    return ((hashed >> np.uint64(32)) % np.uint64(n_shards)).astype(np.int64)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top k found (all rows of ``truth`` are full)."""
    k = truth.shape[1]
    hits = [np.intersect1d(f[f >= 0], t, assume_unique=True).size for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def search_all(
    indexes: list[faiss.Index], queries: np.ndarray, k: int, per_index_k: int, **params: int
) -> tuple[np.ndarray, float]:
    """Every query in every index (its best ``per_index_k``), merged to the best ``k``.

    Returns the merged ids and the seconds of search + merge.
    """
    start = time.perf_counter()
    parts = [search(index, queries, per_index_k, **params) for index in indexes]
    _, ids = merge_topk(parts, k)
    return ids, time.perf_counter() - start


def overflow_probability(k: int, shards: int, shard_k: int) -> float:
    """P(one shard holds more than ``shard_k`` of a query's top ``k``), ids hashed uniformly.

    The count in one shard is binomial(k, 1/shards); beyond ``shard_k`` the shard's own
    top ``shard_k`` cannot return them all.
    """
    p = 1.0 / shards
    return sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(shard_k + 1, k + 1))


def safe_shard_k(k: int, shards: int) -> int:
    """The fewest results per shard that hold all of a query's top ``k`` but at odds of
    ``SHARD_OVERFLOW_RISK`` per shard and query."""
    return next(m for m in range(1, k + 1) if overflow_probability(k, shards, m) <= SHARD_OVERFLOW_RISK)


def sweep(
    indexes: list[faiss.Index],
    queries: np.ndarray,
    truth: np.ndarray,
    name: str,
    settings: list[tuple[int, int]],
    **params: int,
) -> list[tuple[float, float]]:
    """(queries/s, recall) for each (results asked per index, value of parameter ``name``)."""
    rows = []
    for per_index_k, value in settings:
        ids, seconds = search_all(indexes, queries, truth.shape[1], per_index_k, **{**params, name: value})
        rows.append((len(queries) / seconds, recall_at(ids, truth)))
    return rows


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} rss {peak_rss_gib():.1f} GiB] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--shard-k",
        type=int,
        help="results asked of each shard; default: the fewest for which one shard holds more than that many "
        f"of a query's top k with probability <= {SHARD_OVERFLOW_RISK:g} (40 for k 100 and 8 shards)",
    )
    parser.add_argument("--kind", choices=INDEX_KINDS, help="default: choose_index_type(items per shard)")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists scanned per query")
    parser.add_argument(
        "--ef-search", type=int, default=64, help="HNSW candidate list (raised to the k asked)"
    )
    parser.add_argument(
        "--exact-queries", type=int, default=1_000, help="queries searched exactly (the truth)"
    )
    parser.add_argument(
        "--sweep",
        default="",
        help="comma-separated nprobe (IVF) or efSearch (HNSW) values also tried on the exactly searched "
        "queries; default: 16,32,64,128 (IVF) or 40,100,160 (HNSW); 'none' for none",
    )
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node (build_index hnsw_m)")
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=80,
        help="HNSW build candidate list (build_index ef_construction)",
    )
    parser.add_argument(
        "--single-ef",
        choices=["same", "scaled"],
        default="same",
        help="HNSW efSearch of the single index: the shards' value (raised to k), or scaled by "
        "k / shard-k so that both keep the same candidate list per result asked",
    )
    parser.add_argument("--centres", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "q2i.md"))
    args = parser.parse_args()
    kind = args.kind or choose_index_type(args.items // args.shards)
    n_exact = min(args.exact_queries, args.queries)
    k = args.k
    build_kw = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}

    def single_ef(ef: int) -> int:
        return round(ef * k / shard_k) if args.single_ef == "scaled" else ef

    shard_k = args.shard_k or safe_shard_k(k, args.shards)
    if not 1 <= shard_k <= k:
        parser.error(f"--shard-k must be in 1..{k}")

    load_before = os.getloadavg()
    log(
        f"{args.items:,} items, {args.queries:,} queries, {args.shards} shards, k={k} ({shard_k} per shard), "
        f"kind={kind}, "
        f"nprobe={args.nprobe}, efSearch={args.ef_search}; {os.cpu_count()} cores, "
        f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, load average {load_before[0]:.1f}"
    )
    embeddings = Embeddings(args.centres, args.seed)
    items = embeddings.draw(args.items)
    queries = embeddings.draw(args.queries)
    rng = np.random.default_rng(args.seed + 1)
    # Item ids as a catalogue has them: unique, large, in no particular order.
    ids = rng.permutation(np.unique(rng.integers(0, 2**62, size=args.items + args.items // 10 + 10)))
    ids = ids[: args.items].astype(np.int64)
    log("data drawn")

    # 1. Exact brute force: the truth, and the speed to beat.
    start = time.perf_counter()
    exact = faiss.IndexFlatIP(DIM)
    exact.add(items)
    exact_build = time.perf_counter() - start
    start = time.perf_counter()
    _, rows = exact.search(queries[:n_exact], k)
    exact_search = time.perf_counter() - start
    truth = ids[rows]
    exact_rates = [n_exact / exact_search]
    log(f"exact: {n_exact:,} queries in {exact_search:.1f} s")

    def time_exact_again(index) -> None:
        # The exact search is timed again between the other measurements and its median
        # rate is the one compared: on a shared machine the load drifts during a run.
        n = min(500, n_exact)
        t0 = time.perf_counter()
        index.search(queries[:n], k)
        exact_rates.append(n / (time.perf_counter() - t0))

    search_kwargs = {"nprobe": args.nprobe, "ef_search": args.ef_search}
    param = "ef_search" if kind == "hnsw" else "nprobe"
    if args.sweep == "none" or kind == "flat":
        sweep_values = []
    elif args.sweep:
        sweep_values = [int(v) for v in args.sweep.split(",")]
    else:
        sweep_values = [40, 100, 160] if kind == "hnsw" else [16, 32, 64, 128]
    sweep_settings = [(shard_k, value) for value in sweep_values]
    if sweep_values and shard_k < k:
        # The plain setting too, every shard asked for all k, for comparison.
        sweep_settings.append((k, args.ef_search if kind == "hnsw" else args.nprobe))

    # 2. Sharded: one index per shard, every query to every shard, then the merge.
    shard = shard_of(ids, args.shards)
    start = time.perf_counter()
    shard_indexes = []
    for s in range(args.shards):
        mine = np.flatnonzero(shard == s)
        shard_indexes.append(build_index(items[mine], ids[mine], kind, seed=args.seed, **build_kw))
        log(f"shard {s}: {len(mine):,} items indexed")
    sharded_build = time.perf_counter() - start
    time_exact_again(exact)
    merged_ids, sharded_search = search_all(shard_indexes, queries, k, shard_k, **search_kwargs)
    time_exact_again(exact)
    sharded_recall = recall_at(merged_ids[:n_exact], truth)
    log(f"sharded: searched in {sharded_search:.1f} s, recall@{k} {sharded_recall:.4f}")
    sharded_sweep = sweep(shard_indexes, queries[:n_exact], truth, param, sweep_settings, **search_kwargs)
    del shard_indexes, merged_ids
    gc.collect()

    # 3. One index of the same kind over all items.
    start = time.perf_counter()
    single = build_index(items, ids, kind, seed=args.seed, **build_kw)
    single_build = time.perf_counter() - start
    del items
    gc.collect()
    time_exact_again(exact)
    single_kwargs = {**search_kwargs, "ef_search": single_ef(args.ef_search)}
    single_ids, single_search = search_all([single], queries, k, k, **single_kwargs)
    time_exact_again(exact)
    single_recall = recall_at(single_ids[:n_exact], truth)
    log(f"single: searched in {single_search:.1f} s, recall@{k} {single_recall:.4f}")
    single_sweep = sweep(
        [single],
        queries[:n_exact],
        truth,
        param,
        [(k, single_ef(value) if param == "ef_search" else value) for _, value in sweep_settings],
        **search_kwargs,
    )
    del single, exact
    exact_qps = float(np.median(exact_rates))
    log("exact queries/s, each timing: " + ", ".join(f"{r:,.0f}" for r in exact_rates))

    sharded_qps = args.queries / sharded_search
    single_qps = args.queries / single_search
    rows_out = [
        ("exact (IndexFlatIP, 1 index)", exact_build, exact_search, exact_qps, 1.0, 1.0),
        (
            f"sharded {kind} ({args.shards} shards, top {shard_k} each)",
            sharded_build,
            sharded_search,
            sharded_qps,
            sharded_recall,
            sharded_qps / exact_qps,
        ),
        (
            f"single {kind} (1 index)",
            single_build,
            single_search,
            single_qps,
            single_recall,
            single_qps / exact_qps,
        ),
    ]
    table = [
        f"| method | build s | search s | queries/s | recall@{k} | queries/s vs exact |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, build_s, search_s, qps, recall, ratio in rows_out:
        table.append(
            f"| {name} | {build_s:.1f} | {search_s:.1f} | {qps:,.0f} | {recall:.4f} | {ratio:.1f}x |"
        )
    gap = abs(sharded_recall - single_recall)
    verdicts = [
        f"- recall@{k} sharded vs exact >= {TARGET_RECALL}: {'met' if sharded_recall >= TARGET_RECALL else 'NOT met'} ({sharded_recall:.4f})",
        f"- queries/s sharded >= {TARGET_SPEEDUP:.0f}x exact: {'met' if sharded_qps >= TARGET_SPEEDUP * exact_qps else 'NOT met'} ({sharded_qps / exact_qps:.1f}x)",
        f"- sharded vs single {kind} recall within {TARGET_RECALL_GAP}: {'met' if gap <= TARGET_RECALL_GAP else 'NOT met'} (difference {gap:.4f}, sharded {'higher' if sharded_recall > single_recall else 'not higher'})",
    ]
    sweep_table = []
    if sweep_values:
        sweep_table = [
            f"Search parameter sweep on the first {n_exact:,} queries (queries/s vs exact in brackets"
            + ("; efSearch below the results asked is raised to them" if kind == "hnsw" else "")
            + "):",
            "",
            f"| {param} | asked per shard | sharded queries/s | sharded recall@{k} "
            f"| single {param} | single queries/s | single recall@{k} |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (per_shard, value), (sh_qps, sh_recall), (si_qps, si_recall) in zip(
            sweep_settings, sharded_sweep, single_sweep, strict=True
        ):
            si_value = single_ef(value) if param == "ef_search" else value
            sweep_table.append(
                f"| {value} | {per_shard} | {sh_qps:,.0f} ({sh_qps / exact_qps:.1f}x) | {sh_recall:.4f} "
                f"| {si_value} | {si_qps:,.0f} ({si_qps / exact_qps:.1f}x) | {si_recall:.4f} |"
            )
        sweep_table.append("")
    load_after = os.getloadavg()
    notes = [
        f"- {args.items:,} items x {DIM}-d ({args.centres:,} synthetic clusters), {args.queries:,} queries, "
        f"{args.shards} shards by id hash, k = {k}, seed {args.seed}",
        f"- each shard returns its best {shard_k} per query (the single index its best {k}); a shard holds more "
        f"than {shard_k} of a query's true top {k} with probability {overflow_probability(k, args.shards, shard_k):.1e}",
        f"- index kind {kind}; search parameters nprobe = {args.nprobe} (IVF), efSearch = {args.ef_search} (HNSW; "
        f"raised to the k asked when smaller: {max(args.ef_search, shard_k)} per shard, {max(single_ef(args.ef_search), k)} "
        "single index); "
        f"build parameters: HNSW M = {args.hnsw_m}, efConstruction = {args.ef_construction}, others the "
        "`build_index` defaults",
        f"- exact search timed on the first {n_exact:,} of the {args.queries:,} queries (its search s), then again on "
        f"{min(500, n_exact)} queries just before and after the timed sharded and single searches; its queries/s is "
        "the median of those timings (" + ", ".join(f"{r:,.0f}" for r in exact_rates) + "); "
        f"every recall is measured on those {n_exact:,} queries; the sharded and single searches are timed on all "
        f"{args.queries:,} (sharded: search of every shard + merge)",
        f"- {platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"load average {load_before[0]:.1f} at start and {load_after[0]:.1f} at end (the machine is shared)",
        f"- peak RSS {peak_rss_gib():.1f} GiB",
    ]
    report = "\n".join(
        ["# Q2I sharded search benchmark", "", *table, "", *verdicts, "", *sweep_table, *notes, ""]
    )
    print()
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
