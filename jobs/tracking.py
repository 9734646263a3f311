"""MLflow tracking: one place where stage runs, their params, metrics and artifacts are logged.

Every stage run is an MLflow run in the ``tracking.experiment`` experiment, by default in
a SQLite store next to the tables (``sqlite:///<storage.root>/mlflow.db``, artifacts in
``<storage.root>/mlruns``); ``tracking.uri`` points anywhere else (a tracking server,
``databricks``). ``discovery pipeline`` opens one parent run and nests a run per stage.

- Params: the whole configuration, flattened (``u2q.personal = 3``), minus anything that
  looks like a secret (keys named ``*key*``, ``*token*``, ``*secret*``, ``*password*``,
  and credentials inside URLs). Keys are never in the conf, only the names of the
  environment variables holding them, but a user may put one in ``spark.extra``.
- Metrics: the numbers a stage's ``run`` returns, plus ``seconds``.
- Tags: stage, run date, run id (``run.run_id``).

Look at the runs with ``mlflow ui --backend-store-uri sqlite:///warehouse/mlflow.db``.
Tracking is best effort: a tracking store that cannot be reached is logged as a warning
and the stage runs on untracked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import Config

log = logging.getLogger(__name__)

SECRET_KEY = re.compile(r"(key|token|secret|password|passwd|credential)", re.IGNORECASE)
# The key *names* of environment variables are fine to log: they hold no secret.
SAFE_SUFFIX = ("_env",)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
MAX_PARAM_CHARS = 500


def tracking_uri(conf: Config) -> str:
    """``tracking.uri`` or the SQLite store under ``storage.root``."""
    if conf.tracking.uri:
        return conf.tracking.uri
    return f"sqlite:///{Path(conf.storage.root).resolve() / 'mlflow.db'}"


def artifact_location(conf: Config) -> str | None:
    """Artifact folder for a new experiment in the default store (None: the store decides)."""
    if conf.tracking.uri:
        return None
    return (Path(conf.storage.root).resolve() / "mlruns").as_uri()


def flat_params(conf: Config) -> dict[str, str]:
    """The configuration as ``{"section.key": "value"}``, secrets dropped."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        leaf = prefix.rsplit(".", 1)[-1]
        if SECRET_KEY.search(leaf) and not leaf.endswith(SAFE_SUFFIX):
            return
        text = URL_CREDENTIALS.sub("***@", str(value))
        out[prefix] = text[:MAX_PARAM_CHARS]

    walk("", conf.model_dump(mode="json"))
    return out


def numeric_metrics(result: Any) -> dict[str, float]:
    """Numbers from what a stage returned: a dict of counts, or a list of dataclasses (ingest)."""
    items: dict[str, Any] = {}
    if isinstance(result, dict):
        items = result
    elif isinstance(result, list):
        for obj in result:
            name = getattr(obj, "source", None) or getattr(obj, "name", None)
            fields = getattr(obj, "__dict__", {})
            items.update({f"{name}.{k}" if name else k: v for k, v in fields.items()})
    out = {}
    for k, v in items.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        out[re.sub(r"[^A-Za-z0-9_./ -]", "_", str(k))] = float(v)
    return out


class Tracker:
    """A thin wrapper over the MLflow client; every call is a no-op when disabled."""

    def __init__(self, conf: Config):
        self.conf = conf
        self.client = None
        self.experiment_id: str | None = None
        if not conf.tracking.enabled:
            return
        try:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri(conf))
            exp = self.client.get_experiment_by_name(conf.tracking.experiment)
            self.experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(
                    conf.tracking.experiment, artifact_location=artifact_location(conf)
                )
            )
        except Exception as e:  # tracking must never stop a job
            log.warning("MLflow tracking disabled: %s: %s", type(e).__name__, e)
            self.client = None

    @property
    def active(self) -> bool:
        return self.client is not None

    def start(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str | None:
        if not self.active:
            return None
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def params(self, run_id: str | None, params: dict[str, str]) -> None:
        if run_id is None:
            return
        from mlflow.entities import Param

        batch = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        if run_id is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def artifacts(self, run_id: str | None, folder: str | Path, path: str | None = None) -> None:
        if run_id is None:
            return
        self.client.log_artifacts(run_id, str(folder), artifact_path=path)

    def end(self, run_id: str | None, ok: bool) -> None:
        if run_id is None:
            return
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def run_tags(conf: Config, stage: str) -> dict[str, str]:
    return {"stage": stage, "run_date": str(conf.run.date), "run_id": conf.run.run_id or ""}


@contextlib.contextmanager
def tracked(tracker: Tracker, conf: Config, name: str, parent_id: str | None = None) -> Iterator[dict]:
    """An MLflow run around a block: ``with tracked(t, conf, "rank") as run: run["result"] = ...``.

    The block may put ``result`` (what the stage returned, for metrics), ``metrics`` (a
    dict) into the yielded dict; ``run["run_id"]`` is the MLflow run id (None untracked).
    Params are logged on top-level runs only (nested runs share their parent's conf).
    """
    state: dict[str, Any] = {"run_id": None}
    try:
        state["run_id"] = tracker.start(name, run_tags(conf, name), parent_id)
        if parent_id is None:
            tracker.params(state["run_id"], flat_params(conf))
    except Exception as e:
        log.warning("MLflow: could not start run %s: %s: %s", name, type(e).__name__, e)
        state["run_id"] = None
    t0 = time.perf_counter()
    ok = False
    try:
        yield state
        ok = True
    finally:
        try:
            metrics = numeric_metrics(state.get("result"))
            metrics.update(state.get("metrics") or {})
            metrics["seconds"] = round(time.perf_counter() - t0, 3)
            tracker.metrics(state["run_id"], metrics)
            tracker.end(state["run_id"], ok)
        except Exception as e:
            log.warning("MLflow: could not log run %s: %s: %s", name, type(e).__name__, e)
