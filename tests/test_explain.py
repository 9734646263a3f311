"""discovery explain: one buyer's digest, portrait, CFV, queries and list with channels,
model drivers and reasons, read from the shared synthetic warehouse."""

from __future__ import annotations

from core import tables
from jobs import cli
from jobs.explain import explain


def test_explain_shows_every_section_and_each_listed_items_channel_drivers_and_reason(
    spark, pipeline_warehouse
):
    conf = pipeline_warehouse
    recs = tables.read(spark, conf, "gold.recommendations").orderBy("user_id", "position").toPandas()
    user = recs["user_id"].iloc[0]
    mine = recs[recs["user_id"] == user]
    text = explain(spark, conf, user)
    for section in (
        "8-week digest",
        "portrait",
        "CFV",
        "demand queries",
        f"list (gold.recommendations, {len(mine)} items)",
    ):
        assert section in text, section
    for r in mine.itertuples():
        line = f"{r.position:>2}. {r.title or r.item_id} [{r.leaf_category}] {r.channel}"
        assert line in text, line
        assert f"why: {r.reason}" in text
    # Each item has a drivers line (the features that raised its score; "-" when none did,
    # as with the tiny model of this warehouse).
    drivers = [ln for ln in text.splitlines() if ln.strip().startswith("drivers:")]
    assert len(drivers) == len(mine)


def test_drivers_name_the_features_that_raised_a_score_with_their_contribution():
    import numpy as np
    import xgboost

    from jobs.explain import drivers
    from udfs.ranking import Ranker

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(x, (x[:, 0] > 0).astype(float)), 20)
    ranker = Ranker(bytes(booster.save_raw("json")), None, ("good", "noise"))
    high, low = drivers(ranker, [{"good": 2.0, "noise": 0.0}, {"good": -2.0, "noise": 0.0}])
    assert high.startswith("good=2 (+")  # the feature the model learned raised this score
    assert "good" not in low  # it lowered that one: not a driver


def test_explain_is_a_cli_command(monkeypatch, capsys, spark, pipeline_warehouse):
    conf = pipeline_warehouse
    user = tables.read(spark, conf, "gold.recommendations").first()["user_id"]
    monkeypatch.setattr(cli, "_conf", lambda args: conf)
    assert cli.main(["explain", "--user", user]) == 0
    assert f"buyer {user}" in capsys.readouterr().out
