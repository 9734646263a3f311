"""Grouping near-duplicate texts by the cosine similarity of their embeddings.

Market-trend queries written by many agents say the same thing in many ways ("2025
children's dress trend", "kids dresses trending 2025"). They are normalised by clustering
their L2-normalised embeddings (``udfs.embedding.encode``) so that paraphrases share one
cluster and unrelated queries do not.

Method: leader clustering in rounds
-----------------------------------
``threshold_clusters`` is a threshold agglomeration on cosine similarity that scales to
hundreds of thousands of vectors:

1. Exact duplicate rows are collapsed first (their weights add up), so identical vectors
   always share a cluster.
2. Round 1 works on the points. Every point gets its ``k`` nearest neighbours (``knn``).
   Points are visited strongest first: by weight, then by how many neighbours are at
   least ``threshold`` similar, then by the summed similarity of those neighbours (the
   count is capped at ``k``; the sum still picks out the most central point), then by
   index. An unassigned point becomes the leader of a new cluster and takes every
   still-unassigned neighbour that is at least ``threshold`` similar *to the leader*.
   Members never recruit further members, so a chain of pairwise-similar points
   (a ~ b ~ c ~ ...) cannot pull its far ends together. One refinement: an unassigned
   point whose close neighbours were already taken first tries their leaders, and joins
   the most similar one if it is within ``threshold`` of it; only otherwise does it lead
   a cluster of its own. The summed-similarity order and this refinement keep points
   near the edge of a group from ending as singletons beside it: on 200k synthetic paraphrases (``bench/trends.py``) round 1
   leaves ~5k clusters instead of ~50k for round 2.
3. A leader only sees its ``k`` neighbours, so a group larger than ``k`` ends round 1 in
   several pieces. Each later round clusters the centroids of the previous round (mean of
   the members, re-normalised; weights = summed member weights) the same way and merges
   the clusters whose centroids join. Rounds stop when one merges fewer than 1 % of the
   clusters, or after ``max_rounds``.

After round 1 every member is within ``threshold`` of its leader. Later rounds join
whole clusters whose *centroids* are within ``threshold`` of a leading centroid, so a
merged cluster may have no member that all others are within ``threshold`` of: the
bound then holds between centroids, not points. Such merges can grow a cluster by one
centroid step per round (``max_rounds`` caps it), never point by point along the data;
at low thresholds, where many groups' centroids are close, clusters do grow large this
way. Labels are numbered by first appearance in the input order.

Cost
----
Memory is O(n·(d + k)). Time is dominated by the neighbour search of round 1:

- below ``exact_below`` rows, an exact search (``faiss.IndexFlatIP``): O(n²·d), fast
  BLAS, exact;
- from ``exact_below`` rows up, an HNSW graph (``faiss.IndexHNSWFlat``, inner product,
  M=32): building and querying cost about O(n·log n·d), approximate (a few true
  neighbours may be missed, nearly always the less similar ones).

The leader walk is O(n·k). Later rounds work on the clusters of the previous round,
usually far fewer than n points.

Determinism
-----------
For the same input (same rows in the same order) the labels are the same on every call:
the exact search is a fixed computation; HNSW levels are drawn from a generator seeded
with ``seed``, and the faiss used here (1.15) builds the same graph whatever the number
of threads (checked: identical graphs with 1 and 2 threads). Older faiss builds the
HNSW graph with racing threads; there, call ``faiss.omp_set_num_threads(1)`` first for
repeatable labels. Reordering the input rows may change which point leads a cluster and
so, near the threshold, the clusters themselves.
"""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_MIN_EF_SEARCH = 64
# float32 dot products of unit vectors are off by ~1e-7; without this slack an exact
# duplicate can score 0.99999994 and miss a threshold of 1.0.
SIMILARITY_TOLERANCE = 1e-5
# A round that merges fewer than this share of the clusters ends the rounds.
MIN_MERGE_FRACTION = 0.01
NORM_TOLERANCE = 1e-3


