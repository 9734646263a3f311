"""End to end on a real Spark standalone cluster (one master, two workers, all on 127.0.0.1).

Each test runs the same work twice on copies of the same bronze tables: once in local mode
through the ``discovery`` command, once through ``./spark-submit.sh`` on the cluster, with
its code shipped as a zip to executors in other processes. The stages from items to
candidates must write the same silver rows, user queries and candidates both ways; the
ranker, trained on the cluster from the same candidates as locally, the same model and lists.

Slow (about 10 minutes on 2 cores): run with ``pytest -m cluster``.
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

import pytest

from jobs.stages import stage_names

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
SILVER_TABLES = [
    "silver.item_categories",
    "silver.user_week_category",
    "silver.user_windows",
    "silver.search_terms_weekly",
]
N_DAY_FILES = 4
APP_NAME = "discovery-cluster-test"
# No web UI for the applications (the master's and workers' stay): less work on 2 cores.
NO_UI = ["--set", "spark.extra={spark.ui.enabled: 'false'}"]
# The pipeline test: every stage after ingest up to candidates, then train and rank (evaluate
# reruns them all as of a cut date, too slow here); these columns of gold.recommendations
# must match ...
_STAGE_NAMES = stage_names()
CANDIDATE_STAGES = _STAGE_NAMES[_STAGE_NAMES.index("ingest") + 1 : _STAGE_NAMES.index("candidates") + 1]
RECOMMENDATION_KEY = ["user_id", "position", "item_id", "leaf_category", "query_kind", "reason"]
# ... and the scores within this (vectors embedded in other processes may differ in the last bits).
SCORE_TOLERANCE = 1e-4


# --- helpers ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode("utf-8"))


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The test process may host its own Spark JVM; children must not attach to it.
    for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_CONF_DIR"):
        env.pop(k, None)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # RPC, web UIs and the driver: loopback only
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group (daemon, executors, Python workers), then SIGKILL."""
    pgid = proc.pid  # started with start_new_session=True: pid == pgid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.2)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a command in its own process group, output to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, cwd=REPO, env=_child_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 420) -> str:
    """Wait for a command from ``_start``; return its output, or fail with its tail."""
    t0 = time.monotonic()
    cmd = " ".join(str(a) for a in proc.args)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if _group_alive(proc.pid):  # timed out, or left children behind
            _kill_group(proc, grace=2)
    if rc is None:
        pytest.fail(f"timed out after {timeout}s: {cmd}\n{_tail(log)}")
    print(f"{cmd[:100]}...: rc {rc}, finished {time.monotonic() - t0:.0f}s after waiting began (log {log})")
    if rc != 0:
        pytest.fail(f"exit {rc}: {cmd}\n{_tail(log)}")
    return log.read_text(errors="replace")


def _run(cmd: list[str], log: Path, timeout: float = 420) -> str:
    return _finish(_start(cmd, log), log, timeout)


