"""``discovery pipeline`` resumes from the first stage not complete for the run date, and
logs rows in / out per stage (jobs/progress.py, jobs/stages.py run_stages), on real Delta
tables with small stand-in stages."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from core import tables
from core.config import ConfigError
from jobs import progress, stages
from jobs.stages import Stage

DAY = dt.date(2026, 11, 24)


@pytest.fixture
def fake_dag(spark, monkeypatch):
    """Four stages: ingest -> a -> b -> c; c fails while ``state['fail_c']``."""
    state = {"calls": [], "fail_c": True, "new_events": 2, "run_dates": [], "new_events_while_b": False,
             "b_started": threading.Event()}  # fmt: skip

    def ingest(spark_, conf):
        state["calls"].append("ingest")
        if state["new_events"]:
            rows = [(f"e{n}", "u1", "I1", DAY) for n in range(state["new_events"])]
            df = spark_.createDataFrame(rows, "event_id string, user_id string, item_id string, dt date")
            if tables.exists(spark_, conf, "bronze.events"):
                tables.append(df, conf, "bronze.events")
            else:
                tables.overwrite(df, conf, "bronze.events")
            state["new_events"] = 0
        return {}

    def a(spark_, conf):
        state["calls"].append("a")
        state["run_dates"].append(conf.run.date)
        tables.overwrite(tables.read(spark_, conf, "bronze.events").limit(1), conf, "silver.a")

    def b(spark_, conf):
        state["calls"].append("b")
        state["b_started"].set()
        if state.get("fail_b"):
            raise RuntimeError("b failed")
        state["run_dates"].append(conf.run.date)
        if state["new_events_while_b"]:
            late = [("late", "u1", "I1", DAY + dt.timedelta(days=1))]
            schema = "event_id string, user_id string, item_id string, dt date"
            tables.append(spark_.createDataFrame(late, schema), conf, "bronze.events")
        tables.overwrite(spark_.range(5), conf, "gold.b")

    def c(spark_, conf):
        state["calls"].append("c")
        if "c_dates" in state:
            state["c_dates"].append(conf.run.date)
        if state["fail_c"]:
            raise RuntimeError("c failed")
        tables.overwrite(spark_.range(3), conf, "gold.c")

    functions = {"ingest": ingest, "a": a, "b": b, "c": c}
    io = {
        "ingest": ((), ("bronze.events",)),
        "a": (("bronze.events",), ("silver.a",)),
        "b": (("silver.a",), ("gold.b",)),
        "c": (("gold.b",), ("gold.c",)),
    }

    class FakeStage(Stage):
        def entry(self):
            return functions[self.name]

        def early_work(self, spark_, conf):
            # state["early"]: c's early work (a function of spark and conf), when set
            return state["early"](spark_, conf) if self.name == "c" and "early" in state else None

    monkeypatch.setattr(
        stages, "STAGES", tuple(FakeStage(n, f"fake.{n}", reads=r, writes=w) for n, (r, w) in io.items())
    )
    return state


def _pipeline(spark, conf):
    stages.run_stages(spark, conf, ["ingest", "a", "b", "c"], resume=True)


@pytest.mark.slow
def test_resume_starts_at_the_first_stage_not_complete(spark, conf_factory, fake_dag, caplog):
    conf = conf_factory(["tracking.enabled=false"])
    with pytest.raises(RuntimeError, match="c failed"):
        _pipeline(spark, conf)
    assert fake_dag["calls"] == ["ingest", "a", "b", "c"]
    out = caplog.text
    caplog.clear()
    # rows in / out per stage: a reads 2 events, writes 1 row; b writes 5
    assert "[2/4] a done: rows in 2, out 1" in out and "[3/4] b done: rows in 1, out 5" in out

    fake_dag["calls"].clear()
    fake_dag["fail_c"] = False
    _pipeline(spark, conf)
    assert fake_dag["calls"] == ["ingest", "c"]  # ingest always; a and b were complete
    out = caplog.text
    caplog.clear()
    assert f"resume: a, b already complete for run date {DAY}; starting at c" in out

    fake_dag["calls"].clear()
    _pipeline(spark, conf)
    assert fake_dag["calls"] == ["ingest"]

    # Another configuration: nothing is complete for it.
    fake_dag["calls"].clear()
    _pipeline(spark, conf_factory(["tracking.enabled=false", "u2q.personal=5"]))
    assert fake_dag["calls"] == ["ingest", "a", "b", "c"]

    # New events (a new version of bronze.events): everything after ingest runs again.
    fake_dag["calls"].clear()
    fake_dag["new_events"] = 1
    _pipeline(spark, conf)
    assert fake_dag["calls"] == ["ingest", "a", "b", "c"]

    runs = tables.read(spark, conf, progress.STAGE_RUNS)
    assert (
        runs.filter("stage = 'c'").count() == 3 and runs.filter("run_date != DATE'2026-11-24'").count() == 0
    )


@pytest.mark.slow
def test_restart_runs_every_stage(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])
    fake_dag["fail_c"] = False
    _pipeline(spark, conf)
    fake_dag["calls"].clear()
    stages.run_stages(spark, conf, ["ingest", "a", "b", "c"], resume=False)
    assert fake_dag["calls"] == ["ingest", "a", "b", "c"]


def test_to_resume_keeps_always_stages_and_the_tail():
    assert progress.to_resume(["ingest", "a", "b", "c"], {"a", "c"}) == ["ingest", "b", "c"]
    assert progress.to_resume(["a", "b"], {"a", "b"}, always=()) == []
    assert progress.to_resume(["a", "b"], set(), always=()) == ["a", "b"]


def test_a_stage_whose_inputs_are_missing_stops_with_the_stage_to_run_first(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])
    with pytest.raises(ConfigError, match=r"stage b needs silver\.a: run a first"):
        stages.run_stages(spark, conf, ["b"])
    assert fake_dag["calls"] == []


def test_the_run_date_is_resolved_once_for_every_stage_of_a_run(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])  # run.date: latest
    fake_dag["fail_c"] = False
    fake_dag["new_events_while_b"] = True  # b appends an event of the next day
    fake_dag["c_dates"] = []
    stages.run_stages(spark, conf, ["ingest", "a", "b", "c"])
    # a and b, and c after b's late event, all work for the day of the events at the start
    assert fake_dag["run_dates"] == [DAY, DAY] and fake_dag["c_dates"] == [DAY]


@pytest.mark.parametrize("reader", ["delta-rs", "spark"])
def test_rows_versions_and_last_day_come_from_the_delta_log(spark, conf_factory, monkeypatch, reader):
    """The bookkeeping reads the log (delta-rs for a local folder, Delta's Spark API
    otherwise) and agrees with the data: 4 rows written, 2 appended, a MERGE updating 1
    and inserting 1 (its copied rows are not counted)."""
    conf = conf_factory()
    if reader == "spark":
        monkeypatch.setattr(tables, "local_path", lambda conf, name: None)
    schema = "k string, v long, dt date"
    d1, d2, d3 = DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=5)
    name = "silver.facts"
    assert tables.version(spark, conf, name) is None and tables.rows_written(spark, conf, name, None) == 0
    rows = [("a", 1, d1), ("b", 1, d1), ("c", 1, d2), ("d", 1, d2)]
    tables.overwrite(spark.createDataFrame(rows, schema), conf, name, partition_by=["dt"])
    v0 = tables.version(spark, conf, name)
    tables.append(spark.createDataFrame([("e", 1, d2), ("f", 1, d3)], schema), conf, name)
    v1 = tables.version(spark, conf, name)
    changes = spark.createDataFrame([("a", 2, d1), ("g", 1, d1)], schema)
    tables.merge_upsert(changes, conf, name, ["k"], "s.v != t.v", {"v": "s.v"})
    assert (v0, v1, tables.version(spark, conf, name)) == (0, 1, 2)
    assert tables.row_count(spark, conf, name) == tables.read(spark, conf, name).count() == 7
    assert tables.rows_written(spark, conf, name, None) == 4 + 2 + 2
    assert tables.rows_written(spark, conf, name, v0) == 2 + 2
    assert tables.rows_written(spark, conf, name, v1) == 2
    assert tables.rows_written(spark, conf, name, 2) == 0
    expected_last = d3 if reader == "delta-rs" else None  # Spark path: the caller asks Spark
    assert tables.last_partition(spark, conf, name, "dt") == expected_last
    assert tables.last_partition(spark, conf, name, "k") is None  # not a partition column
    tables.append_rows(spark, conf, name, [("h", 9, d1)], schema)
    assert tables.read(spark, conf, name).filter("k = 'h' and v = 9").count() == 1


def _early(state, body):
    """c's early work: ``body(spark)`` in the thread the runner gives it, recorded in state."""

    def work_for(spark_, conf):
        def work():
            state["calls"].append("early start")
            state["early_thread"] = threading.current_thread().name
            body(spark_)
            state["calls"].append("early done")

        return work

    state["early"] = work_for


