"""A Spark standalone cluster on this machine (one master, N workers, all on 127.0.0.1) and
the commands that run the discovery CLI on it, for the cluster test and the cluster bench.

Every Spark process runs in a process group of its own and is killed, group and all
(daemon, executors, Python workers), when the cluster closes:

>>> with StandaloneCluster(Path("/tmp/sa")) as cluster:               # doctest: +SKIP
...     subprocess.run(submit_command(cluster.master_url, ["pipeline"], root, "app"), env=child_env())

Only the standard library and the installed pyspark's ``bin/spark-class`` are used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# No web UI for the applications (the master's and workers' stay): less work on 2 cores.
NO_UI = ["--set", "spark.extra={spark.ui.enabled: 'false'}"]
# Two runs' features may differ by float noise: vectors embedded in other processes can
# differ in the last bits.
SCORE_TOLERANCE = 1e-4
# What a cluster run and a local run of the stages up to candidates must share row for row
# (besides the candidate features, compared within SCORE_TOLERANCE).
SILVER_TABLES = ["silver.item_categories", "silver.user_week_category", "silver.user_windows",
                 "silver.search_terms_weekly"]  # fmt: skip
QUERY_COLUMNS = ["user_id", "query_id", "kind", "query"]  # of gold.user_queries


class ClusterError(RuntimeError):
    """The cluster did not start, or left processes behind."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode("utf-8"))


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def child_env() -> dict[str, str]:
    """The environment for a Spark child process of this one."""
    env = dict(os.environ)
    # This process may host its own Spark JVM; children must not attach to it.
    for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_CONF_DIR"):
        env.pop(k, None)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # RPC, web UIs and the driver: loopback only
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), then
    SIGKILL what is left."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_alive(pgid):
                break
            time.sleep(0.2)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def spark_class() -> Path | None:
    """The installed pyspark's ``bin/spark-class``, or None where it cannot run (no Java
    runtime, or no executable script)."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        return None
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    return path if os.access(path, os.X_OK) else None


class StandaloneCluster:
    """A master and ``workers`` workers (``cores`` cores and ``memory`` each) as
    subprocesses under ``base`` (logs, work dirs); a context manager that waits until the
    master reports every worker ALIVE and kills them all on exit."""

    def __init__(
        self, base: Path, workers: int = 2, cores: int = 1, memory: str = "1g", start_timeout: float = 90
    ):
        self.base, self.workers, self.cores, self.memory = Path(base), workers, cores, memory
        self.start_timeout = start_timeout
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.master_url = self.status_url = ""
        self.worker_status_urls: list[str] = []
        self.work_dirs: list[Path] = []

    def _start(self, name: str, args: list[str]) -> None:
        log = self.base / f"{name}.log"
        with open(log, "w") as fh:  # the child keeps its own descriptor
            proc = subprocess.Popen([str(self.spark_class), *args], cwd=self.base, env=child_env(),
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs.append((proc, log))

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail(log, 30)}" for _, log in self.procs)

    def __enter__(self) -> StandaloneCluster:
        self.spark_class = spark_class()
        if self.spark_class is None:
            raise ClusterError(
                "no Java runtime or no executable pyspark bin/spark-class: no standalone cluster"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        master_port, master_ui = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{master_port}"
        self.status_url = f"http://127.0.0.1:{master_ui}/json/"
        try:
            self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(master_port), "--webui-port", str(master_ui)])  # fmt: skip
            for i in range(self.workers):
                ui, work_dir = free_port(), self.base / f"worker-{i}"
                work_dir.mkdir(exist_ok=True)
                self.worker_status_urls.append(f"http://127.0.0.1:{ui}/json/")
                self.work_dirs.append(work_dir)
                self._start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                            "--cores", str(self.cores), "--memory", self.memory,
                                            "--webui-port", str(ui), "--work-dir", str(work_dir), self.master_url])  # fmt: skip
            self._wait_alive()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_alive(self) -> None:
        deadline, status = time.monotonic() + self.start_timeout, {}
        while time.monotonic() < deadline:
            dead = [log.name for p, log in self.procs if p.poll() is not None]
            if dead:
                raise ClusterError(f"cluster process(es) exited early: {dead}\n{self.logs()}")
            try:
                status = get_json(self.status_url)
            except OSError:
                status = {}
            if sum(w.get("state") == "ALIVE" for w in status.get("workers", [])) == self.workers:
                return
            time.sleep(0.5)
        raise ClusterError(
            f"master did not report {self.workers} ALIVE workers in {self.start_timeout:g}s: {status}\n{self.logs()}"
        )

    def close(self) -> None:
        """Kill the workers (and their executors), then the master; fail if any is left."""
        for proc, _ in reversed(self.procs):
            kill_group(proc)
        left = [log.stem for p, log in self.procs if group_alive(p.pid)]
        if left:
            raise ClusterError(f"Spark processes left running: {left}")

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict:
        return {
            "master_url": self.master_url,
            "status_url": self.status_url,
            "worker_status_urls": list(self.worker_status_urls),
            "work_dirs": list(self.work_dirs),
        }


def submit_command(master_url: str, cli: list[str], root: Path, app_name: str, shuffle_partitions: int = 2,
                   spark_conf: tuple[str, ...] = ("spark.databricks.delta.snapshotPartitions=2",)) -> list[str]:  # fmt: skip
    """The command that runs the CLI arguments ``cli`` (a subcommand and its options)
    through ``./spark-submit.sh`` on the master ``master_url``, on the storage root
    ``root``, as application ``app_name``; each of ``spark_conf`` a ``--spark-conf``."""
    confs = [a for kv in spark_conf for a in ("--spark-conf", kv)]
    return [str(REPO / "spark-submit.sh"), "--master", master_url, *confs,
            *cli, "--set", f"storage.root={root}", "--set", f"spark.app_name={app_name}",
            "--set", f"spark.shuffle_partitions={shuffle_partitions}", *NO_UI]  # fmt: skip


# --- comparing two runs' tables -------------------------------------------------------------


def assert_same_rows(name: str, a, b) -> int:
    """Both frames hold the same multiset of rows (and some); returns the row count."""
    assert a.schema == b.schema, f"{name}: schemas differ\n{a.schema}\n{b.schema}"
    n_a, n_b = a.count(), b.count()
    assert n_a > 0, f"{name}: no rows (nothing to compare)"
    assert n_a == n_b, f"{name}: {n_a} rows locally, {n_b} on the cluster"
    only_local = a.exceptAll(b)
    only_cluster = b.exceptAll(a)
    assert only_local.count() == 0, f"{name}: rows only in the local run: {only_local.limit(5).collect()}"
    assert only_cluster.count() == 0, (
        f"{name}: rows only in the cluster run: {only_cluster.limit(5).collect()}"
    )
    return n_a


def assert_same_features(local, cluster, tolerance: float = SCORE_TOLERANCE) -> None:
    """The same candidate rows both ways, every feature within tolerance, except that
    two items whose channel scores tie within that tolerance may swap ranks: a channel rank
    may differ by one place in at most 0.1 % of the rows."""
    from pyspark.sql import functions as F

    from udfs.features import FEATURE_COLUMNS

    key = ["as_of", "user_id", "item_id"]
    ranks = [c for c in FEATURE_COLUMNS if c.endswith("_rank")]
    diff = {
        c: F.abs(F.coalesce(F.col(f"l.{c}").cast("double"), F.lit(0.0)) - F.coalesce(F.col(f"c.{c}").cast("double"), F.lit(0.0)))
        for c in FEATURE_COLUMNS
    }  # fmt: skip
    counts = (
        local.alias("l")
        .join(cluster.alias("c"), key, "full_outer")
        .agg(
            F.count("*").alias("rows"),
            F.sum(F.col("c.n_channels").isNull().cast("int")).alias("only_local"),
            F.sum(F.col("l.n_channels").isNull().cast("int")).alias("only_cluster"),
            *(F.max(diff[c]).alias(c) for c in FEATURE_COLUMNS),
            *(F.sum((diff[c] > 0).cast("int")).alias(f"{c}_rows") for c in ranks),
        )
        .first()
    )  # fmt: skip
    assert counts["rows"] > 0, "gold.candidate_features: no rows (nothing to compare)"
    assert counts["only_local"] == 0 and counts["only_cluster"] == 0, (
        f"gold.candidate_features: {counts['only_local']} candidates only in the local run, "
        f"{counts['only_cluster']} only in the cluster run (of {counts['rows']})"
    )
    far = {c: counts[c] for c in FEATURE_COLUMNS if c not in ranks and (counts[c] or 0) > tolerance}
    assert not far, f"gold.candidate_features: largest differences above {tolerance}: {far}"
    swapped = {c: (counts[f"{c}_rows"], counts[c]) for c in ranks if counts[f"{c}_rows"]}
    assert all(n <= 0.001 * counts["rows"] and d <= 1 for n, d in swapped.values()), (
        f"gold.candidate_features: channel ranks differ (rows, largest difference) of {counts['rows']}: {swapped}"
    )
