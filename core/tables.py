"""Table IO: where each Delta table lives, and the idempotent ways we write them.

Tables are named ``<layer>.<table>`` in code (``"bronze.events"``). With
``storage.root`` they are Delta folders ``<root>/<layer>/<table>``; with
``storage.catalog = "main.discovery"`` they are catalog tables
``main.discovery_<layer>.<table>`` (Unity Catalog style).

Every write here is idempotent: re-running a job on the same input leaves every
table with the same rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from core.config import Config

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "gold")


def _split(name: str) -> tuple[str, str]:
    layer, _, table = name.partition(".")
    if layer not in LAYERS or not table:
        raise ValueError(f"table name must be '<layer>.<table>' with layer in {LAYERS}: {name!r}")
    return layer, table


def location(conf: Config, name: str) -> str:
    """Path (storage.root) or catalog name (storage.catalog) of a table."""
    layer, table = _split(name)
    if conf.storage.catalog:
        return f"{conf.storage.catalog}_{layer}.{table}"
    root = conf.storage.root
    if "://" not in root:
        root = str(Path(root).resolve())
    return f"{root}/{layer}/{table}"


def exists(spark: SparkSession, conf: Config, name: str) -> bool:
    loc = location(conf, name)
    if conf.storage.catalog:
        return spark.catalog.tableExists(loc)
    return DeltaTable.isDeltaTable(spark, loc)


def read(spark: SparkSession, conf: Config, name: str) -> DataFrame:
    """Read a Delta table; fails with the table's name if it was never written."""
    if not exists(spark, conf, name):
        raise FileNotFoundError(
            f"table {name} does not exist at {location(conf, name)}: run the job that writes it first"
        )
    loc = location(conf, name)
    return spark.read.table(loc) if conf.storage.catalog else spark.read.format("delta").load(loc)


def _delta_table(spark: SparkSession, conf: Config, name: str) -> DeltaTable:
    loc = location(conf, name)
    return DeltaTable.forName(spark, loc) if conf.storage.catalog else DeltaTable.forPath(spark, loc)


def _writer(df: DataFrame, conf: Config, partition_by: list[str] | None):
    w = df.write.format("delta")
    if partition_by:
        w = w.partitionBy(*partition_by)
    return w


def by_partition(df: DataFrame, partition_by: list[str]) -> DataFrame:
    """``df`` with the rows of each partition value in one task, so that a write partitioned
    by ``partition_by`` makes one file per value rather than one per task and value (a
    year of events read in 8 tasks gave 2,440 small files, which every later read opened)."""
    return df.repartition(*partition_by)


def _save(writer, conf: Config, name: str) -> None:
    loc = location(conf, name)
    if conf.storage.catalog:
        writer.saveAsTable(loc)
    else:
        writer.save(loc)


def overwrite(df: DataFrame, conf: Config, name: str, partition_by: list[str] | None = None) -> None:
    """Replace the whole table with ``df`` (schema included)."""
    w = _writer(df, conf, partition_by).mode("overwrite").option("overwriteSchema", "true")
    _save(w, conf, name)


def replace_where(
    df: DataFrame, conf: Config, name: str, condition: str, max_rows_per_file: int | None = None
) -> None:
    """Replace the rows matching the SQL ``condition`` with ``df`` (all of whose rows must
    match it), in one commit; the table must exist. ``max_rows_per_file``: each task's rows
    are split into files of at most that many rows, in the task's order."""
    w = df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
    if max_rows_per_file:
        w = w.option("maxRecordsPerFile", int(max_rows_per_file))
    _save(w, conf, name)


def replace_partition_by_key(
    spark: SparkSession,
    conf: Config,
    name: str,
    df: DataFrame,
    partition: tuple[str, object],
    key: str,
    properties: dict[str, str],
    max_rows_per_file: int,
) -> int:
    """Replace the partition ``partition = (column, value)`` of ``name`` (partitioned by that
    column; created, or replaced when its columns differ) with ``df``, laid out for lookups
    of a few keys: files by ``key`` range, sorted by key, of at most ``max_rows_per_file``
    rows, with the table ``properties`` (e.g. the Parquet row group size) set first.

    ``df`` is sorted by the partition column before the key: a write to a partitioned table
    sorts each task by that column unless its input already is, and that sort, once it
    spills (tens of millions of rows a task), interleaves its runs, so that every file
    would span most keys of its task. ``df`` is read twice (the range partitioner samples
    it first): pass it computed once (cached or checkpointed) when it is costly.

    Returns the number of rows written."""
    column, value = partition
    laid_out = df.repartitionByRange(conf.spark.shuffle_partitions, key).sortWithinPartitions(column, key)
    reset_if_other_columns(spark, conf, name, laid_out, [column])
    set_properties(spark, conf, name, properties)
    before = version(spark, conf, name)
    replace_where(laid_out, conf, name, f"{column} = '{value}'", max_rows_per_file)
    return rows_written(spark, conf, name, before)


