"""Index: item vectors -> FAISS shard files + ``gold.index_manifest``.

Items (``silver.item_vectors``) are split into shards of at most ``index.shard_size``:
``hash`` spreads them evenly (``pmod(vector_id, shards)``); ``category`` keeps a category
together (a category larger than a shard is split by hash). Each shard is built in its
own Spark task (``applyInPandas``) with ``udfs.vector_index.build_index``: Flat below
``index.flat_below`` items, else the approximate type ``index.kind`` names (HNSW by
default), trained on a seeded sample, so a rebuild of the same vectors gives the same
shards. Files go to ``<index.path or storage.root/indexes>/<build id>/shard-NNNN.faiss``: a
local or mounted shared path, or a URL fsspec can open (``s3://``, ``gs://``, ``abfs://``
with the matching fsspec package; ``core.files``), from which every executor of
``jobs.q2i`` and the nearline copies a shard once to local disk. The manifest (shard,
path, count, type, model, built_at, build_id) is rewritten each build; then only the
newest ``index.keep_builds`` build folders are kept (a running nearline stream still
reads the previous build until it reloads).

Example
-------
>>> from jobs.index import run
>>> run(spark, load_config())          # or: discovery index
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import files, tables
from core.config import Config
from udfs.vector_index import build_index, choose_index_type, save_index

log = logging.getLogger(__name__)

MANIFEST = "gold.index_manifest"
MANIFEST_SCHEMA = "shard int, path string, count long, kind string, embedding_model string, build_id string"


# A build's folder: its UTC start time (to the microsecond; to the second before), so
# that build folders sort by age.
BUILD_ID = re.compile(r"^\d{8}T\d{6}(\d{6})?$")


def index_root(conf: Config) -> str:
    """Folder of the shard files: an absolute path (executors may run in another working
    directory) or a URL."""
    return files.absolute(conf.index.path or files.join(conf.storage.root, "indexes"))


def remove_old_builds(root: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` build folders under ``root``; returns the removed
    ones. Folders whose names are not build ids are left alone."""
    builds = [name for name in files.folders(root) if BUILD_ID.match(name)]
    old = builds[: max(len(builds) - keep, 0)]
    for name in old:
        files.remove_tree(files.join(root, name))
    return old


def assign_shards(vectors: DataFrame, shard_by: str, shard_size: int) -> DataFrame:
    """``vectors`` + ``shard`` (0-based, dense).

    hash: ``ceil(n / shard_size)`` shards, ``pmod(vector_id, shards)``; category: the
    categories in name order, each split into ``ceil(n_c / shard_size)`` hash shards.
    """
    if shard_by == "hash":
        n = vectors.count()
        shards = max(1, math.ceil(n / shard_size))
        return vectors.withColumn("shard", F.pmod(F.col("vector_id"), F.lit(shards)).cast("int"))
    per_cat = (
        vectors.groupBy("leaf_category")
        .count()
        .withColumn("parts", F.ceil(F.col("count") / shard_size).cast("int"))
        # first shard number of each category: the parts of the categories before it
        .withColumn("first", F.coalesce(F.sum("parts").over(Window.orderBy("leaf_category").rowsBetween(
            Window.unboundedPreceding, -1)), F.lit(0)).cast("int"))
    )  # fmt: skip
    return (
        vectors.join(F.broadcast(per_cat.select("leaf_category", "parts", "first")), "leaf_category")
        .withColumn("shard", (F.col("first") + F.pmod(F.col("vector_id"), F.col("parts"))).cast("int"))
        .drop("parts", "first")
    )


def build_shards(assigned: DataFrame, conf: Config, build_dir: str, model_id: str) -> DataFrame:
    """One task per shard builds and writes its index; returns the manifest rows."""
    ic = conf.index
    kind, flat_below, seed = ic.kind, ic.flat_below, ic.seed

    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        import numpy as np

        shard = int(pdf["shard"].iloc[0])
        # Sorted by id: the same vectors in any order give the same index.
        pdf = pdf.sort_values("vector_id")
        vectors = np.asarray(pdf["vector"].tolist(), dtype=np.float32)
        ids = pdf["vector_id"].to_numpy(dtype=np.int64)
        built_kind = choose_index_type(len(ids), flat_below=flat_below) if kind == "auto" else kind
        index = build_index(vectors, ids, built_kind, seed=seed, flat_below=flat_below)
        path = files.join(build_dir, f"shard-{shard:04d}.faiss")
        save_index(index, path)
        return pd.DataFrame(
            [{"shard": shard, "path": path, "count": len(ids), "kind": built_kind,
              "embedding_model": model_id, "build_id": build_dir.rstrip("/").rsplit("/", 1)[-1]}]
        )  # fmt: skip

    return (
        assigned.select("shard", "vector_id", "vector").groupBy("shard").applyInPandas(build, MANIFEST_SCHEMA)
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Build the shards of ``silver.item_vectors``; rewrite ``gold.index_manifest``."""
    ic = conf.index
    vectors = tables.read(spark, conf, "silver.item_vectors").filter(F.col("vector").isNotNull())
    models = [r[0] for r in vectors.select("embedding_model").distinct().collect()]
    if len(models) > 1:
        raise RuntimeError(f"index: silver.item_vectors mixes models {models}: re-run the embed stage")
    model_id = models[0] if models else ""
    build_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    root = index_root(conf)
    build_dir = files.join(root, build_id)
    assigned = assign_shards(vectors, ic.shard_by, ic.shard_size)
    manifest = build_shards(assigned, conf, build_dir, model_id).withColumn("built_at", F.current_timestamp())
    tables.overwrite(manifest, conf, MANIFEST)
    rows = tables.read(spark, conf, MANIFEST).orderBy("shard").collect()
    removed = remove_old_builds(root, ic.keep_builds)
    if removed:
        log.info(
            "index: removed %d older build(s) of %s (index.keep_builds %d)",
            len(removed),
            root,
            ic.keep_builds,
        )
    total = sum(r["count"] for r in rows)
    kinds = sorted({r["kind"] for r in rows})
    log.info(
        f"index: {len(rows)} shard(s) ({ic.shard_by}, {', '.join(kinds) or '-'}), {total:,} items, "
        f"build {build_id} in {build_dir}",
    )
    return {"shards": len(rows), "items": total}
