"""One way to get a SparkSession with Delta Lake, locally and on a cluster.

- Databricks, a notebook, or ``spark-submit`` (which already passed ``--packages``):
  the active session is used as it is.
- Local mode (``python -m jobs`` / the ``discovery`` command): a session is built from
  ``conf.spark`` and the Delta jars are resolved from Maven Central on first use, then
  from the local Ivy cache.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from core.config import Config

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def delta_package() -> str:
    """Maven coordinate of the Delta jar that matches the installed delta-spark."""
    from importlib.metadata import version

    return f"io.delta:delta-spark_2.13:{version('delta-spark')}"


def get_spark(conf: Config) -> SparkSession:
    """Return the active SparkSession, or build a local one with Delta configured.

    Example
    -------
    >>> spark = get_spark(load_config())
    >>> spark.range(3).write.format("delta").save("/tmp/t")
    """
    active = SparkSession.getActiveSession()
    if active is None and os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Launched by spark-submit / pyspark shell: the JVM already holds the packages.
        active = SparkSession.builder.getOrCreate()
    if active is not None:
        _session_settings(active, conf)
        return active

    sc = conf.spark
    builder = (
        SparkSession.builder.master(sc.master)
        .appName(sc.app_name)
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        .config("spark.jars.packages", delta_package())
        .config("spark.driver.memory", sc.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(sc.shuffle_partitions))
        .config("spark.ui.showConsoleProgress", "false")
        # Delta's defaults keep every version; tiny local tables don't need auto-compaction.
        .config("spark.databricks.delta.snapshotPartitions", "2")
        # No table-wide state (a Spark job) computed at every commit just for Delta's own
        # usage statistics; the row counts the runner reports come from operation metrics.
        .config("spark.databricks.delta.commitStats.collect", "false")
    )
    if sc.master.startswith("local"):
        # Python UDF workers: this interpreter (with pandas, pyarrow), not the python3 on
        # PATH. PySpark reads the variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for k, v in sc.extra.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(sc.log_level)
    return spark


def _session_settings(spark: SparkSession, conf: Config) -> None:
    # Settings that are safe to change on a running session; cluster-level ones
    # (memory, packages) belong to spark-submit or the cluster definition.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.shuffle.partitions", str(conf.spark.shuffle_partitions))
    spark.sparkContext.setLogLevel(conf.spark.log_level)
    for k, v in conf.spark.extra.items():
        if spark.conf.isModifiable(k):
            spark.conf.set(k, v)
    if "DeltaSparkSessionExtension" not in (spark.conf.get("spark.sql.extensions", "") or ""):
        log.warning(
            "the active Spark session has no Delta extension: launch with ./spark-submit.sh "
            "(or --packages %s and the Delta extension/catalog settings)",
            delta_package(),
        )
