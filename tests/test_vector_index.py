"""Tests of udfs.vector_index: shard indexes, their search and the merge of shard answers."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from udfs import vector_index
from udfs.vector_index import build_index, choose_index_type, load_index, merge_topk, save_index, search

DIM = 64


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _random_unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def _item_ids(n: int, seed: int) -> np.ndarray:
    """Unique large int64 ids in random order, far from 0..n-1, to catch row/id mix-ups."""
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(10**12, 2**62, size=2 * n))
    return rng.permutation(ids)[:n].astype(np.int64)


def _clustered(n: int, n_centres: int, seed: int, cosine: float = 0.8) -> np.ndarray:
    """Unit vectors around ``n_centres`` random centres, each at ``cosine`` to its centre.

    Members of one cluster are about cosine**2 (0.64) similar, different clusters about
    0 ± 0.13 (64-d), so every point has real near neighbours, unlike uniform noise.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_centres, DIM)))
    members = centres[rng.integers(0, n_centres, size=n)]
    noise = rng.standard_normal((n, DIM))
    noise -= np.einsum("ij,ij->i", noise, members)[:, None] * members
    noise = _unit(noise)
    return _unit(cosine * members + np.sqrt(1 - cosine**2) * noise)


def _exact_top(
    queries: np.ndarray, items: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: the scores and ids of the k best items per query."""
    sims = queries.astype(np.float64) @ items.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def _shards(items: np.ndarray, ids: np.ndarray, n_shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(items[ids % n_shards == s], ids[ids % n_shards == s]) for s in range(n_shards)]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def corpus() -> dict[str, np.ndarray]:
    # Seeds picked so that no two of a query's 11 best items are within 1e-5 (see below).
    items = _random_unit(3_000, seed=8, dim=384)
    queries = _random_unit(50, seed=1008, dim=384)
    return {"items": items, "queries": queries, "ids": _item_ids(3_000, seed=3)}


def _flat_parts(corpus: dict[str, np.ndarray], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        search(build_index(x, i, "flat"), corpus["queries"], k)
        for x, i in _shards(corpus["items"], corpus["ids"], 4)
    ]


# --- exactness of the sharded search ---------------------------------------------------


def test_merged_flat_shards_equal_brute_force(corpus):
    k = 10
    exact_scores, exact_ids = _exact_top(corpus["queries"], corpus["items"], corpus["ids"], k + 1)
    # The data must not have near ties, or float32 rounding could legitimately swap two
    # neighbours; then "same order" would test rounding, not the code.
    assert np.min(-np.diff(exact_scores, axis=1)) > 1e-5

    scores, ids = merge_topk(_flat_parts(corpus, k), k)

    assert ids.dtype == np.int64 and ids.shape == (50, k)
    np.testing.assert_array_equal(ids, exact_ids[:, :k])
    np.testing.assert_allclose(scores, exact_scores[:, :k], atol=1e-5)


def test_every_shard_really_contributes(corpus):
    """Guards the test above: the global top 10 is spread over all four shards."""
    _, exact_ids = _exact_top(corpus["queries"], corpus["items"], corpus["ids"], 10)
    assert set(np.unique(exact_ids % 4)) == {0, 1, 2, 3}


def test_empty_shard_changes_nothing(corpus):
    k = 10
    empty = build_index(np.empty((0, 384), dtype=np.float32), np.empty(0, dtype=np.int64))
    assert empty.ntotal == 0
    empty_scores, empty_ids = search(empty, corpus["queries"], k)
    assert (empty_ids == -1).all() and np.isneginf(empty_scores).all()

    parts = _flat_parts(corpus, k)
    with_empty = merge_topk([(empty_scores, empty_ids), *parts], k)
    without = merge_topk(parts, k)
    np.testing.assert_array_equal(with_empty[1], without[1])
    np.testing.assert_array_equal(with_empty[0], without[0])


def test_shard_smaller_than_k_is_padded_and_the_merge_drops_the_padding(corpus):
    k = 10
    small_items, small_ids = corpus["items"][:3], corpus["ids"][:3]
    scores, ids = search(build_index(small_items, small_ids), corpus["queries"], k)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert all(set(row[:3]) == set(small_ids) for row in ids)

    # Alone, the merge keeps the three items and pads the rest.
    alone_scores, alone_ids = merge_topk([(scores, ids)], k)
    assert (alone_ids[:, 3:] == -1).all() and np.isneginf(alone_scores[:, 3:]).all()

    # With a large shard, the padding never displaces a real item.
    big_items, big_ids = corpus["items"][3:], corpus["ids"][3:]
    big = search(build_index(big_items, big_ids, "flat"), corpus["queries"], k)
    _, merged_ids = merge_topk([(scores, ids), big], k)
    _, exact_ids = _exact_top(corpus["queries"], corpus["items"], corpus["ids"], k)
    np.testing.assert_array_equal(merged_ids, exact_ids)


# --- merge rules -------------------------------------------------------------------------


def _with_cosine(c: float, dim: int = DIM) -> np.ndarray:
    """A unit vector at cosine ``c`` to the first axis."""
    v = np.zeros(dim, dtype=np.float64)
    v[0], v[1] = c, np.sqrt(1.0 - c * c)
    return v.astype(np.float32)


def test_scores_within_float_noise_tie_and_go_to_the_smaller_id_whichever_side_the_noise_falls():
    # Two items with one title, embedded by two processes: cosines 0.8 and 0.8 + 2e-6.
    # Whichever of them the noise favours, the search keeps the smaller id at k = 1.
    query = _with_cosine(1.0)[None, :]
    for noisy_id in (7, 3):
        ids = np.array([3, 7], dtype=np.int64)
        items = np.stack([_with_cosine(0.8 + 2e-6) if i == noisy_id else _with_cosine(0.8) for i in ids])
        scores, found = search(build_index(items, ids, "flat"), query, 1)
        np.testing.assert_array_equal(found, [[3]])
        np.testing.assert_allclose(scores, [[0.8]], atol=1e-7)


def test_a_tie_at_the_kth_place_is_settled_by_id_even_past_the_index_visiting_order():
    # Ten items at one cosine, the smallest ids added last: an index cut at k in the order
    # it visits them keeps the large ids; the search keeps the smallest.
    ids = np.arange(100, 90, -1, dtype=np.int64)
    items = np.stack([_with_cosine(0.5)] * len(ids))
    scores, found = search(build_index(items, ids, "flat"), _with_cosine(1.0)[None, :], 3)
    np.testing.assert_array_equal(found, [[91, 92, 93]])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_scores_are_the_float64_inner_products_of_the_stored_vectors_rounded(kind):
    # faiss's float32 scores differ from the exact products in the last bits, and HNSW
    # can give one stored vector two scores within one search; rounded to 5 places, some
    # of them land on the other side of a boundary. The search must round exact products.
    items = _random_unit(3_000, seed=11, dim=384)
    ids = _item_ids(3_000, seed=12)
    queries = _random_unit(200, seed=13, dim=384)
    scores, found = search(build_index(items, ids, kind), queries, 50)
    assert (found >= 0).all()
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    rows = np.vectorize(row_of.get)(found)
    exact = np.einsum("qkd,qd->qk", items[rows].astype(np.float64), queries.astype(np.float64))
    np.testing.assert_array_equal(scores, np.round(exact, 5).astype(np.float32))


def test_exact_rescoring_in_blocks_gives_the_same_scores(monkeypatch):
    # The float64 copy of the hits' vectors is made a block of queries at a time.
    items = _random_unit(500, seed=14, dim=384)
    ids = _item_ids(500, seed=15)
    queries = _random_unit(30, seed=16, dim=384)
    index = build_index(items, ids, "hnsw")
    whole = search(index, queries, 20)
    monkeypatch.setattr(vector_index, "RESCORE_BLOCK_BYTES", 7 * 4 * 28 * 384)  # 7 queries a block
    blocks = search(index, queries, 20)
    np.testing.assert_array_equal(whole[0], blocks[0])
    np.testing.assert_array_equal(whole[1], blocks[1])


def test_an_index_grown_after_a_search_scores_its_new_items_from_their_own_vectors():
    # The ids' sort is kept per index between searches; items added since must not be
    # looked up in the old sort (they would take another row's vector and score).
    items = _random_unit(300, seed=20, dim=DIM)
    ids = _item_ids(300, seed=21)
    index = build_index(items[:200], ids[:200], "flat")
    search(index, items[:5], 10)
    index.add_with_ids(items[200:], ids[200:])
    scores, found = search(index, items[200:210], 1)
    assert found[:, 0].tolist() == ids[200:210].tolist()
    np.testing.assert_array_equal(scores[:, 0], np.ones(10, dtype=np.float32))


def test_ivf_scores_are_faiss_scores_rounded():
    # IVF lists do not keep the vectors by row: their scores are faiss's, rounded.
    items = _random_unit(2_000, seed=17, dim=DIM)
    ids = _item_ids(2_000, seed=18)
    queries = _random_unit(10, seed=19, dim=DIM)
    index = build_index(items, ids, "ivf_flat", nlist=8)
    scores, found = search(index, queries, 10, nprobe=8)
    params = faiss.SearchParametersIVF(nprobe=8)
    raw_scores, raw_ids = index.search(queries, 10 + vector_index.TIE_MARGIN, params=params)
    for row in range(len(queries)):
        rounded = np.round(raw_scores[row], 5).astype(np.float32)
        raw = dict(zip(raw_ids[row].tolist(), rounded.tolist(), strict=True))
        assert [raw[i] for i in found[row]] == scores[row].tolist()


def test_merge_breaks_ties_by_smaller_id():
    part_a = (np.array([[0.9, 0.5]], dtype=np.float32), np.array([[40, 7]]))
    part_b = (np.array([[0.9, 0.5]], dtype=np.float32), np.array([[12, 3]]))
    for parts in ([part_a, part_b], [part_b, part_a]):
        scores, ids = merge_topk(parts, 3)
        np.testing.assert_array_equal(ids, [[12, 40, 3]])
        np.testing.assert_array_equal(scores, np.array([[0.9, 0.9, 0.5]], dtype=np.float32))


def test_merge_keeps_an_id_found_by_two_shards_once_with_its_best_score():
    part_a = (np.array([[0.8, 0.7, 0.1]], dtype=np.float32), np.array([[5, 6, 9]]))
    part_b = (np.array([[0.95, 0.6]], dtype=np.float32), np.array([[6, 7]]))
    scores, ids = merge_topk([part_a, part_b], 4)
    np.testing.assert_array_equal(ids, [[6, 5, 7, 9]])
    np.testing.assert_allclose(scores, [[0.95, 0.8, 0.6, 0.1]])


def test_merge_is_per_query_and_pads_short_rows():
    part_a = (
        np.array([[0.2, -np.inf], [0.9, 0.3]], dtype=np.float32),
        np.array([[1, -1], [2, 3]]),
    )
    part_b = (np.array([[0.4], [0.1]], dtype=np.float32), np.array([[4], [5]]))
    scores, ids = merge_topk([part_a, part_b], 3)
    np.testing.assert_array_equal(ids, [[4, 1, -1], [2, 3, 5]])
    assert np.isneginf(scores[0, 2])
    np.testing.assert_allclose(scores[1], [0.9, 0.3, 0.1])


def test_merge_matches_a_plain_loop_on_random_parts_with_ties_repeats_and_gaps():
    rng = np.random.default_rng(17)
    nq, k = 40, 7
    parts = []
    for width in (5, 9, 0, 3):
        # Few distinct scores and ids, so ties and repeated ids are common.
        scores = rng.integers(0, 6, size=(nq, width)).astype(np.float32) / 5
        ids = rng.integers(0, 12, size=(nq, width))
        ids[rng.random((nq, width)) < 0.2] = -1
        scores[ids < 0] = -np.inf
        parts.append((scores, ids))

    scores, ids = merge_topk(parts, k)

    for q in range(nq):
        best: dict[int, float] = {}
        for part_scores, part_ids in parts:
            for score, item in zip(part_scores[q], part_ids[q], strict=True):
                if item >= 0 and score > best.get(int(item), -np.inf):
                    best[int(item)] = float(score)
        expected = sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
        n = len(expected)
        assert ids[q, :n].tolist() == [item for item, _ in expected]
        assert scores[q, :n].tolist() == [score for _, score in expected]
        assert (ids[q, n:] == -1).all() and np.isneginf(scores[q, n:]).all()


def test_merge_of_no_queries_or_no_columns():
    empty = (np.zeros((0, 4), dtype=np.float32), np.zeros((0, 4), dtype=np.int64))
    assert merge_topk([empty], 3)[1].shape == (0, 3)
    no_columns = (np.zeros((2, 0), dtype=np.float32), np.zeros((2, 0), dtype=np.int64))
    scores, ids = merge_topk([no_columns], 3)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_merge_rejects_mismatched_parts():
    good = (np.zeros((2, 3), dtype=np.float32), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="part 1"):
        merge_topk([good, (np.zeros((3, 3)), np.zeros((3, 3)))], 3)
    with pytest.raises(ValueError, match="part 0"):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 2)))], 3)
    with pytest.raises(ValueError):
        merge_topk([], 3)


# --- index type choice and building ---------------------------------------------------


def test_choose_index_type_thresholds():
    assert choose_index_type(0) == "flat"
    assert choose_index_type(19_999) == "flat"
    assert choose_index_type(20_000) == "hnsw"
    assert choose_index_type(999_999) == "hnsw"
    assert choose_index_type(1_000_000) == "ivf_pq"
    assert choose_index_type(50, flat_below=10, hnsw_below=100) == "hnsw"
    assert choose_index_type(100, flat_below=10, hnsw_below=100) == "ivf_pq"
    with pytest.raises(ValueError):
        choose_index_type(-1)


def test_auto_kind_follows_the_thresholds():
    x = _random_unit(200, seed=4)
    ids = np.arange(200) + 1_000
    assert isinstance(faiss.downcast_index(build_index(x, ids).index), faiss.IndexFlatIP)
    graph = build_index(x, ids, flat_below=100)
    assert isinstance(faiss.downcast_index(graph.index), faiss.IndexHNSWFlat)


def test_build_rejects_bad_input():
    x = _random_unit(100, seed=5)
    ids = np.arange(100)
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(x * 2, ids)
    with pytest.raises(ValueError, match="unique"):
        build_index(x, np.zeros(100, dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        build_index(x, ids - 1)
    with pytest.raises(ValueError, match="shape"):
        build_index(x, ids[:50])
    with pytest.raises(ValueError, match="kind"):
        build_index(x, ids, "lsh")
    with pytest.raises(ValueError, match="divide"):
        build_index(x, ids, "ivf_pq", pq_m=7)


def test_ivf_nlist_is_about_4_sqrt_n_and_capped_by_the_training_sample():
    x = _clustered(30_000, 300, seed=6)
    ids = np.arange(30_000)
    assert faiss.extract_index_ivf(build_index(x, ids, "ivf_flat")).nlist == 693  # round(4·sqrt(30000))
    # 5,000 rows can train at most 5000 // 39 = 128 lists (the default would be 283).
    assert faiss.extract_index_ivf(build_index(x[:5_000], ids[:5_000], "ivf_flat")).nlist == 128
    # A smaller training sample caps it further.
    assert faiss.extract_index_ivf(build_index(x, ids, "ivf_flat", train_sample=3_900)).nlist == 100
    assert faiss.extract_index_ivf(build_index(x, ids, "ivf_flat", nlist=50)).nlist == 50


def test_ivf_with_every_list_probed_is_exact():
    both = _clustered(4_020, 40, seed=7)
    x, queries = both[:4_000], both[4_000:]
    ids = _item_ids(4_000, seed=8)
    index = build_index(x, ids, "ivf_flat")
    nlist = faiss.extract_index_ivf(index).nlist
    _, found = search(index, queries, 10, nprobe=nlist)
    _, exact = _exact_top(queries, x, ids, 10)
    np.testing.assert_array_equal(found, exact)


def test_small_ivf_pq_builds_and_finds_ids():
    x = _clustered(2_000, 20, seed=10)
    ids = _item_ids(2_000, seed=11)
    index = build_index(x, ids, "ivf_pq", pq_m=4)
    assert index.ntotal == 2_000
    # 2,000 rows cannot train 256 centroids per sub-quantiser (39 rows each): 5 bits.
    assert faiss.downcast_index(faiss.extract_index_ivf(index)).pq.nbits == 5
    scores, found = search(index, x[:50], 10, nprobe=64)
    assert np.isin(found, ids).all()
    # 20-bit codes blur close neighbours, but an item searched for itself should
    # nearly always be among its 10 best.
    assert np.mean((found == ids[:50, None]).any(axis=1)) >= 0.9


# --- approximate indexes: recall and search parameters --------------------------------


@pytest.fixture(scope="module")
def clustered() -> dict[str, np.ndarray]:
    # Queries are drawn like the items, around the same centres.
    both = _clustered(20_200, 200, seed=12)
    items, queries = both[:20_000], both[20_000:]
    ids = _item_ids(20_000, seed=14)
    _, truth = _exact_top(queries, items, ids, 10)
    return {"items": items, "queries": queries, "ids": ids, "truth": truth}


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw"])
def test_ann_recall_at_10(clustered, kind):
    index = build_index(clustered["items"], clustered["ids"], kind)
    _, found = search(index, clustered["queries"], 10, nprobe=16)
    assert _recall(found, clustered["truth"]) >= 0.9


def test_nprobe_is_applied(clustered):
    index = build_index(clustered["items"], clustered["ids"], "ivf_flat")
    _, one_list = search(index, clustered["queries"], 10, nprobe=1)
    _, many_lists = search(index, clustered["queries"], 10, nprobe=64)
    assert _recall(one_list, clustered["truth"]) < _recall(many_lists, clustered["truth"])


def test_ef_search_is_applied_and_never_below_k(clustered):
    index = build_index(clustered["items"][:5_000], clustered["ids"][:5_000], "hnsw")
    queries = clustered["queries"]
    stats = faiss.cvar.hnsw_stats
    stats.reset()
    search(index, queries, 10, ef_search=16)
    narrow = stats.ndis
    stats.reset()
    search(index, queries, 10, ef_search=256)
    assert stats.ndis > 2 * narrow
    # efSearch below k would return fewer than k results; it is raised to k.
    _, ids = search(index, queries, 200, ef_search=16)
    assert (ids >= 0).all()


def test_search_rejects_wrong_dimension_and_unnormalised_queries(clustered):
    index = build_index(clustered["items"][:100], clustered["ids"][:100])
    with pytest.raises(ValueError, match="dimension"):
        search(index, np.ones((2, DIM + 1), dtype=np.float32) / np.sqrt(DIM + 1), 5)
    with pytest.raises(ValueError, match="L2-normalised"):
        search(index, clustered["queries"] * 3, 5)


# --- reproducibility and persistence ----------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_pq"])
def test_same_input_and_seed_give_identical_bytes(kind):
    x = _clustered(3_000, 30, seed=15)
    ids = _item_ids(3_000, seed=16)

    def build(seed: int) -> np.ndarray:
        return faiss.serialize_index(build_index(x, ids, kind, seed=seed, train_sample=2_500, pq_m=4))

    first = build(3)
    np.testing.assert_array_equal(first, build(3))
    if kind != "flat":
        # The seed is really used: another one trains on another sample.
        assert not np.array_equal(first, build(4))


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "hnsw"])
def test_save_load_round_trip_gives_identical_results(tmp_path, clustered, kind):
    items, ids = clustered["items"][:5_000], clustered["ids"][:5_000]
    index = build_index(items, ids, kind)
    path = tmp_path / "shards" / "part-3" / "index.faiss"
    save_index(index, str(path))
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    loaded = load_index(str(path))
    before = search(index, clustered["queries"], 20, nprobe=8, ef_search=40)
    after = search(loaded, clustered["queries"], 20, nprobe=8, ef_search=40)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert np.isin(after[1], ids).all()


def test_load_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "shard-0.faiss"
    with pytest.raises(FileNotFoundError, match="shard-0.faiss"):
        load_index(str(missing))


def test_an_index_on_a_url_is_copied_once_and_searches_the_same(tmp_path, clustered, monkeypatch):
    from core import files

    monkeypatch.setattr(files, "CACHE_DIR", str(tmp_path / "cache"))
    items, ids = clustered["items"][:2_000], clustered["ids"][:2_000]
    index = build_index(items, ids, "flat")
    url = f"memory://bucket-{tmp_path.name}/build-1/shard-0000.faiss"  # an object store's kind of URL
    save_index(index, url)
    fs, inner = files.filesystem(url)
    assert fs.ls(inner.rsplit("/", 1)[0], detail=False) == [inner]  # no partial file left beside it
    loaded = load_index(url)
    copies = sorted((tmp_path / "cache").iterdir())
    assert [c.name[17:] for c in copies] == ["shard-0000.faiss", "shard-0000.faiss.source"]
    assert copies[1].read_text() == url  # where the copy came from, for remove_stale_copies
    fs.rm(inner)  # the copy on local disk is read from now on
    again = load_index(url)
    for got in (loaded, again):
        np.testing.assert_array_equal(
            search(got, clustered["queries"], 10)[1], search(index, clustered["queries"], 10)[1]
        )
    with pytest.raises(FileNotFoundError, match="shard-0001.faiss"):
        load_index(url.replace("shard-0000", "shard-0001"))


def test_a_newer_build_drops_older_shards_from_memory_and_copies_of_removed_builds(
    tmp_path, clustered, monkeypatch
):
    """A long-running worker sees one build after another: it keeps the newest build's
    shards per index root, and local copies only while their build is still stored."""
    from core import files
    from udfs import vector_index

    monkeypatch.setattr(files, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(vector_index, "_LOADED", {})
    index = build_index(clustered["items"][:500], clustered["ids"][:500], "flat")
    root, other = f"memory://bucket-{tmp_path.name}/indexes", f"memory://bucket-{tmp_path.name}/other"
    paths = {
        "b1": [f"{root}/b1/shard-0000.faiss", f"{root}/b1/shard-0001.faiss"],
        "b2": [f"{root}/b2/shard-0000.faiss"],
        "b3": [f"{root}/b3/shard-0000.faiss"],
        "other": [f"{other}/b1/shard-0000.faiss"],
    }
    for group in paths.values():
        for p in group:
            save_index(index, p)
    for p in [*paths["b1"], *paths["other"], *paths["b2"]]:
        vector_index.load_shard(p)
    # b2's first shard dropped b1's two from memory (b1 still stored: its copies stay)
    assert set(vector_index._LOADED) == {*paths["other"], *paths["b2"]}
    assert len(list((tmp_path / "cache").glob("*.faiss"))) == 4
    fs, inner = files.filesystem(f"{root}/b1")
    fs.rm(inner, recursive=True)  # what jobs.index.remove_old_builds does after a newer build

    got = vector_index.load_shard(paths["b3"][0])
    assert set(vector_index._LOADED) == {*paths["other"], *paths["b3"]}
    sources = sorted(p.read_text() for p in (tmp_path / "cache").glob("*.source"))
    assert sources == sorted([*paths["other"], *paths["b2"], *paths["b3"]])  # b1's copies gone
    assert len(list((tmp_path / "cache").glob("*.faiss"))) == 3
    np.testing.assert_array_equal(
        search(got, clustered["queries"], 5)[1], search(index, clustered["queries"], 5)[1]
    )