def _as_rows(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array (n, dim), got shape {x.shape}")
    return x


def _check_unit_rows(x: np.ndarray) -> None:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    # Written as "not within" so that NaN rows count as bad too.
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    if bad.size:
        raise ValueError(
            f"vectors must be L2-normalised: row {bad[0]} has norm {norms[bad[0]]:.4f} ({bad.size} such rows)"
        )


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def knn(
    vectors: np.ndarray, k: int, *, exact_below: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row by inner product, the row itself excluded.

    Parameters
    ----------
    vectors : np.ndarray
        (n, d) L2-normalised rows, so that inner product = cosine similarity.
    k : int
        Neighbours per row (>= 0).
    exact_below : int
        Below this many rows the search is exact (``faiss.IndexFlatIP``); from it up, an
        HNSW graph (``faiss.IndexHNSWFlat``, M=32, efConstruction=80,
        efSearch=max(64, 2·(k+1))) that may miss a few true neighbours.
    seed : int
        Seeds the HNSW level draws; unused by the exact search.

    Returns
    -------
    sims : np.ndarray
        (n, k) float32 similarities, each row in descending order; ``-inf`` in the slots
        left empty when fewer than ``k`` other rows exist (or HNSW found fewer).
    ids : np.ndarray
        (n, k) int64 row numbers of the neighbours; ``-1`` in the empty slots.

    Notes
    -----
    When duplicates tie with the row itself, the row may not come back from the index;
    the search asks for ``k + 1`` results and keeps the first ``k`` that are not the row.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    x = _as_rows(vectors)
    n, dim = x.shape
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or k == 0:
        return sims, ids

    wanted = min(k + 1, n)
    if n < exact_below:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        found_sims, found_ids = index.search(x, wanted)
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.rng = faiss.RandomGenerator(seed)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(x)
        index.hnsw.efSearch = max(HNSW_MIN_EF_SEARCH, 2 * wanted)
        found_sims, found_ids = index.search(x, wanted)
    del index

    # Drop the row itself; where it did not come back (ties among duplicates), drop the
    # last result instead so that every row keeps at most `wanted - 1` neighbours.
    keep = found_ids != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False
    kept = wanted - 1
    found_ids = found_ids[keep].reshape(n, kept)
    found_sims = found_sims[keep].reshape(n, kept)
    missing = found_ids < 0
    found_sims[missing] = -np.inf
    ids[:, :kept] = found_ids
    sims[:, :kept] = found_sims
    return sims, ids


def _leader_round(
    vectors: np.ndarray, sims: np.ndarray, ids: np.ndarray, weights: np.ndarray, threshold: float
) -> np.ndarray:
    """One pass of leader clustering over a kNN graph; cluster ids by order of creation."""
    n = len(weights)
    close = (sims >= threshold - SIMILARITY_TOLERANCE) & (ids >= 0)
    n_close = close.sum(axis=1)
    # n_close is capped at k, so in groups larger than k many points tie; among them the
    # one with the most similar neighbours is the most central and leads first, so that
    # more of its group is within the threshold of it.
    closeness = np.where(close, sims, 0.0).sum(axis=1)
    # lexsort: the last key sorts first; the index breaks the remaining ties.
    order = np.lexsort((np.arange(n), -closeness, -n_close, -weights))
    labels = np.full(n, -1, dtype=np.int64)
    leaders: list[int] = []
    for point in order:
        if labels[point] >= 0:
            continue
        neighbours = ids[point, close[point]]
        taken = labels[neighbours]
        # A point left over because its close neighbours were taken first joins the most
        # similar of their leaders if it is within the threshold of that leader; without
        # this, such points end as singletons beside their own group.
        if (taken >= 0).any():
            candidates = np.unique(taken[taken >= 0])
            to_leaders = vectors[[leaders[c] for c in candidates]] @ vectors[point]
            best = int(np.argmax(to_leaders))
            if to_leaders[best] >= threshold - SIMILARITY_TOLERANCE:
                labels[point] = candidates[best]
                continue
        labels[point] = len(leaders)
        labels[neighbours[taken < 0]] = len(leaders)
        leaders.append(int(point))
    return labels


def _group_sum(values: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of ``values`` per label; a sparse product avoids copying the rows."""
    n = len(labels)
    membership = sp.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(n_groups, n))
    return np.asarray(membership @ values, dtype=np.float32)


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel so that cluster 0 holds row 0, the next new cluster the next new row, ..."""
    if labels.size == 0:
        return labels.astype(np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def threshold_clusters(
    vectors: np.ndarray,
    threshold: float = 0.8,
    k: int = 32,
    *,
    weights: np.ndarray | None = None,
    max_rounds: int = 8,
    exact_below: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """Cluster unit vectors so that paraphrases (cosine >= ``threshold``) share a cluster.

    Leader clustering in rounds (see the module docstring): no chaining, groups larger
    than ``k`` are joined by the later rounds, identical rows always share a cluster.

    Parameters
    ----------
    vectors : np.ndarray
        (n, d) L2-normalised rows (as ``udfs.embedding.encode`` returns).
    threshold : float
        Cosine similarity a member needs to its leader (compared with a 1e-5 slack for
        float32 rounding, so 1.0 groups exact and near-exact duplicates).
    k : int
        Neighbours looked at per point and round (>= 1).
    weights : np.ndarray, optional
        (n,) non-negative weights, e.g. query counts; heavier points lead first. Default:
        all 1.
    max_rounds : int
        Most rounds (>= 1); round 1 clusters the points, later ones the centroids.
    exact_below : int
        Passed to ``knn``: exact neighbour search below this many vectors, HNSW above.
    seed : int
        Passed to ``knn`` (HNSW level draws).

    Returns
    -------
    np.ndarray
        (n,) int64 labels in ``0..C-1``, numbered by first appearance in the input
        order: row 0 is in cluster 0, the first row outside it in cluster 1, and so on.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    x = _as_rows(vectors)
    n = len(x)
    if weights is None:
        w = np.ones(n, dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError("weights must be finite and >= 0")
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    _check_unit_rows(x)

    # Exact duplicates become one point (the first copy stands for them, with the
    # summed weight), so they end in one cluster however many copies there are.
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, labels = np.unique(rows, return_index=True, return_inverse=True)
    if len(first) == n:
        labels = np.arange(n, dtype=np.int64)
        points = x
        sums = x  # unnormalised sum of the members of each current cluster
    else:
        # np.unique numbers the distinct rows in byte order; renumber them by first
        # appearance so that the index tie-break follows the input order.
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        labels = rank[labels.ravel()]
        points = x[np.sort(first)]
        sums = points * np.bincount(labels).astype(np.float32)[:, None]
        w = np.bincount(labels, weights=w)

    for _ in range(max_rounds):
        m = len(points)
        if m <= 1:
            break
        sims, ids = knn(points, min(k, m - 1), exact_below=exact_below, seed=seed)
        round_labels = _leader_round(points, sims, ids, w, threshold)
        del sims, ids
        n_new = int(round_labels.max()) + 1
        labels = round_labels[labels]
        if n_new < m:
            sums = _group_sum(sums, round_labels, n_new)
            w = np.bincount(round_labels, weights=w, minlength=n_new)
            points = _normalise(sums)
        if m - n_new < MIN_MERGE_FRACTION * m:
            break
    return _first_appearance(labels)


def kmeans_labels(vectors: np.ndarray, n_clusters: int, *, seed: int = 0, niter: int = 25) -> np.ndarray:
    """Spherical k-means (``faiss.Kmeans``) labels: the nearest centroid of every row.

    A baseline for ``threshold_clusters`` that must be told the number of clusters.

    Parameters
    ----------
    vectors : np.ndarray
        (n, d) L2-normalised rows.
    n_clusters : int
        Number of centroids, 1..n.
    seed : int
        Seed of the centroid initialisation.
    niter : int
        Lloyd iterations.

    Returns
    -------
    np.ndarray
        (n,) int64 centroid numbers in ``0..n_clusters-1`` (some may be unused).
    """
    x = _as_rows(vectors)
    n, dim = x.shape
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in 1..{n} (the number of rows), got {n_clusters}")
    # min_points_per_centroid=1: few points per centroid is the point of this baseline,
    # not a mistake to warn about.
    km = faiss.Kmeans(
        dim, n_clusters, niter=niter, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1
    )
    km.train(x)
    _, nearest = km.index.search(x, 1)
    return nearest[:, 0].astype(np.int64)


def cluster_quality(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Agreement of two labelings: adjusted Rand index and normalised mutual information.

    Parameters
    ----------
    labels_true, labels_pred : np.ndarray
        (n,) labels of the same rows; only which rows share a label matters.

    Returns
    -------
    dict[str, float]
        ``{"ari": ..., "nmi": ...}``; both are 1.0 for identical partitions, ARI is about
        0 for random labels (and may be negative), NMI is in [0, 1].
    """
    return {
        "ari": float(adjusted_rand_score(labels_true, labels_pred)),
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
    }
