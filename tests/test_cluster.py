"""End to end on a real Spark standalone cluster (one master, two workers, all on 127.0.0.1).

Each test runs the same work twice on copies of the same bronze tables: once in local mode
through the ``discovery`` command, once through ``./spark-submit.sh`` on the cluster, with
its code shipped as a zip to executors in other processes. The stages from items to
candidates must write the same silver rows, user queries and candidates both ways; the
ranker, trained on the cluster from the same candidates as locally, the same model and lists.

Slow (about 10 minutes on 2 cores): run with ``pytest -m cluster``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from jobs.stages import stage_names
from testing.standalone import (
    NO_UI,
    QUERY_COLUMNS,
    SCORE_TOLERANCE,
    SILVER_TABLES,
    StandaloneCluster,
    assert_same_features,
    assert_same_rows,
    child_env,
    get_json,
    group_alive,
    kill_group,
    spark_class,
    submit_command,
    tail,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
N_DAY_FILES = 4
APP_NAME = "discovery-cluster-test"
# The pipeline test: every stage after ingest up to candidates, then train and rank (evaluate
# reruns them all as of a cut date, too slow here); these columns of gold.recommendations
# must match ...
_STAGE_NAMES = stage_names()
CANDIDATE_STAGES = _STAGE_NAMES[_STAGE_NAMES.index("ingest") + 1 : _STAGE_NAMES.index("candidates") + 1]
RECOMMENDATION_KEY = ["user_id", "position", "item_id", "leaf_category", "query_kind", "reason"]
# ... and the scores within SCORE_TOLERANCE.


# --- helpers ------------------------------------------------------------------------------


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a command in its own process group, output to ``log``."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, cwd=REPO, env=child_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
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
        if group_alive(proc.pid):  # timed out, or left children behind
            kill_group(proc, grace=2)
    if rc is None:
        pytest.fail(f"timed out after {timeout}s: {cmd}\n{tail(log)}")
    print(f"{cmd[:100]}...: rc {rc}, finished {time.monotonic() - t0:.0f}s after waiting began (log {log})")
    if rc != 0:
        pytest.fail(f"exit {rc}: {cmd}\n{tail(log)}")
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
    if spark_class() is None:
        pytest.skip(
            "no Java runtime, or no executable pyspark bin/spark-class: a standalone cluster cannot start"
        )
    with StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="1g") as cluster:
        yield cluster.info()


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
    standalone cluster, on the storage root ``root``, as application ``app_name`` (tiny
    tables: two Delta snapshot partitions, as in the local session of core/session.py)."""
    return submit_command(cluster["master_url"], cli, root, app_name)


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
        kill_group(local, grace=2)
        raise
    _finish(local, local_log, timeout)
    # The cluster run went through spark-submit to the standalone master.
    assert f"--master {cluster['master_url']}" in out, out[-3000:]
    return out


def _executor_logs(cluster: dict, app_name: str) -> dict[str, str]:
    """Worker name -> the stderr of its executor(s) of ``app_name``, after checking that the
    master finished exactly one application of that name and that each worker launched an
    executor of it: a JVM of its own, with its own log, that ran tasks of the job."""
    status = get_json(cluster["status_url"])
    apps = [a for a in status.get("completedapps", []) if a.get("name") == app_name]
    assert len(apps) == 1, (
        f"master lists no (or several) completed app {app_name}: {status.get('completedapps')}"
    )
    app_id = apps[0]["id"]
    assert apps[0].get("state") == "FINISHED", apps[0]
    logs = {}
    for url, work_dir in zip(cluster["worker_status_urls"], cluster["work_dirs"], strict=True):
        worker = get_json(url)
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
    # The Python work (the stages' pandas UDFs: embeddings, agents) ran in the executors'
    # Python workers: Spark's Python runners log their times there. (The numpy encoder
    # prints no load line of its own, as sentence-transformers did.)
    assert any("Times: total" in text for text in logs.values()), "no executor ran a Python worker"

    # The same silver rows, user queries and candidates (features within float noise) both
    # ways: a failure names the first table where the two runs part.
    spark = request.getfixturevalue("spark")
    for name in SILVER_TABLES:
        assert_same_rows(name, *_tables(spark, local_root, cluster_root, name))
    queries = assert_same_rows(
        "gold.user_queries",
        *(t.select(QUERY_COLUMNS) for t in _tables(spark, local_root, cluster_root, "gold.user_queries")),
    )
    assert_same_features(*_tables(spark, local_root, cluster_root, "gold.candidate_features"))

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