def delete_where(spark: SparkSession, conf: Config, name: str, condition: str) -> None:
    """Delete the rows matching the SQL ``condition`` (no commit when none match)."""
    _delta_table(spark, conf, name).delete(condition)


def reset_if_other_columns(
    spark: SparkSession, conf: Config, name: str, df: DataFrame, partition_by: list[str]
) -> None:
    """Create ``name`` empty with ``df``'s columns, partitioned by ``partition_by``, unless
    it exists with the same columns; a table written by another version (other columns) is
    replaced, its history dropped, with a warning."""

    def columns(schema) -> list[tuple[str, str]]:
        return [(f.name, f.dataType.simpleString()) for f in schema]

    present = exists(spark, conf, name)
    other = present and columns(read(spark, conf, name).schema) != columns(df.schema)
    if other:
        log.warning("%s was written by another version (other columns): its history is dropped", name)
    if other or not present:
        overwrite(df.limit(0), conf, name, partition_by=partition_by)


def set_properties(spark: SparkSession, conf: Config, name: str, properties: dict[str, str]) -> None:
    """Set table properties of ``name`` (one commit, only when one differs). Delta also
    passes them to the Parquet writer of every later write, e.g. ``parquet.block.size``."""
    table = location(conf, name) if conf.storage.catalog else f"delta.`{location(conf, name)}`"
    current = spark.sql(f"DESCRIBE DETAIL {table}").collect()[0]["properties"] or {}
    wanted = {k: str(v) for k, v in properties.items()}
    if any(current.get(k) != v for k, v in wanted.items()):
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in wanted.items())
        spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ({pairs})")


def last_commit(spark: SparkSession, conf: Config, name: str):
    return _delta_table(spark, conf, name).history(1).collect()[0]


def merge_insert_new(
    df: DataFrame, conf: Config, name: str, keys: list[str], partition_by: list[str] | None = None
) -> int:
    """Insert the rows of ``df`` whose key is not in the table yet; existing rows stay as they are.

    The table is created on first use. ``df`` must not hold two rows with one key.
    Returns the number of rows inserted.
    """
    spark = df.sparkSession
    if not exists(spark, conf, name):
        _save(_writer(df, conf, partition_by).mode("errorifexists"), conf, name)
        return rows_written(spark, conf, name, None)
    before = version(spark, conf, name)
    cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if partition_by:
        # Lets Delta prune files: rows of a batch only touch their own partitions.
        cond += "".join(f" AND t.`{p}` = s.`{p}`" for p in partition_by)
    (
        _delta_table(spark, conf, name)
        .alias("t")
        .merge(df.alias("s"), cond)
        .whenNotMatchedInsertAll()
        .execute()
    )
    # A MERGE that changes nothing may leave no commit at all (then 0).
    return rows_written(spark, conf, name, before)


def merge_upsert(
    df: DataFrame,
    conf: Config,
    name: str,
    keys: list[str],
    update_when: str,
    update_set: dict[str, str],
) -> None:
    """Insert new keys; update a matched row only where ``update_when`` holds.

    With an ``update_when`` that is false for identical input, a re-run changes nothing.
    """
    spark = df.sparkSession
    if not exists(spark, conf, name):
        _save(_writer(df, conf, None).mode("errorifexists"), conf, name)
        return
    cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    (
        _delta_table(spark, conf, name)
        .alias("t")
        .merge(df.alias("s"), cond)
        .whenMatchedUpdate(condition=update_when, set=update_set)
        .whenNotMatchedInsertAll()
        .execute()
    )


def append(df: DataFrame, conf: Config, name: str) -> int:
    """Append ``df`` as one commit (the table is created on first use); returns rows written.

    For logs whose readers dedupe themselves, such as ``silver.llm_responses``.
    """
    spark = df.sparkSession
    before = version(spark, conf, name)
    mode = "append" if before is not None else "errorifexists"
    _save(_writer(df, conf, None).mode(mode), conf, name)
    return rows_written(spark, conf, name, before)


def append_once(df: DataFrame, conf: Config, name: str, app_id: str, version: int) -> None:
    """Append ``df`` unless a write with this (``app_id``, ``version``) was committed before.

    Delta's idempotent writes: a streaming ``foreachBatch`` passes its query's id and the
    batch id, so a batch replayed after a crash appends nothing the second time.
    """
    w = _writer(df, conf, None).mode("append").option("txnAppId", app_id).option("txnVersion", int(version))
    _save(w, conf, name)


