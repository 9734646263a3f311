"""Sharded nearest-neighbour search of item vectors by generated query vectors (Q2I).

Every user's generated queries are embedded (``udfs.embedding.encode``, L2-normalised,
so inner product = cosine similarity) and matched against the item vectors. The items
are split into shards (by a hash of the item id); one Spark job builds one index file
per shard with ``build_index`` + ``save_index``, another routes the queries to every
shard, where a task loads the shard once (``load_index``) and runs ``search`` on its
queries. The per-shard answers of one query are then combined by ``merge_topk``.

Method
------
Each shard keeps its own top ``k`` per query; the union of the shards' exact top ``k``
always holds the global top ``k`` (an item in the global top ``k`` is in the top ``k``
of its own shard), so with exact shards (``flat``) the merge is exact. With approximate
shards the merged recall is at least about the per-shard recall, usually higher: each
shard returns ``k`` candidates while only about ``k / shards`` of the global top ``k``
live in it.

Index types, with ``n`` items of dimension ``d`` in a shard and ``nq`` queries:

- ``flat`` (``IndexFlatIP``): exact. Memory 4·n·d bytes. Search O(nq·n·d) as one BLAS
  product, hence the choice below ``flat_below`` items, where that is cheap.
- ``hnsw`` (``IndexHNSWFlat``): a proximity graph over the full vectors. Memory about
  n·(4·d + 8·M) bytes (level 0 keeps 2·M links of 4 bytes per item). Build about
  O(n·log n·efConstruction·d), the dominant cost (1 to 2 minutes per 100,000 384-d
  items on 2 cores); search about O(log n·efSearch·d) per query. The default while
  the shard fits in memory at full precision (below ``hnsw_below``).
- ``ivf_flat`` (``IndexIVFFlat``): k-means into ``nlist`` lists, a query scans the
  ``nprobe`` lists with the nearest centroids: O((nlist + nprobe·n/nlist)·d) per query.
  Memory as ``flat``; training O(iterations·sample·nlist·d). Not chosen
  automatically: it builds far faster than HNSW (k-means on a sample instead of a graph
  over every item: 55 s against 655 s for one index of 1 M 384-d items on 2 cores) but
  searches slower at the same recall (recall@100 0.96 at 420 against 1,077 queries/s on
  that index; ``bench/q2i.py``).
- ``ivf_pq`` (``IndexIVFPQ``): ``ivf_flat`` with every vector compressed to ``pq_m``
  bytes by product quantisation, so memory is about n·(pq_m + 8) bytes instead of
  4·n·d (24x less for 384-d, ``pq_m`` 16). Scores are approximate, recall lower; the
  choice for shards too large to hold at full precision.

Item ids (int64, >= 0) live in the index (``IndexIDMap`` around flat and HNSW, the
inverted lists of IVF), so searches return item ids, never row numbers; ``-1`` marks an
empty result slot, as in faiss.

Reproducibility
---------------
``flat`` is a plain copy of the input. IVF types train on a sample drawn with
``np.random.default_rng(seed)`` and faiss k-means seeded with ``seed``; k-means is a
deterministic computation in faiss, so the same input and seed give byte-identical
``faiss.serialize_index`` output (tested). HNSW draws the levels from a generator
seeded with ``seed``, but faiss inserts the points of a level from several threads in
an order its documentation leaves unspecified, so the graph is not guaranteed to be the
same from run to run. With faiss-cpu 1.15.1 the graphs came out byte-identical anyway
(30,000 384-d vectors with 1, 2, 8 and 16 threads; 125,000 with 1 and 2), so
``build_index`` does not force a single thread: the build is the dominant cost and one
thread divides its speed by up to the number of cores (on the 2 busy cores measured,
137 s against 116 s for 125,000 vectors; more on a machine with more free cores).
Callers that need a guaranteed-identical graph call ``faiss.omp_set_num_threads(1)``
around the build. Searches of a given index are deterministic.

Threads
-------
faiss runs every build and search on all cores of the machine (OpenMP), and its
threads spin while they wait for each other. A Spark executor running several tasks at
once should therefore call ``faiss.omp_set_num_threads`` with the cores of one task
(``spark.task.cpus``) in each task: oversubscribed, a small IVF-PQ training here ran 3x
slower with 2 threads than with 1 (35 s against 11 s on a busy 2-core machine).
"""