def _day_files() -> Path:
    for candidate in (REPO / "data" / "online_retail" / "by-day",
                      REPO.parent / "shared" / "data" / "online_retail" / "by-day"):  # fmt: skip
        if candidate.is_dir() and any(candidate.glob("*.csv*")):
            return candidate
    pytest.skip(
        "no online_retail day files: neither data/online_retail/by-day in the repo nor "
        "../shared/data/online_retail/by-day beside it"
    )


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """Master + 2 workers (1 core, 1g each) as subprocesses; killed, group and all, at the end."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("no Java runtime: a Spark standalone cluster needs java on PATH or JAVA_HOME")
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not os.access(spark_class, os.X_OK):
        pytest.skip(f"pyspark ships no executable bin/spark-class at {spark_class}")

    base = tmp_path_factory.mktemp("standalone")
    env = _child_env()
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = base / f"{name}.log"
        fh = open(log, "w")
        proc = subprocess.Popen(
            [str(spark_class), *args], cwd=base, env=env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        fh.close()  # the child holds its own descriptor
        procs.append((proc, log))
        return proc

    def logs() -> str:
        return "\n".join(f"--- {log.name}\n{_tail(log, 30)}" for _, log in procs)

    master_port, master_ui = _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    worker_uis = [_free_port(), _free_port()]
    work_dirs = [base / f"worker-{i}" for i in range(2)]
    try:
        start("master", ["org.apache.spark.deploy.master.Master",
                         "--host", "127.0.0.1", "--port", str(master_port), "--webui-port", str(master_ui)])  # fmt: skip
        for i, ui in enumerate(worker_uis):
            work_dirs[i].mkdir()
            start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker",
                                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                  "--webui-port", str(ui), "--work-dir", str(work_dirs[i]), master_url])  # fmt: skip

        status_url = f"http://127.0.0.1:{master_ui}/json/"
        deadline, status = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            dead = [log.name for p, log in procs if p.poll() is not None]
            if dead:
                pytest.fail(f"cluster process(es) exited early: {dead}\n{logs()}")
            try:
                status = _get_json(status_url)
            except OSError:
                status = {}
            if sum(w.get("state") == "ALIVE" for w in status.get("workers", [])) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"master did not report 2 ALIVE workers in 90s: {status}\n{logs()}")

        yield {
            "master_url": master_url,
            "status_url": status_url,
            "worker_status_urls": [f"http://127.0.0.1:{ui}/json/" for ui in worker_uis],
            "work_dirs": work_dirs,
        }
    finally:
        for proc, _ in reversed(procs):  # workers (and their executors) first, then the master
            _kill_group(proc)
        left = [log.stem for p, log in procs if _group_alive(p.pid)]
        assert not left, f"Spark processes left running: {left}"


@pytest.fixture(scope="module")
def bronze_root(tmp_path_factory) -> Path:
    """storage root with bronze tables ingested from a handful of online_retail days."""
    src_dir = _day_files()
    base = tmp_path_factory.mktemp("bronze")
    days = base / "by-day"
    days.mkdir()
    for f in sorted(src_dir.glob("*.csv*"))[:N_DAY_FILES]:
        shutil.copy(f, days / f.name)
    root = base / "local"
    _run(
        [_discovery(), "ingest", *_local_settings(root),
         "--set", f"ingest.sources=[{{name: online_retail, format: online_retail, path: '{days}', timezone: Europe/London}}]"],
        base / "ingest.log",
    )  # fmt: skip
    for t in ("events", "items"):
        assert (root / "bronze" / t / "_delta_log").is_dir(), f"ingest wrote no bronze.{t}"
    return root


# --- both ways at once, and what to check afterwards ----------------------------------------


def _discovery() -> str:
    venv = REPO / ".venv" / "bin" / "discovery"
    return str(venv) if venv.exists() else (shutil.which("discovery") or "discovery")


def _local_settings(root: Path) -> list[str]:
    return ["--set", f"storage.root={root}", "--set", "spark.master=local[2]",
            "--set", "spark.shuffle_partitions=2", *NO_UI]  # fmt: skip


def _with_bronze(bronze: Path, root: Path) -> Path:
    """A fresh storage root holding a copy of the bronze tables under ``bronze``."""
    shutil.copytree(bronze / "bronze", root / "bronze")
    return root


def _cluster_cli(cluster: dict, cli: list[str], root: Path, app_name: str) -> list[str]:
    """The command that runs the CLI arguments ``cli`` through ``./spark-submit.sh`` on the
    standalone cluster, on the storage root ``root``, as application ``app_name``."""
    return [str(REPO / "spark-submit.sh"), "--master", cluster["master_url"],
            # Tiny tables: as in the local session (core/session.py), not Delta's 50 tasks per snapshot.
            "--spark-conf", "spark.databricks.delta.snapshotPartitions=2",
            *cli, "--set", f"storage.root={root}", "--set", f"spark.app_name={app_name}",
            "--set", "spark.shuffle_partitions=2", *NO_UI]  # fmt: skip


def _local_and_cluster(
    cluster: dict, cli: list[str], local_root: Path, cluster_root: Path, app_name: str, logs: Path,
    timeout: float = 420,
) -> str:  # fmt: skip
    """Run the CLI arguments ``cli`` (a subcommand and its options) in local mode through
    ``discovery`` on ``local_root`` and through ``./spark-submit.sh`` on the standalone
    cluster on ``cluster_root``, both at once (most of their time is start-up and
    scheduling); return the cluster run's output."""
    label = cli[0]
    local_log, cluster_log = logs / f"{label}-local.log", logs / f"{label}-cluster.log"
    local = _start([_discovery(), *cli, *_local_settings(local_root)], local_log)
    try:
        cluster_run = _start(_cluster_cli(cluster, cli, cluster_root, app_name), cluster_log)
        out = _finish(cluster_run, cluster_log, timeout)
    except BaseException:
        _kill_group(local, grace=2)
        raise
    _finish(local, local_log, timeout)
    # The cluster run went through spark-submit to the standalone master.
    assert f"--master {cluster['master_url']}" in out, out[-3000:]
    return out


