"""The nearline's Python workers keep their embedding model through idle minutes.

Spark stops a Python worker that had no task for a minute (and the model loaded in it
goes too), so without the keep-warm job the first trigger after a quiet minute would wait
for the model to load again. Slow (about 80 s): it has to outwait Spark's idle timeout.
"""

from __future__ import annotations

import time

import pytest

from jobs import nearline
from udfs.embedding import spec_from_conf
from udfs.nearline import RefreshSettings


def _workers_with_model(spark, spec, tasks: int) -> list[bool]:
    """For each of ``tasks`` Python workers: is the model already loaded in it?"""

    def probe(records):
        from udfs import embedding

        return [spec in embedding._MODELS for _ in records]

    # The same kind of job as the refresh's (RDD tasks, one per worker).
    return spark.sparkContext.parallelize(range(tasks), tasks).mapPartitions(probe).collect()


@pytest.mark.slow
def test_keep_warm_keeps_the_model_past_sparks_idle_timeout(spark, conf_factory):
    conf = conf_factory(["tracking.enabled=false", "nearline.keep_warm_s=20", "nearline.tasks=2"])
    spec = spec_from_conf(conf)
    settings = RefreshSettings(
        u2q_counts={}, backend="heuristic", prompt=None, call=None, embedding=spec, shard_paths=[],
        q2i=conf.q2i, candidates=conf.candidates, horizon_days=conf.aggregate.horizon_days, ranker=None, rules=None,
    )  # fmt: skip
    handler = nearline.BatchHandler(
        spark=spark,
        conf=conf,
        features=None,
        settings=settings,
        items_broadcast=None,
        window=None,
        app_id="t",
    )
    nearline.warm_workers(spark, conf, settings)
    handler.last_worker_use = time.monotonic()
    assert handler.keep_warm() is False  # just used: nothing to do

    runs, until = 0, time.monotonic() + 75  # past the 60 s after which Spark stops idle workers
    while time.monotonic() < until:
        runs += handler.keep_warm()
        time.sleep(1.0)
    assert runs >= 3
    assert _workers_with_model(spark, spec, 2) == [True, True]
