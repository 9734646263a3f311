"""The discovery command as a user runs it (subprocesses, exit codes, messages)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def discovery(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_help_lists_every_stage_and_pipeline():
    out = discovery("--help")
    assert out.returncode == 0
    for name in ("pipeline", "ingest", "aggregate", "generate"):
        assert name in out.stdout


def test_bad_config_key_exits_2_naming_the_key():
    out = discovery("aggregate", "--set", "aggregate.horizon_dayz=10")
    assert out.returncode == 2
    assert "aggregate.horizon_dayz: unknown key (did you mean 'horizon_days'?)" in out.stderr


def test_bad_run_date_exits_2():
    out = discovery("aggregate", "--run-date", "2011-02-30")
    assert out.returncode == 2
    assert "run.date" in out.stderr


@pytest.mark.slow
def test_unreadable_input_exits_1_naming_the_file(tmp_path):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "2011-01-02.csv.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    src = f"ingest.sources=[{{name: r, format: online_retail, path: '{tmp_path / 'in'}'}}]"
    out = discovery(
        "ingest", "--set", src, "--set", f"storage.root={tmp_path / 'wh'}", "--set", "spark.master=local[1]"
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"cannot read input file {bad}" in out.stderr


def test_wheel_ships_the_jobs_the_default_conf_and_the_console_command(tmp_path):
    import zipfile

    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (
        "jobs/cli.py",
        "jobs/ingest/staging.py",
        "conf/local.yaml",
        "conf/categories.yaml",
        "prompts/__init__.py",
        "prompts/item_profile/v1.yaml",
        "udfs/__init__.py",
        "jobs/agents.py",
        "core/tables.py",
        "udfs/agents/item_profile.py",
    ):
        assert f in names, f
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "discovery = jobs.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_pipeline_leaves_the_evaluation_out_unless_asked(monkeypatch, spark):
    from jobs import cli
    from jobs.stages import daily_stages

    calls = []
    monkeypatch.setattr(cli, "run_stages", lambda _spark, _conf, names, *a, **k: calls.append(list(names)))
    quiet = ["--set", "tracking.enabled=false", "--set", "spark.shuffle_partitions=2"]
    assert cli.main(["pipeline", *quiet]) == 0
    assert cli.main(["pipeline", "--with-evaluation", *quiet]) == 0
    assert cli.main(["pipeline", "--set", "evaluate.in_pipeline=true", *quiet]) == 0
    daily, asked, by_profile = calls
    assert daily == daily_stages() and "evaluate" not in daily and daily[-1] == "rank"
    assert asked == by_profile == [*daily, "evaluate"]