def _executor_logs(cluster: dict, app_name: str) -> dict[str, str]:
    """Worker name -> the stderr of its executor(s) of ``app_name``, after checking that the
    master finished exactly one application of that name and that each worker launched an
    executor of it: a JVM of its own, with its own log, that ran tasks of the job."""
    status = _get_json(cluster["status_url"])
    apps = [a for a in status.get("completedapps", []) if a.get("name") == app_name]
    assert len(apps) == 1, (
        f"master lists no (or several) completed app {app_name}: {status.get('completedapps')}"
    )
    app_id = apps[0]["id"]
    assert apps[0].get("state") == "FINISHED", apps[0]
    logs = {}
    for url, work_dir in zip(cluster["worker_status_urls"], cluster["work_dirs"], strict=True):
        worker = _get_json(url)
        executors = worker.get("finishedexecutors", []) + worker.get("executors", [])
        assert any(e.get("appid") == app_id for e in executors), f"worker {url} ran no executor of {app_id}"
        stderr_logs = list((work_dir / app_id).glob("*/stderr"))
        assert stderr_logs, f"no executor logs under {work_dir / app_id}"
        text = "\n".join(p.read_text(errors="replace") for p in stderr_logs)
        assert "org.apache.spark.executor.CoarseGrainedExecutorBackend" in text, text[:2000]
        logs[work_dir.name] = text
    tasks = {name: text.count("Finished task") for name, text in logs.items()}
    print(f"{app_name}: tasks finished per worker: {tasks}")
    assert sum(tasks.values()) > 0, f"the cluster's executors ran no task: {tasks}"
    return logs


def _tables(spark, local_root: Path, cluster_root: Path, name: str):
    """The table ``name`` of the local run and of the cluster run."""
    from core import tables
    from core.config import load_config

    conf_local = load_config(overrides=[f"storage.root={local_root}"])
    conf_cluster = load_config(overrides=[f"storage.root={cluster_root}"])
    return tables.read(spark, conf_local, name), tables.read(spark, conf_cluster, name)


def _assert_same_rows(name: str, a, b) -> int:
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


