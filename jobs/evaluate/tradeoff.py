"""The repeat / explore trade-off at one cut: recall@K against new-category hit@K as the
number of repeat slots R goes from 0 to K.

- ``pipeline``: the as-of run's own candidates and model, the list filled with a repeat
  share of R / K (the discovery share the model was trained with, as in ``rank``);
- ``own+cooccurrence``: the same slots filled by simple baselines: the buyer's R best own
  items by the tuned ``repeat`` rule, then co-occurrence items (not yet listed) up to K.

Both are scored by :func:`jobs.evaluate.metrics.per_user` on the cut's evaluation users.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.config import Config
from jobs import rank
from jobs.candidates import FEATURES
from jobs.evaluate import baselines
from jobs.ranker import load_model
from udfs.ranking import ListRules

log = logging.getLogger(__name__)

PIPELINE, MIX = "pipeline", "own+cooccurrence"
SEP = "@R="


def repeat_slots(k: int, steps: int) -> list[int]:
    """0..K in ``steps`` equal steps (rounded), both ends included."""
    return sorted({round(k * i / steps) for i in range(steps + 1)})


def pipeline_lists(
    spark: SparkSession, asof: Config, users: DataFrame, k: int, slots: list[int]
) -> DataFrame:
    """The pipeline's lists of ``users`` at each repeat-slot count, in the metrics' list schema."""

    run_date = asof.run.date
    ranker, row = load_model(spark, asof, run_date)
    cands = (
        tables.read(spark, asof, FEATURES)
        .filter(F.col("as_of") == F.lit(run_date))
        .join(users, "user_id", "left_semi")
        .localCheckpoint()
    )
    out = []
    for r in slots:
        rules = ListRules(
            k, r / k, float(row["discovery_share"]), asof.rank.max_per_category, asof.rank.dedup_titles
        )
        out.append(
            rank.rank(cands, ranker, rules).select(
                F.lit(f"{PIPELINE}{SEP}{r}").alias("method"),
                "user_id",
                "item_id",
                "position",
                F.lit(True).alias("has_reason"),
            )  # fmt: skip
        )
    return _union(out)


def mix_lists(
    train: DataFrame, users: DataFrame, k: int, as_of: dt.date, slots: list[int], repeat_params: dict | None
) -> DataFrame:
    """R own items (tuned ``repeat``), then co-occurrence items not listed yet, up to K."""
    own = baselines.recommend("repeat", train, users, k, as_of, params=repeat_params).localCheckpoint()
    cooc = baselines.cooccurrence(train, users, k).localCheckpoint()
    out = []
    for r in slots:
        head = own.filter(F.col("position") <= r).select("user_id", "item_id", F.col("position").alias("_p"))
        tail = cooc.join(head, ["user_id", "item_id"], "left_anti").select(
            "user_id", "item_id", (F.col("position") + 1000).alias("_p")
        )
        order = Window.partitionBy("user_id").orderBy("_p", "item_id")
        out.append(
            head.unionByName(tail)
            .withColumn("position", F.row_number().over(order))
            .filter(F.col("position") <= k)
            .select(
                F.lit(f"{MIX}{SEP}{r}").alias("method"),
                "user_id",
                "item_id",
                F.col("position").cast("int"),
                F.lit(False).alias("has_reason"),
            )  # fmt: skip
        )
    return _union(out)


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def curve(per_user: DataFrame, cut: dt.date) -> pd.DataFrame:
    """Mean recall and new-category hit per (method, repeat slots) from ``metrics.per_user``."""
    means = per_user.groupBy("method").agg(
        F.avg("recall").alias("recall"), F.avg("new_category_hit").alias("new_category_hit"),
        F.count("*").alias("users"),
    ).toPandas()  # fmt: skip
    split = means["method"].str.split(SEP, regex=False, expand=True)
    return pd.DataFrame(
        {
            "cut": str(cut),
            "method": split[0],
            "repeat_slots": split[1].astype(int),
            "recall": means["recall"],
            "new_category_hit": means["new_category_hit"],
            "users": means["users"],
        }
    ).sort_values(["method", "repeat_slots"], ignore_index=True)


def plot(table: pd.DataFrame, k: int, path: Path) -> Path:
    """recall@K (x) against new-category hit@K (y), one line per method, points labelled R
    (the mean over cuts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = table.groupby(["method", "repeat_slots"], as_index=False)[["recall", "new_category_hit"]].mean()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for method, g in mean.groupby("method"):
        g = g.sort_values("repeat_slots")
        ax.plot(g["recall"], g["new_category_hit"], marker="o", label=method)
        for _, r in g.iterrows():
            ax.annotate(f"R={int(r['repeat_slots'])}", (r["recall"], r["new_category_hit"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel(f"new-category hit@{k}")
    ax.set_title(f"Repeat slots R = 0..{k}: what is bought vs what is new (mean over cuts)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