# --- Commits in milliseconds: delta-rs, for the nearline path ------------------------------
# A Spark MERGE or append runs several Spark jobs (about a second on a small machine); the
# `deltalake` package (delta-rs) commits the same Delta transaction from the driver in tens
# of milliseconds. Only for tables in a local storage.root (a catalog table or an object
# store goes through Spark, which holds their credentials).


def local_path(conf: Config, name: str) -> str | None:
    """The folder of ``name`` when delta-rs can commit to it directly, else None."""
    if conf.storage.catalog or "://" in conf.storage.root:
        return None
    try:
        import deltalake  # noqa: F401
    except ImportError:
        return None
    return location(conf, name)


def _commit_of(table) -> tuple[int, dt.datetime]:
    last = table.history(1)[0]
    committed = dt.datetime.fromtimestamp(last["timestamp"] / 1000, dt.timezone.utc).replace(tzinfo=None)
    return int(table.version()), committed


def rs_merge_upsert(
    path: str, rows: list[dict], keys: list[str], update_when: str, insert_when: str | None = None
) -> tuple[int, dt.datetime]:
    """``merge_upsert`` with delta-rs on an existing table: one MERGE transaction.

    ``update_when`` / ``insert_when`` are SQL over ``t`` (the table) and ``s`` (the rows).
    Returns the table's latest (version, commit time) afterwards: the MERGE's commit, or
    the one before it when nothing changed (delta-rs commits no version then).
    """
    import pyarrow as pa
    from deltalake import DeltaTable

    table = DeltaTable(path)
    source = pa.Table.from_pylist(rows, schema=pa.schema(table.schema().to_arrow()))
    merger = table.merge(
        source,
        predicate=" AND ".join(f"t.`{k}` = s.`{k}`" for k in keys),
        source_alias="s",
        target_alias="t",
    )
    merger.when_matched_update_all(predicate=update_when).when_not_matched_insert_all(
        predicate=insert_when
    ).execute()
    return _commit_of(DeltaTable(path))


# Filters of a lookup as (column, op, value): the one form both readers translate.
Filter = tuple[str, str, object]
_FILTER_OPS = ("=", ">", "in")


def _check_filters(filters: list[Filter]) -> None:
    for column, op, _ in filters:
        if op not in _FILTER_OPS:
            raise ValueError(f"filter op must be one of {_FILTER_OPS}: {op!r} (on {column!r})")


def rs_read(path: str, columns: list[str], filters: list[Filter]) -> pd.DataFrame:
    """The rows of a local Delta table where every ``(column, op, value)`` filter holds
    (op "=", ">" or "in") as pandas, read on the driver by delta-rs; no Spark job runs.

    The files are chosen from the log before any is opened: a file is kept when its
    partition values, and its min/max statistics of the filtered columns, admit the
    filters. Building the dataset over every file instead costs ~3 ms a file, which grew
    with the buyers (0.45 s over 150 files for a lookup of 5 buyers that reads 5)."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    _check_filters(filters)
    table = DeltaTable(path)
    if any(op == "in" and not list(value) for _, op, value in filters):  # no value can match
        import pyarrow as pa

        return pa.schema(table.schema().to_arrow()).empty_table().select(columns).to_pandas()
    terms = {
        "in": lambda field, value: field.isin(list(value)),
        "=": lambda field, value: field == value,
        ">": lambda field, value: field > value,
    }
    where = pc.scalar(True)
    for column, op, value in filters:
        where = where & terms[op](pc.field(column), value)
    prune = [(c, op, list(v) if op == "in" else v) for c, op, v in filters] or None
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=prune)
    return dataset.to_table(columns=columns, filter=where).to_pandas()


def spark_condition(filters: list[Filter]):
    """The same filters as a Spark ``Column`` (all must hold), for :func:`read` tables."""
    from pyspark.sql import functions as F

    _check_filters(filters)
    terms = {
        "in": lambda col, value: col.isin(list(value)),
        "=": lambda col, value: col == F.lit(value),
        ">": lambda col, value: col > F.lit(value),
    }
    cond = F.lit(True)
    for column, op, value in filters:
        cond = cond & terms[op](F.col(column), value)
    return cond


def rs_append_once(path: str, rows: list[dict], app_id: str, version: int) -> bool:
    """``append_once`` with delta-rs on an existing table; the same ``txn`` action, so the
    two interoperate. Returns whether the rows were appended."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    table = DeltaTable(path)
    done = table.transaction_version(app_id)
    if done is not None and done >= version:
        return False
    write_deltalake(
        table,
        pa.Table.from_pylist(rows, schema=pa.schema(table.schema().to_arrow())),
        mode="append",
        commit_properties=CommitProperties(app_transactions=[Transaction(app_id, int(version))]),
    )
    return True