def _assert_same_features(local, cluster) -> None:
    """The same candidate rows both ways, every feature within SCORE_TOLERANCE, except that
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
    far = {c: counts[c] for c in FEATURE_COLUMNS if c not in ranks and (counts[c] or 0) > SCORE_TOLERANCE}
    assert not far, f"gold.candidate_features: largest differences above {SCORE_TOLERANCE}: {far}"
    swapped = {c: (counts[f"{c}_rows"], counts[c]) for c in ranks if counts[f"{c}_rows"]}
    assert all(n <= 0.001 * counts["rows"] and d <= 1 for n, d in swapped.values()), (
        f"gold.candidate_features: channel ranks differ (rows, largest difference) of {counts['rows']}: {swapped}"
    )


# --- the tests ----------------------------------------------------------------------------


def test_pipeline_on_standalone_cluster_matches_local(standalone_cluster, bronze_root, tmp_path, request):
    local_root = _with_bronze(bronze_root, tmp_path / "local")
    cluster_root = _with_bronze(bronze_root, tmp_path / "cluster")
    app_name = f"{APP_NAME}-pipeline"
    out = _local_and_cluster(
        standalone_cluster, ["pipeline", "--restart", "--only", *CANDIDATE_STAGES],
        local_root, cluster_root, app_name, tmp_path, timeout=1800,
    )  # fmt: skip
    n = len(CANDIDATE_STAGES)
    for i, stage in enumerate(CANDIDATE_STAGES, 1):
        assert f"[{i}/{n}] {stage} done" in out, f"the cluster run did not finish {stage}\n{out[-3000:]}"
    logs = _executor_logs(standalone_cluster, app_name)
    # The embedding model was loaded by the executors' Python workers (its loader's progress
    # line goes to the executor's stderr), not by the driver: the items were embedded there.
    assert any("Loading weights" in text for text in logs.values()), "no executor loaded the embedding model"

    # The same silver rows, user queries and candidates (features within float noise) both
    # ways: a failure names the first table where the two runs part.
    spark = request.getfixturevalue("spark")
    for name in SILVER_TABLES:
        _assert_same_rows(name, *_tables(spark, local_root, cluster_root, name))
    cols = ["user_id", "query_id", "kind", "query"]
    queries = _assert_same_rows(
        "gold.user_queries",
        *(t.select(cols) for t in _tables(spark, local_root, cluster_root, "gold.user_queries")),
    )
    _assert_same_features(*_tables(spark, local_root, cluster_root, "gold.candidate_features"))

    # The ranker. A tree ensemble fitted on 75 purchases turns a near-tie swapped in the last
    # bits of an embedding into other splits, so the two runs cannot be compared on
    # candidates that differ in those bits. The local run trains first (the first model also
    # builds its training candidates as of an earlier day); the cluster then trains and
    # ranks on a copy of the same candidate tables: one xgboost task on an executor must
    # give the very model, quotas and lists of local mode.
    ranker_cli = ["pipeline", "--only", "train", "rank", "--set", "ranker.num_workers=1"]
    _finish(_start([_discovery(), *ranker_cli, *_local_settings(local_root)], tmp_path / "train-local.log"),
            tmp_path / "train-local.log", timeout=1200)  # fmt: skip
    shutil.rmtree(cluster_root / "gold" / "candidate_features")
    shutil.copytree(local_root / "gold" / "candidate_features", cluster_root / "gold" / "candidate_features")
    ranker_app = f"{APP_NAME}-ranker"
    out = _finish(_start(_cluster_cli(standalone_cluster, ranker_cli, cluster_root, ranker_app),
                         tmp_path / "train-cluster.log"), tmp_path / "train-cluster.log", timeout=900)  # fmt: skip
    assert "[1/2] train done" in out and "[2/2] rank done" in out, out[-3000:]
    _executor_logs(standalone_cluster, ranker_app)

    # The ranker trained on the cluster scores as the local one, and the copy MLflow keeps
    # of it scores as the file rank read.
    import mlflow.artifacts
    import numpy as np
    from pyspark.sql import functions as F

    from core.config import load_config
    from jobs.tracking import tracking_uri
    from udfs.features import FEATURE_COLUMNS
    from udfs.ranking import score

    local_model, cluster_model = (
        t.orderBy(F.desc("trained_at")).first() for t in _tables(spark, local_root, cluster_root, "gold.ranker_models")
    )  # fmt: skip
    sample = (
        _tables(spark, local_root, cluster_root, "gold.candidate_features")[0]
        .orderBy("as_of", "user_id", "item_id").toPandas()
    )  # fmt: skip
    features = list(FEATURE_COLUMNS)
    local_bytes = (Path(local_model["path"]) / "model.json").read_bytes()
    cluster_bytes = (Path(cluster_model["path"]) / "model.json").read_bytes()
    local_scores, cluster_scores = (
        score(sample, local_bytes, features),
        score(sample, cluster_bytes, features),
    )
    assert np.allclose(local_scores, cluster_scores, atol=1e-6), (
        f"the ranker trained on the cluster scores {np.abs(local_scores - cluster_scores).max():.3g} away from the "
        f"local one on {len(sample):,} candidates"
    )
    shares = ["repeat_share", "discovery_share"]
    assert [local_model[c] for c in shares] == [cluster_model[c] for c in shares], (
        f"quotas chosen: local {[local_model[c] for c in shares]}, cluster {[cluster_model[c] for c in shares]}"
    )
    copy = mlflow.artifacts.download_artifacts(
        run_id=cluster_model["mlflow_run_id"], artifact_path="model/model.json", dst_path=str(tmp_path / "mlflow"),
        tracking_uri=tracking_uri(load_config(overrides=[f"storage.root={cluster_root}"])),
    )  # fmt: skip
    assert np.array_equal(score(sample, Path(copy).read_bytes(), features), cluster_scores)

    # ... and so the lists.
    local, cluster = (
        {
            tuple(r[c] for c in RECOMMENDATION_KEY): r["score"]
            for r in t.select(*RECOMMENDATION_KEY, "score").collect()
        }
        for t in _tables(spark, local_root, cluster_root, "gold.recommendations")
    )
    assert local, "gold.recommendations: no rows (nothing to compare)"
    only_local = sorted(set(local) - set(cluster))
    only_cluster = sorted(set(cluster) - set(local))
    assert not only_local and not only_cluster, (
        f"gold.recommendations: {len(only_local)} rows only in the local run, {len(only_cluster)} only in the "
        f"cluster run (of {len(local)} / {len(cluster)}); first: {only_local[:3]} / {only_cluster[:3]}"
    )
    far = [(k, local[k], cluster[k]) for k in sorted(local) if abs(local[k] - cluster[k]) > SCORE_TOLERANCE]
    assert not far, (
        f"gold.recommendations: {len(far)} scores differ by more than {SCORE_TOLERANCE}: {far[:5]}"
    )
    users = len({k[0] for k in local})
    print(f"same {len(local):,} recommendations for {users:,} users and {queries:,} user queries both ways")
