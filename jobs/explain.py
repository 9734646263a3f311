"""``discovery explain --user ID``: what the pipeline knows and recommends for one buyer.

Reads the warehouse of the run date (nothing is recomputed): the 8-week digest, the
business portrait, the CFV preferences, the demand queries and the list, each listed item
with the channel that brought it, the features that drove its score most (the model's
per-feature contributions, xgboost ``pred_contribs``) and its reason.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core import tables
from core.config import Config
from core.rundate import resolve_run_date
from jobs.candidates import FEATURES
from jobs.ranker import load_model
from udfs.ranking import booster


def _rows(spark: SparkSession, conf: Config, name: str, user_id: str, order: list[str] | None = None) -> list:
    if not tables.exists(spark, conf, name):
        return []
    df = tables.read(spark, conf, name).filter(F.col("user_id") == user_id)
    return df.orderBy(*order).collect() if order else df.collect()


def drivers(ranker, rows, top: int = 3) -> list[str]:
    """Per row (a mapping of the model's features) the ``top`` features that raised its
    score most, as ``name=value (+contribution)``."""
    import numpy as np
    import xgboost

    if not rows:
        return []
    names = list(ranker.features)
    x = np.array([[float("nan") if r[n] is None else float(r[n]) for n in names] for r in rows])
    contribs = booster(ranker.model).predict(xgboost.DMatrix(x, feature_names=names), pred_contribs=True)
    out = []
    for values, c in zip(x, contribs, strict=True):
        order = np.argsort(-c[:-1])[:top]  # the last column is the bias
        out.append(", ".join(f"{names[i]}={values[i]:.3g} ({c[i]:+.2f})" for i in order if c[i] > 0) or "-")
    return out


def explain(spark: SparkSession, conf: Config, user_id: str) -> str:
    """The report of one buyer as text (see the module docstring)."""

    run_date: dt.date = resolve_run_date(spark, conf, tables.read(spark, conf, "bronze.events"))
    lines = [f"buyer {user_id}, run date {run_date}"]
    digest = _rows(spark, conf, "gold.behavior_digests", user_id)
    lines.append("\n8-week digest (gold.behavior_digests):")
    for r in digest[:1]:
        d = r.asDict()
        for row in d.get("digest_rows") or d.get("rows") or []:
            lines.append(f"  {row}")
    if not digest:
        lines.append("  (none: no events in the last 8 weeks)")
    lines.append("\nportrait (gold.portraits):")
    for r in _rows(spark, conf, "gold.portraits", user_id)[:1]:
        d = r.asDict(recursive=True)
        cats = ", ".join(f"{m['category']} {m['share']:.0%}" for m in (d.get("main_categories") or []))
        lines.append(f"  {d.get('buyer_type')}: {d.get('summary')}")
        lines.append(f"  main categories: {cats or '-'}")
    lines.append("\nCFV (gold.cfv, top factors per category and horizon):")
    for r in _rows(spark, conf, "gold.cfv", user_id, ["horizon", "leaf_category"]):
        factors = "|".join(f"{f['factor']}:{f['weight']}" for f in (r["factors"] or [])[:5])
        lines.append(f"  {r['horizon']:<10} {r['leaf_category']:<24} {factors}")
    lines.append("\ndemand queries (gold.user_queries):")
    for r in _rows(spark, conf, "gold.user_queries", user_id, ["kind", "query"]):
        lines.append(f"  {r['kind']:<12} {r['query']:<40} {r['reason']}")
    listed = _rows(spark, conf, "gold.recommendations", user_id, ["position"])
    lines.append(f"\nlist (gold.recommendations, {len(listed)} items):")
    if listed:
        ranker, _ = load_model(spark, conf, run_date)
        if ranker.order == "channels":
            lines.append(
                "  (ordered by the channels, not the model: it was trained on too few buyers to validate)"
            )
        feats = {
            r["item_id"]: r
            for r in tables.read(spark, conf, FEATURES)
            .filter((F.col("as_of") == F.lit(run_date)) & (F.col("user_id") == user_id))
            .collect()
        }
        why = drivers(ranker, [feats[r["item_id"]] for r in listed if r["item_id"] in feats])
        why_by_item = dict(zip([r["item_id"] for r in listed if r["item_id"] in feats], why, strict=True))
        for r in listed:
            flags = "bought before" if r["bought"] else "new category" if r["is_new_category"] else "new item"
            lines.append(
                f"  {r['position']:>2}. {r['title'] or r['item_id']} [{r['leaf_category']}] {r['channel']}, "
                f"score {r['score']:.3f}, {flags}\n      why: {r['reason']}\n"
                f"      drivers: {why_by_item.get(r['item_id'], '-')}"
            )
    return "\n".join(lines)