from __future__ import annotations

import math
import weakref

import faiss
import numpy as np

from core import files

INDEX_KINDS = ("flat", "ivf_flat", "ivf_pq", "hnsw")
# faiss k-means warns below 39 training points per centroid: fewer give poor centroids.
MIN_POINTS_PER_CENTROID = 39
# Product quantisation codes of 8 bits (256 centroids per sub-vector) when the sample
# allows it: the fastest faiss code size and the usual accuracy/size trade-off.
PQ_MAX_BITS = 8
NORM_TOLERANCE = 1e-3
# Scores are compared at this many decimals (the precision the Q2I tables keep). The same
# text embedded by two processes (the driver in local mode, an executor on a cluster, in
# other batches) differs by about 1e-7, so two items with the same title are ordered by
# that noise; rounded, they tie and go to the smaller id in every process.
SCORE_DECIMALS = 5
# Extra results fetched per query, so that ties at the k-th place are settled by id and
# not by the order in which the index happens to visit them.
TIE_MARGIN = 8
# Hits rescored per block of queries (a block's copy of the hits' float32 vectors is
# about this many bytes): bounds the memory of the exact rescoring whatever the batch.
RESCORE_BLOCK_BYTES = 64 << 20


def choose_index_type(n: int, *, flat_below: int = 20_000, hnsw_below: int = 1_000_000) -> str:
    """The index type for a shard of ``n`` items.

    Exact while an exhaustive search is cheap, a graph while the full-precision vectors
    fit in memory, compressed beyond.

    Parameters
    ----------
    n : int
        Items in the shard (>= 0).
    flat_below : int
        Below this many items: ``"flat"``. An exact search of 20,000 384-d vectors
        costs 15 MFLOP per query (about a millisecond on one core, done as one BLAS
        product per batch of queries), with no build cost and no recall loss.
    hnsw_below : int
        From ``flat_below`` up to below this many items: ``"hnsw"``, a search that
        touches a few thousand items per query instead of all, while the vectors and
        graph (about 1.8 KiB per 384-d item) fit in the memory of a task. From it up:
        ``"ivf_pq"``, about 24 bytes per item.

    Returns
    -------
    str
        ``"flat"``, ``"hnsw"`` or ``"ivf_pq"``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if flat_below > hnsw_below:
        raise ValueError(f"flat_below ({flat_below}) must not exceed hnsw_below ({hnsw_below})")
    if n < flat_below:
        return "flat"
    if n < hnsw_below:
        return "hnsw"
    return "ivf_pq"


def _as_rows(vectors: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-d array (n, dim) with dim >= 1, got shape {x.shape}")
    return x


def _check_unit_rows(x: np.ndarray, name: str) -> None:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    # Written as "not within" so that NaN rows count as bad too.
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    if bad.size:
        raise ValueError(
            f"{name} must be L2-normalised: row {bad[0]} has norm {norms[bad[0]]:.4f} ({bad.size} such rows)"
        )


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    raw = np.asarray(ids)
    if raw.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {raw.shape}")
    if n and not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {raw.dtype}")
    out = np.ascontiguousarray(raw, dtype=np.int64)
    if n == 0:
        return out
    # -1 means "no result" in faiss answers, so item ids must be >= 0; a repeated id
    # would come back twice from one shard.
    if out.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 marks empty results), got {out.min()}")
    if np.unique(out).size != n:
        raise ValueError("ids must be unique within a shard")
    return out


def _nlist(n: int, n_train: int, nlist: int | None) -> int:
    """Inverted lists: ~4·sqrt(n) by default, never more than the sample can train."""
    wanted = nlist if nlist is not None else round(4 * math.sqrt(n))
    if wanted < 1:
        raise ValueError(f"nlist must be >= 1, got {wanted}")
    return max(1, min(wanted, n_train // MIN_POINTS_PER_CENTROID))


def _train_sample(x: np.ndarray, train_sample: int, seed: int) -> np.ndarray:
    n = len(x)
    if n <= train_sample:
        return x
    rows = np.random.default_rng(seed).choice(n, size=train_sample, replace=False)
    # Sorted so that the sample keeps the input order (and is gathered in one pass).
    return x[np.sort(rows)]


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    kind: str = "auto",
    *,
    seed: int = 0,
    nlist: int | None = None,
    pq_m: int = 16,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    train_sample: int = 100_000,
    flat_below: int = 20_000,
) -> faiss.Index:
    """An inner-product index of one shard whose searches return the item ids.

    Parameters
    ----------
    vectors : np.ndarray
        (n, d) L2-normalised item vectors (converted to float32).
    ids : np.ndarray
        (n,) unique int64 item ids >= 0, stored in the index.
    kind : str
        ``"auto"`` (``choose_index_type(n, flat_below=flat_below)``), ``"flat"``,
        ``"ivf_flat"``, ``"ivf_pq"`` or ``"hnsw"``. An empty shard (n = 0) always gets
        an empty ``flat`` index, whose searches return only ``-1`` ids.
    seed : int
        Seeds the IVF training sample, the faiss k-means and the HNSW level draws.
    nlist : int, optional
        Inverted lists of the IVF types. Default round(4·sqrt(n)); either way at most
        (training rows) // 39, and at least 1: k-means gives poor centroids from fewer
        points per centroid.
    pq_m : int
        ``ivf_pq`` bytes per vector (sub-quantisers of 8 bits); must divide d. With fewer
        than 256·39 training rows the sub-quantisers get fewer bits.
    hnsw_m : int
        HNSW links per item and level (2·``hnsw_m`` on level 0).
    ef_construction : int
        HNSW candidate list while building: larger builds slower, a better graph.
    train_sample : int
        Most rows the IVF types train on (drawn without replacement).
    flat_below : int
        Passed to ``choose_index_type`` for ``kind="auto"``.

    Returns
    -------
    faiss.Index
        Trained and filled, with ``ntotal == n``.
    """
    x = _as_rows(vectors, "vectors")
    n, dim = x.shape
    item_ids = _as_ids(ids, n)
    if kind != "auto" and kind not in INDEX_KINDS:
        raise ValueError(f"kind must be 'auto' or one of {INDEX_KINDS}, got {kind!r}")
    if train_sample < 1:
        raise ValueError(f"train_sample must be >= 1, got {train_sample}")
    if n == 0:
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    _check_unit_rows(x, "vectors")
    if kind == "auto":
        kind = choose_index_type(n, flat_below=flat_below)

    # IndexIDMap, not IndexIDMap2: the reverse map of IDMap2 (reconstruct by id) costs
    # tens of bytes per item and nothing here looks vectors up by id.
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        index.add_with_ids(x, item_ids)
        return index

    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        graph.hnsw.rng = faiss.RandomGenerator(seed)
        index = faiss.IndexIDMap(graph)
        index.add_with_ids(x, item_ids)
        return index

    sample = _train_sample(x, train_sample, seed)
    lists = _nlist(n, len(sample), nlist)
    if kind == "ivf_flat":
        spec = f"IVF{lists},Flat"
    else:
        if dim % pq_m:
            raise ValueError(f"pq_m ({pq_m}) must divide the dimension ({dim})")
        bits = min(PQ_MAX_BITS, int(math.log2(len(sample) / MIN_POINTS_PER_CENTROID)))
        if bits < 1:
            raise ValueError(
                f"ivf_pq needs at least {2 * MIN_POINTS_PER_CENTROID} vectors to train, got {n}; use 'flat'"
            )
        spec = f"IVF{lists},PQ{pq_m}x{bits}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = seed  # coarse k-means
    if kind == "ivf_pq":
        ivf.pq.cp.seed = seed  # the k-means of every sub-quantiser
        # The factory turns on polysemous training, which only serves Hamming-filtered
        # search (unused here) and costs more than all the rest of the training.
        ivf.do_polysemous_training = False
    index.train(sample)
    del sample
    # IVF indexes store the ids in their inverted lists: no IndexIDMap needed.
    index.add_with_ids(x, item_ids)
    return index


def save_index(index: faiss.Index, path: str) -> None:
    """Write ``index`` to ``path``, a local path or a URL (``core.files``), creating the
    parent folders.

    The file is written beside the target and moved into place, so a task killed
    mid-write (and retried by Spark) never leaves a truncated index at ``path``.
    """
    files.write_bytes(path, faiss.serialize_index(index).tobytes())


def load_index(path: str) -> faiss.Index:
    """Read an index written by ``save_index``; from a URL, through a copy on local disk
    made once per machine (``core.files.local_copy``).

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path`` (faiss itself would raise a generic error).
    """
    try:
        local = files.local_copy(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no faiss index file at {path}") from None
    return faiss.read_index(local)


_LOADED: dict[str, faiss.Index] = {}  # shard path -> index, kept per Python worker


def _build_of(path: str) -> tuple[str, str]:
    """(index root, build folder) of a shard at ``<root>/<build>/<shard file>``."""
    folder = path.rsplit("/", 1)[0]
    root, _, build = folder.rpartition("/")
    return root, build


def load_shard(path: str) -> faiss.Index:
    """:func:`load_index`, once per process: a Python worker keeps the shards it searched
    of one build per index root. The first shard of a newer build (a daily rebuild, seen
    by a long-running nearline stream) drops the other builds' shards of that root from
    memory and removes the local copies whose build ``jobs.index`` has removed, so neither
    memory nor local disk grows with the number of builds."""
    if path not in _LOADED:
        root, build = _build_of(path)
        other_builds = [p for p in _LOADED if (b := _build_of(p))[0] == root and b[1] != build]
        for old in other_builds:
            del _LOADED[old]
        if other_builds:
            files.remove_stale_copies()
        _LOADED[path] = load_index(path)
    return _LOADED[path]


def _search_parameters(
    index: faiss.Index, k: int, nprobe: int, ef_search: int
) -> faiss.SearchParameters | None:
    """Per-call search parameters for IVF and HNSW indexes, ``None`` for the others.

    Passing them with the call, instead of setting ``nprobe`` / ``efSearch`` on the
    index, leaves a loaded index unchanged, so one index can serve concurrent searches
    with different settings.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(nprobe=max(1, min(nprobe, ivf.nlist)))
    inner = faiss.downcast_index(index)
    # IndexIDMap / IndexIDMap2 hold the real index in `.index`; IDs pass through, and
    # so do the search parameters.
    while isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexHNSW):
        # HNSW returns at most efSearch results: never ask for fewer than k.
        return faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
    return None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int = 16, ef_search: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` items of one shard with the highest inner product with each query.

    Parameters
    ----------
    index : faiss.Index
        An index from ``build_index`` or ``load_index``.
    queries : np.ndarray
        (nq, d) L2-normalised query vectors.
    k : int
        Results per query (>= 0).
    nprobe : int
        IVF types: inverted lists scanned per query (at most nlist).
    ef_search : int
        HNSW: candidate list of the search, raised to ``k`` when smaller.

    Returns
    -------
    scores : np.ndarray
        (nq, k) float32 inner products rounded to ``SCORE_DECIMALS`` places, each row
        descending, equal scores by the smaller id; ``-inf`` in empty slots. Flat and
        HNSW shards score their hits in float64 from the stored vectors (so one vector
        has one score); IVF shards keep faiss's scores.
    ids : np.ndarray
        (nq, k) int64 item ids; ``-1`` in empty slots (a shard with fewer than ``k``
        items, or an approximate search that found fewer).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    q = _as_rows(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {index.d}")
    _check_unit_rows(q, "queries")
    nq = len(q)
    if k == 0 or nq == 0 or index.ntotal == 0:
        return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
    fetched = k + TIE_MARGIN
    params = _search_parameters(index, fetched, nprobe, ef_search)
    scores, ids = index.search(q, fetched, params=params)
    scores = np.round(_exact_scores(index, q, scores, ids), SCORE_DECIMALS)
    # faiss pads with -3.4e38 for inner product; -inf cannot be mistaken for a score.
    scores[ids < 0] = -np.inf
    # The merge's order (score descending, then the smaller id, empty slots last), cut to k.
    return merge_topk([(scores, ids)], k)


# index -> (its item ids sorted, the row of each), while the index object lives.
_SORTED_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stored_vectors(index: faiss.Index) -> tuple[faiss.Index, np.ndarray, np.ndarray] | None:
    """The flat storage of an ``IndexIDMap`` over a flat or HNSW index, with its item ids
    sorted and, for each, its row; ``None`` for the other kinds (IVF lists, PQ codes).

    The sorted ids are kept per index object while it lives (a loaded shard is searched
    every micro-batch; sorting 80k ids costs ~4 ms) and rebuilt when its size changed."""
    if not isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexIDMap):
        return None
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat)):
        return None
    kept = _SORTED_IDS.get(index)
    if kept is None or len(kept[0]) != index.ntotal:
        row_ids = faiss.vector_to_array(index.id_map)
        order = np.argsort(row_ids, kind="stable")
        kept = _SORTED_IDS[index] = (row_ids[order], order)
    return inner, *kept


def _exact_scores(index: faiss.Index, q: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The hits' inner products recomputed in float64 from the stored vectors, where the
    index stores them whole (flat, HNSW); ``scores`` unchanged otherwise.

    faiss's float32 scores of one stored vector can differ in the last bits between the
    places it meets it in one search (likely: HNSW scores graph neighbours on another path
    than the entry point), so two items with one vector could round to either side of a
    ``SCORE_DECIMALS`` boundary. One float64 product per hit gives one vector one score.
    """
    stored = _stored_vectors(index)
    if stored is None:
        return scores
    inner, sorted_ids, order = stored
    out = scores.astype(np.float64)
    nq, fetched = ids.shape
    dim = q.shape[1]
    block = max(1, RESCORE_BLOCK_BYTES // (4 * max(1, fetched) * dim))
    for start in range(0, nq, block):
        hit_ids = ids[start : start + block]
        found = hit_ids >= 0
        # Empty slots (-1) read row 0 and are put back below.
        rows = np.where(found, order[np.searchsorted(sorted_ids, np.where(found, hit_ids, sorted_ids[0]))], 0)
        vectors = inner.reconstruct_batch(rows.ravel()).reshape(*hit_ids.shape, dim)
        exact = np.einsum("qkd,qd->qk", vectors, q[start : start + block], dtype=np.float64)
        out[start : start + block] = np.where(found, exact, out[start : start + block])
    return out


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` results per query over the answers of several shards.

    Parameters
    ----------
    parts : list of (scores, ids)
        One ``search`` answer per shard, all for the same ``nq`` queries in the same
        order; each a pair of (nq, k_i) arrays (k_i may differ between parts).
    k : int
        Results kept per query (>= 0).

    Returns
    -------
    scores : np.ndarray
        (nq, k) float32, each row descending; ``-inf`` where fewer than ``k`` results.
    ids : np.ndarray
        (nq, k) int64 item ids; ``-1`` where fewer than ``k`` results.

    Notes
    -----
    Slots with id ``-1`` are dropped. An id found by several shards (an item indexed
    twice) is kept once, with its best score. Equal scores are ordered by the smaller
    id, so the result does not depend on the order of ``parts``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not parts:
        raise ValueError("parts must hold at least one (scores, ids) pair")
    nq = len(parts[0][0])
    score_cols, id_cols = [], []
    for i, (part_scores, part_ids) in enumerate(parts):
        part_scores = np.asarray(part_scores, dtype=np.float32)
        part_ids = np.asarray(part_ids, dtype=np.int64)
        if part_scores.ndim != 2 or part_scores.shape != part_ids.shape or len(part_scores) != nq:
            raise ValueError(
                f"part {i}: scores {part_scores.shape} and ids {part_ids.shape} must both be ({nq}, k_i)"
            )
        score_cols.append(part_scores)
        id_cols.append(part_ids)
    scores = np.concatenate(score_cols, axis=1)
    ids = np.concatenate(id_cols, axis=1)

    # Every row sorted on its own (row-wise sorts of a few hundred entries are several
    # times faster than one sort of all (query, id) pairs): score descending, then id
    # ascending; empty slots (-1) last.
    order = np.lexsort((ids, np.where(ids < 0, np.inf, -scores)), axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    # Repeats of an id: a stable sort by id keeps each id's entries in score order, so
    # all but the first of each run of equal ids are worse copies.
    by_id = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, by_id, axis=1)
    repeat_by_id = np.zeros(ids.shape, dtype=bool)
    repeat_by_id[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    repeat = np.empty_like(repeat_by_id)
    np.put_along_axis(repeat, by_id, repeat_by_id, axis=1)

    kept = (ids >= 0) & ~repeat
    rank = np.cumsum(kept, axis=1) - 1  # position among the kept entries of the row
    rows, cols = np.nonzero(kept & (rank < k))
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    out_scores[rows, rank[rows, cols]] = scores[rows, cols]
    out_ids[rows, rank[rows, cols]] = ids[rows, cols]
    return out_scores, out_ids