# --- facts from the Delta log ---------------------------------------------------------------
# The bookkeeping around a stage (rows in / out, the events' version and last day) reads
# the transaction log, not the data: through delta-rs on the driver when the warehouse is
# a local folder (no Spark job), else through Delta's own Spark API.

# Rows a commit wrote, by operation: WRITE / CREATE report numOutputRows; a MERGE's
# numOutputRows also counts the rows it copied unchanged, so its inserted + updated count.
_WRITTEN = {"MERGE": ("numTargetRowsInserted", "numTargetRowsUpdated")}


def _rs_table(conf: Config, name: str):
    """delta-rs's view of ``name`` (None when remote, in a catalog, not written yet, or
    delta-rs is not installed)."""
    path = local_path(conf, name)
    if path is None:
        return None
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        return None
    try:
        return DeltaTable(path)
    except Exception as e:  # a table feature delta-rs does not read: Spark answers instead
        log.debug("delta-rs cannot open %s (%s): asking Spark", path, e)
        return None


def _add_actions(table):
    """The table's live files with their statistics (a pyarrow table), or None when a file
    lacks a row count or carries a deletion vector (then the log cannot answer alone)."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.column("num_records").null_count:
        return None
    if any(c.startswith("deletionVector") and actions.column(c).null_count < len(actions)
           for c in actions.column_names):  # fmt: skip
        return None
    return actions


def row_count(spark: SparkSession, conf: Config, name: str) -> int:
    """Rows of ``name``: the sum of its files' row counts in the log when delta-rs reads it,
    else ``count()`` (which Delta also answers from the log's statistics)."""
    table = _rs_table(conf, name)
    actions = _add_actions(table) if table is not None else None
    if actions is not None:
        return int(sum(actions.column("num_records").to_pylist()))
    return read(spark, conf, name).count()


def version(spark: SparkSession, conf: Config, name: str) -> int | None:
    """The table's current Delta version (None before its first write)."""
    table = _rs_table(conf, name)
    if table is not None:
        return int(table.version())
    return int(last_commit(spark, conf, name)["version"]) if exists(spark, conf, name) else None


def rows_written(spark: SparkSession, conf: Config, name: str, since: int | None) -> int:
    """Rows the commits after version ``since`` (None: every commit) wrote to ``name``, from
    their operation metrics (0 for a table that does not exist)."""
    table = _rs_table(conf, name)
    if table is not None:
        newer = table.version() - since if since is not None else None
        commits = table.history(newer) if newer is None or newer > 0 else []
        metrics = [(c.get("operation", ""), c.get("operationMetrics") or {}) for c in commits
                   if since is None or c["version"] > since]  # fmt: skip
    elif exists(spark, conf, name):
        history = _delta_table(spark, conf, name).history()
        if since is not None:
            history = history.filter(history.version > since)
        metrics = [(r["operation"], r["operationMetrics"] or {}) for r in history.collect()]
    else:
        return 0
    total = 0
    for operation, values in metrics:
        keys = _WRITTEN.get(operation, ("numOutputRows",))
        total += sum(int(values.get(k) or 0) for k in keys)
    return total


def last_partition(spark: SparkSession, conf: Config, name: str, column: str):
    """The largest value of the partition column ``column`` among the table's non-empty
    files, read from the log by delta-rs; None when it cannot say (remote or catalog
    table, not partitioned by ``column``): the caller then asks Spark."""
    table = _rs_table(conf, name)
    actions = _add_actions(table) if table is not None else None
    if actions is None or f"partition.{column}" not in actions.column_names:
        return None
    values = [v for v, n in zip(actions.column(f"partition.{column}").to_pylist(),
                                actions.column("num_records").to_pylist(), strict=True) if n and v is not None]  # fmt: skip
    return max(values) if values else None


def append_rows(spark: SparkSession, conf: Config, name: str, rows: list[tuple], schema: str) -> None:
    """Append a few rows (bookkeeping): by delta-rs when the table is a local folder that
    exists, in one commit and without a Spark job; else a Spark append."""
    table = _rs_table(conf, name)
    if table is None:
        append(spark.createDataFrame(rows, schema), conf, name)
        return
    import pyarrow as pa
    from deltalake import write_deltalake

    arrow_schema = pa.schema(table.schema().to_arrow())
    data = pa.Table.from_pylist(
        [dict(zip(arrow_schema.names, r, strict=True)) for r in rows], schema=arrow_schema
    )
    write_deltalake(table, data, mode="append")
