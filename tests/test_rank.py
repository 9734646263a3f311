"""jobs/rank.py and the model store of jobs/ranker.py: the Spark path lists exactly what the
shared per-buyer function lists, and a missing or mismatched model stops rank by name."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from core import tables
from core.config import derive, load_config
from jobs import rank, ranker
from udfs.features import FEATURE_COLUMNS
from udfs.ranking import ListRules, Ranker, rank_users

RUN = dt.date(2024, 5, 1)


def _model(features):
    import xgboost

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, len(features)))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
    return bytes(xgboost.train({"max_depth": 3}, xgboost.DMatrix(x, y), 15).save_raw("json"))


def _candidates(n_users=3, per_user=12, seed=2):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in range(per_user):
            row = {c: float(rng.normal()) for c in FEATURE_COLUMNS}
            row.update(own_events=float(i % 3 == 0), own_purchases=float(i % 6 == 0),
                       is_new_category=float(i % 4 == 1), is_new_item=float(i % 3 != 0))  # fmt: skip
            row.update(user_id=f"u{u}", item_id=f"i{i:02d}", title=f"Item {i}", norm_title=f"item {i % 9}",
                       leaf_category=f"c{i % 5}", query_kind="personal", query="q",
                       reasons={"query": f"q{i}", "collaborative": f"c{i}", "repeat": f"r{i}"})  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def test_the_spark_rank_lists_what_the_shared_per_buyer_function_lists(spark):
    pdf = _candidates()
    ranker = Ranker(_model(list(FEATURE_COLUMNS)), _model(list(reversed(FEATURE_COLUMNS))), FEATURE_COLUMNS)
    rules = ListRules(top_k=6, repeat_share=0.5, discovery_share=0.2, max_per_category=2)
    got = rank.rank(spark.createDataFrame(pdf), ranker, rules).toPandas()
    expected = rank.as_list_rows(rank_users(pdf, ranker, rules))
    key = ["user_id", "position"]
    got, expected = (
        got.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
    )
    cols = ["user_id", "position", "item_id", "channel", "reason"]
    assert got[cols].equals(expected[cols])
    assert np.allclose(got["score"], expected["score"])
    assert (got.groupby("user_id").size() == 6).all()
    # Near-duplicates (the same normalised title) appear once per list.
    assert (
        not got.merge(pdf[["user_id", "item_id", "norm_title"]]).duplicated(["user_id", "norm_title"]).any()
    )


@pytest.fixture
def store(spark, tmp_path):
    conf = load_config(overrides=[f"storage.root={tmp_path / 'wh'}", "tracking.enabled=false"])
    return conf


def _register(spark, conf, path, features):
    row = {
        "model_id": "m1", "path": str(path), "trained_at": dt.datetime(2024, 5, 1, 3), "run_date": RUN,
        "train_as_of": RUN - dt.timedelta(days=28), "label_end": RUN, "features": features,
        "repeat_share": 0.5, "discovery_share": 0.2, "holdout_recall": 0.1, "holdout_new_category_hit": 0.1,
        "holdout_users": 10, "best_iteration": 3, "rows": 100, "users": 10, "positives": 5, "mlflow_run_id": None,
    }  # fmt: skip
    tables.overwrite(spark.createDataFrame([row], ranker.MODELS_SCHEMA), conf, ranker.MODELS)


def test_rank_without_a_model_names_the_training_task(spark, store):
    with pytest.raises(ranker.RankerError, match="no ranker model .*discovery train"):
        ranker.load_model(spark, store, RUN)


def test_a_missing_model_file_or_other_features_stop_rank_with_the_models_path(spark, store, tmp_path):
    folder = tmp_path / "models" / "m1"
    _register(spark, store, folder, list(FEATURE_COLUMNS))
    with pytest.raises(ranker.RankerError, match=f"{folder / 'model.json'}.*is missing"):
        ranker.load_model(spark, store, RUN)
    folder.mkdir(parents=True)
    (folder / "model.json").write_bytes(_model(list(FEATURE_COLUMNS)))
    loaded, row = ranker.load_model(spark, store, RUN)
    assert row["model_id"] == "m1" and loaded.model.startswith(b"{") and loaded.explore is None
    assert loaded.order == "model"  # no meta.json (an older model): its own order
    (folder / "meta.json").write_text(json.dumps({"order": "channels"}))
    assert ranker.load_model(spark, store, RUN)[0].order == "channels"
    # A model trained for a later run date is not used for an earlier one.
    with pytest.raises(ranker.RankerError, match="no ranker model"):
        ranker.load_model(spark, store, RUN - dt.timedelta(days=1))
    _register(spark, store, folder, ["own_events", "a_feature_this_version_lacks"])
    with pytest.raises(ranker.RankerError, match="trained on other features.*a_feature_this_version_lacks"):
        ranker.load_model(spark, store, RUN)


def test_list_rules_take_the_trained_quotas_unless_the_profile_sets_them(store):
    row = {"repeat_share": 0.5, "discovery_share": 0.2}
    assert rank.list_rules(store, row) == ListRules(20, 0.5, 0.2, 5, True)
    conf = store.model_copy(update={"rank": store.rank.model_copy(update={"discovery_share": 0.4})})
    assert rank.list_rules(conf, row).discovery_share == 0.4


def _quota_case(n_users=400):
    """Lists of 4 from 10 candidates per buyer: 4 own items the model puts first (none
    bought again), then new-category items of which the first (by item id) is bought."""
    rows = []
    for u in range(n_users):
        for i in range(10):
            row = dict.fromkeys(FEATURE_COLUMNS, 0.0)
            own, new_category = i < 4, 4 <= i < 8
            row.update(own_purchases=float(own), is_new_category=float(new_category))
            row.update(user_id=f"u{u:03d}", item_id=f"i{i}", label=int(i == 4), norm_title=f"item {i}",
                       leaf_category="own" if own else f"c{i}")  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def _own_items_first(features):
    import xgboost

    x = np.zeros((20, len(features)))
    x[:10, features.index("own_purchases")] = 1.0
    y = x[:, features.index("own_purchases")]
    return bytes(xgboost.train({"max_depth": 1}, xgboost.DMatrix(x, y), 5).save_raw("json"))


def test_quotas_are_chosen_only_on_enough_held_out_buyers(spark, store):
    pdf = _quota_case()
    rows = spark.createDataFrame(pdf)
    bought = spark.createDataFrame(pd.DataFrame({"user_id": pdf["user_id"].unique(), "bought": 1}))
    features = list(FEATURE_COLUMNS)
    model = Ranker(_own_items_first(features), None, FEATURE_COLUMNS)
    conf = derive(store, ["ranker.choose_at_k=4", "ranker.min_holdout_buyers=10"])
    held = ranker.held_out_buyers(conf, rows)
    assert 60 <= held <= 140, held  # about a quarter of 400

    grid, chosen = ranker.choose_quotas(conf, rows, bought, model, held)
    assert (grid["users"] == held).all()
    no_quota = grid[(grid["repeat_share"] == 1.0) & (grid["discovery_share"] == 0.0)].iloc[0]
    # Without quotas the 4 slots hold the 4 own items, none of them bought.
    assert no_quota["recall"] == 0.0 and no_quota["new_category_hit"] == 0.0
    best = grid[grid["chosen"]].iloc[0]
    assert (best["repeat_share"], best["discovery_share"]) == chosen != (1.0, 0.0)
    assert best["recall"] == 1.0 and best["new_category_hit"] == 1.0

    # Fewer held-out buyers than ranker.min_holdout_buyers: no quotas rather than noise.
    few = derive(conf, [f"ranker.min_holdout_buyers={held + 1}"])
    grid, chosen = ranker.choose_quotas(few, rows, bought, model, held)
    assert chosen == (1.0, 0.0) and len(grid) == 1 and grid["users"].iloc[0] == 0
    # ... and the lists follow the channel order, not a model nothing could validate.
    assert ranker.list_order(few, held) == "channels" and ranker.list_order(conf, held) == "model"


def test_the_fit_with_held_out_buyers_survives_arrow_batches_of_one_kind(spark, store):
    # Batches of 7 rows of 10-row buyers sorted by buyer: many hold no held-out row (or only
    # held-out rows), which xgboost.spark's list-of-columns path cannot take.
    rows = spark.createDataFrame(_quota_case(n_users=200))
    conf = derive(store, ["ranker.min_holdout_buyers=10", "ranker.num_workers=1", "ranker.n_estimators=5"])
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")
    try:
        model = ranker.fit(spark, conf, rows)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000"
    scores = Ranker(model, None, FEATURE_COLUMNS)
    pdf = _quota_case(n_users=1)
    from udfs.ranking import score

    s = score(pdf, scores.model, list(FEATURE_COLUMNS))
    # It learned something: the bought new-category item (i4) outscores the own items.
    assert s[4] > s[:4].max()
