"""The stage registry (jobs/stages.py) against the code, and the scheduled job (databricks.yml)
against the DAG: every task's entry point exists and the task graph equals the pipeline's."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from core.config import load_config
from jobs import stages
from jobs.cli import build_parser
from jobs.stages import STAGES, daily_stages

REPO = Path(__file__).resolve().parent.parent
TABLE = re.compile(r"""["']((?:bronze|silver|gold)\.[a-z0-9_]+)["']""")


def _module_files(module: str) -> list[Path]:
    mod = importlib.import_module(module)
    path = Path(mod.__file__)
    return sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]


def test_every_stage_declares_the_tables_its_code_names():
    for s in STAGES:
        stage, module, reads, writes = s.name, s.module, s.reads, s.writes
        named = set()
        for f in _module_files(module):
            named |= set(TABLE.findall(f.read_text(encoding="utf-8")))
        named -= set(stages.CACHES)
        # Every table a stage writes is named in its code.
        assert set(writes) <= named, f"{stage}: declared writes not in {module}: {set(writes) - named}"
        if stage != "evaluate":  # evaluate names the as-of tables of the stages it reruns
            assert named <= set(reads) | set(writes), (
                f"{stage}: undeclared tables {named - set(reads) - set(writes)}"
            )


def test_dependencies_follow_reads_of_earlier_writes():
    deps = stages.dependencies()
    assert list(deps) == stages.stage_names()
    assert deps["ingest"] == [] and deps["index"] == ["embed"]
    assert "u2q" in deps["q2i"] and "q2i" in deps["candidates"]
    assert deps["rank"] == ["candidates", "ingest", "train"]
    order = stages.stage_names()
    for stage, ups in deps.items():
        assert all(order.index(u) < order.index(stage) for u in ups)


def _console_scripts() -> dict[str, str]:
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    return dict(re.findall(r'"([\w-]+)=([\w.:]+)"', text.split("console_scripts", 1)[1]))


def test_databricks_job_has_one_task_per_stage_with_the_pipeline_dependencies():
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    job = bundle["resources"]["jobs"]["discovery_daily"]
    assert job["schedule"]["quartz_cron_expression"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    # The daily job holds the daily stages; the evaluation has a weekly job of its own.
    assert list(tasks) == daily_stages() and "evaluate" not in tasks
    graph = {key: sorted(d["task_key"] for d in t.get("depends_on", [])) for key, t in tasks.items()}
    assert graph == {s: deps for s, deps in stages.dependencies().items() if s in tasks}

    scripts = _console_scripts()
    parser = build_parser()
    for key, task in tasks.items():
        wheel = task["python_wheel_task"]
        target = scripts[wheel["entry_point"]]  # the entry point is a console script of the wheel
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
        params = [p.replace("{{job.parameters.run_date}}", "2026-11-25") for p in wheel["parameters"]]
        args = parser.parse_args(params)  # the CLI accepts the task's parameters
        assert args.command == key
        assert callable(stages.stage(key).entry())
        assert any("whl" in lib for lib in task["libraries"])


def test_databricks_nearline_job_runs_the_stream_continuously():
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    job = bundle["resources"]["jobs"]["discovery_nearline"]
    assert "continuous" in job and "schedule" not in job
    (task,) = job["tasks"]
    wheel = task["python_wheel_task"]
    module, func = _console_scripts()[wheel["entry_point"]].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    args = build_parser().parse_args(wheel["parameters"])
    assert args.command == "nearline"
    conf = load_config(args.conf, args.overrides)  # the overrides are valid config keys
    assert conf.nearline.commit == "spark"
    assert callable(importlib.import_module("jobs.nearline").run)


def test_databricks_evaluation_job_is_weekly_and_runs_the_evaluate_command():
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    job = bundle["resources"]["jobs"]["discovery_evaluation"]
    # Quartz: seconds minutes hours day-of-month month day-of-week -> one day of the week.
    fields = job["schedule"]["quartz_cron_expression"].split()
    assert (
        len(fields) == 6
        and fields[3] == "?"
        and fields[5] in {"MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"}
    )
    (task,) = job["tasks"]
    assert "depends_on" not in task
    wheel = task["python_wheel_task"]
    module, func = _console_scripts()[wheel["entry_point"]].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    params = [p.replace("{{job.parameters.run_date}}", "2026-11-25") for p in wheel["parameters"]]
    args = build_parser().parse_args(params)
    assert args.command == "evaluate"
    load_config(args.conf, args.overrides)  # the overrides are valid config keys
    # What it reads, the daily job writes: it can run on any day after a daily run.
    reads = stages.stage("evaluate").reads
    daily_writes = {t for s in daily_stages() for t in stages.stage(s).writes}
    assert set(reads) <= daily_writes
