"""jobs/tracking: params without secrets, metrics from stage results, runs read back from
a real MLflow store (SQLite) through the MLflow client."""

from __future__ import annotations

import pytest

from core.config import load_config
from jobs.ingest import IngestSummary
from jobs.tracking import Tracker, flat_params, numeric_metrics, tracked, tracking_uri


def test_params_are_the_flattened_conf_without_secrets():
    conf = load_config(
        overrides=[
            "spark.extra={spark.hadoop.fs.s3a.secret.key: hunter2, spark.hadoop.fs.s3a.access.key: AKIA1}",
            "llm.endpoints.default.base_url=https://bob:pa55@llm.example.com/v1",
            "u2q.personal=4",
        ]
    )
    params = flat_params(conf)
    assert params["u2q.personal"] == "4"
    # The name of the variable holding the key is no secret; the key itself never is in conf.
    assert params["llm.endpoints.default.api_key_env"] == "OPENAI_API_KEY"
    assert not any("secret.key" in k or "access.key" in k for k in params)
    assert "hunter2" not in str(params) and "AKIA1" not in str(params)
    assert params["llm.endpoints.default.base_url"] == "https://***@llm.example.com/v1"


def test_numeric_metrics_from_counts_and_ingest_summaries():
    assert numeric_metrics({"users": 3, "rows": 60, "label": "x", "ok": True}) == {"users": 3.0, "rows": 60.0}
    summary = IngestSummary("online_retail", 10, 7, 2, 1, 7, {"bad_price": 2})
    m = numeric_metrics([summary])
    assert m["online_retail.input_rows"] == 10.0 and m["online_retail.quarantined"] == 2.0
    assert "online_retail.quarantine_by_reason" not in m


def test_runs_params_and_metrics_read_back_through_the_mlflow_client(tmp_path):
    from mlflow.tracking import MlflowClient

    conf = load_config(overrides=[f"storage.root={tmp_path / 'wh'}", "run.run_id=nightly-7"])
    tracker = Tracker(conf)
    assert tracker.active and tracking_uri(conf).startswith("sqlite:///")
    with tracked(tracker, conf, "pipeline") as parent:
        with tracked(tracker, conf, "rank", parent["run_id"]) as run:
            run["result"] = {"users": 4, "rows": 80}
        with pytest.raises(RuntimeError), tracked(tracker, conf, "q2i", parent["run_id"]):
            raise RuntimeError("shard missing")

    client = MlflowClient(tracking_uri=tracking_uri(conf))
    exp = client.get_experiment_by_name("discovery")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pipeline", "rank", "q2i"}
    top, rank, q2i = runs["pipeline"], runs["rank"], runs["q2i"]
    assert top.data.params["u2q.personal"] == "3" and top.data.tags["run_id"] == "nightly-7"
    assert rank.data.tags["mlflow.parentRunId"] == top.info.run_id and rank.data.params == {}
    assert rank.data.metrics["users"] == 4.0 and rank.data.metrics["rows"] == 80.0
    assert rank.info.status == "FINISHED" and q2i.info.status == "FAILED"
    assert "seconds" in q2i.data.metrics


def test_tracking_can_be_switched_off(tmp_path):
    conf = load_config(overrides=[f"storage.root={tmp_path / 'wh'}", "tracking.enabled=false"])
    tracker = Tracker(conf)
    with tracked(tracker, conf, "rank") as run:
        run["result"] = {"rows": 1}
    assert not tracker.active and run["run_id"] is None
    assert not (tmp_path / "wh" / "mlflow.db").exists()
