"""udfs/embedding.py and jobs/embed.py: the packaged model, Spark batching, the Delta cache."""

from __future__ import annotations

import numpy as np
import pytest

from core import tables
from jobs.embed import TEXT_VECTORS, embed_texts
from tests.conftest import REPO
from udfs.embedding import EmbeddingSpec, encode, spec_from_conf

TEXTS = [
    "white hanging heart t-light holder",
    "heart shaped candle holder in white",
    "set of 3 cake tins pantry design",
    "baking tins vintage pantry set",
    "red retrospot lunch bag",
]


def test_packaged_model_gives_normalised_384d_vectors_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    v = encode(TEXTS)
    assert v.shape == (5, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    np.fill_diagonal(sims, -1)
    # each of the first four has its paraphrase as nearest neighbour
    assert list(sims.argmax(axis=1)[:4]) == [1, 0, 3, 2]


def test_builtin_encoder_matches_sentence_transformers_within_1e_5():
    """Vectors of 20 texts (titles, queries, empty, accents, other scripts, emoji, a text
    longer than the 256-token cap) computed by sentence-transformers 6.3 on torch 2.15
    when the encoder changed (tests/data/minilm_reference.npz), against udfs.minilm."""
    ref = np.load(REPO / "tests" / "data" / "minilm_reference.npz")
    got = encode([str(t) for t in ref["texts"]], EmbeddingSpec())
    assert got.shape == ref["vectors"].shape
    assert float(np.abs(got - ref["vectors"]).max()) < 1e-5


def test_batch_size_and_order_do_not_change_a_vector():
    one = encode(TEXTS, EmbeddingSpec(batch_size=1))
    many = encode(TEXTS[::-1], EmbeddingSpec(batch_size=64))[::-1]
    assert float(np.abs(one - many).max()) < 1e-6


def test_unknown_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="neither"):
        encode(["x"], EmbeddingSpec(model=str(tmp_path / "nope")))


def test_spark_vectors_match_the_plain_model_row_by_row(spark, conf_factory):
    conf = conf_factory()
    df = spark.createDataFrame([(i, t) for i, t in enumerate(TEXTS * 3)], "id int, text string").repartition(
        3
    )
    got = {
        r.id: np.asarray(r.vector, dtype=np.float32) for r in embed_texts(spark, conf, df, "text").collect()
    }
    expected = encode(TEXTS)
    assert len(got) == 15
    for i, vec in got.items():
        # a vector attached to the wrong row would match another text's vector instead
        assert np.allclose(vec, expected[i % 5], atol=1e-4), i


@pytest.mark.slow
def test_cache_embeds_each_text_once_per_model(spark, conf_factory, caplog):
    conf = conf_factory()
    spec = spec_from_conf(conf)
    first = spark.createDataFrame([(t,) for t in TEXTS[:3]], "text string")
    embed_texts(spark, conf, first, "text").collect()
    assert tables.read(spark, conf, TEXT_VECTORS).count() == 3
    both = spark.createDataFrame([(t,) for t in TEXTS + [None]], "text string")
    rows = embed_texts(spark, conf, both, "text").collect()
    out = caplog.text
    caplog.clear()
    assert "5 distinct texts, 3 cached, 2 to embed" in out
    cache = tables.read(spark, conf, TEXT_VECTORS)
    assert cache.count() == 5 and {r.embedding_model for r in cache.collect()} == {spec.model_id}
    assert sum(r.vector is None for r in rows) == 1  # the null text has no vector, and no cache row
    # the same texts again: nothing to embed, the table is unchanged
    embed_texts(spark, conf, both, "text").collect()
    assert "5 cached, 0 to embed" in caplog.text
    assert tables.read(spark, conf, TEXT_VECTORS).count() == 5


def test_no_texts_and_no_cache_yet_gives_an_empty_result_not_an_error(spark, conf_factory):
    conf = conf_factory()
    empty = spark.createDataFrame([], "doc_id string, doc_text string")
    out = embed_texts(spark, conf, empty, "doc_text")
    assert out.count() == 0 and {"vector", "embedding_model"} <= set(out.columns)
    nulls = spark.createDataFrame([("d1", None)], "doc_id string, doc_text string")
    assert embed_texts(spark, conf, nulls, "doc_text").first()["vector"] is None


def test_item_text_falls_back_to_the_category_when_there_is_no_title(spark):
    from jobs.embed import item_texts

    rows = [
        ("I1", "Jumbo Bag Red", None, "bags", "mid", [{"kind": "colour", "value": "red"}]),
        ("I2", None, None, "4756105", None, []),  # an id-only catalog (Taobao): category alone
        ("I3", None, None, "unknown", None, []),  # nothing to say: left out
        ("I4", None, None, None, None, []),
    ]
    profiles = spark.createDataFrame(
        rows,
        "item_id string, title string, short_title string, leaf_category string, price_band string, "
        "decision_factors array<struct<kind:string,value:string>>",
    )
    got = {r.item_id: r.text for r in item_texts(profiles).collect()}
    assert got == {"I1": "Jumbo Bag Red. bags. red", "I2": "4756105"}