def test_early_work_runs_beside_the_stages_before_and_its_stage_waits_for_it(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])
    fake_dag["fail_c"] = False

    def body(spark_):
        # Only true when the work runs while the stages before c run (not before them,
        # not inline at c): b starts meanwhile.
        fake_dag["saw_b"] = fake_dag["b_started"].wait(timeout=120)
        fake_dag["early_rows"] = spark_.range(1000).count()  # a Spark job from the thread

    _early(fake_dag, body)
    stages.run_stages(spark, conf, ["ingest", "a", "b", "c"])
    calls = fake_dag["calls"]
    assert fake_dag["saw_b"] and fake_dag["early_rows"] == 1000
    assert fake_dag["early_thread"] != threading.current_thread().name
    assert calls.index("early done") < calls.index("c")


def test_without_early_work_the_work_is_the_stages_own(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false", "run.early_work=false"])
    fake_dag["fail_c"] = False
    _early(fake_dag, lambda spark_: None)
    stages.run_stages(spark, conf, ["ingest", "a", "b", "c"])
    assert "early start" not in fake_dag["calls"]  # c's run does the work itself, if it needs it


def test_a_failing_early_work_fails_its_stage_not_the_ones_before(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])
    fake_dag["fail_c"] = False

    def body(spark_):
        raise ValueError("no candidates to learn from")

    _early(fake_dag, body)
    with pytest.raises(RuntimeError, match="early work of stage c failed: no candidates to learn from"):
        stages.run_stages(spark, conf, ["ingest", "a", "b", "c"])
    assert [c for c in fake_dag["calls"] if not c.startswith("early")] == ["ingest", "a", "b"]


def test_a_failing_stage_cancels_the_early_work(spark, conf_factory, fake_dag):
    conf = conf_factory(["tracking.enabled=false"])
    fake_dag["fail_b"] = True

    def slow(rows):
        for batch in rows:
            time.sleep(300)  # far longer than the test may take
            yield batch

    def body(spark_):
        # one task: the stages beside it keep a core
        fake_dag["early_rows"] = spark_.range(1, numPartitions=1).mapInPandas(slow, "id long").count()

    _early(fake_dag, body)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="b failed"):
        stages.run_stages(spark, conf, ["ingest", "a", "b", "c"])
    # b's failure stopped the work's Spark job (else: 300 s) and its thread ended
    assert time.perf_counter() - t0 < 120 and "early_rows" not in fake_dag
    assert not any(t.name.startswith("early-c-") for t in threading.enumerate())
