"""What the nearline path knows about users and items, on the driver.

:func:`load` reads the batch pipeline's outputs once at start (the U2Q candidates of
``jobs.u2q.agent_inputs``, long-term and potential CFV, purchase price bands, known
categories, touched and bought items, item popularity, item factors and vectors), then
folds in every event after the batch run date, so a restart begins from the same point.
Each micro-batch folds its events in (:meth:`UserState.fold`, idempotent by event id) and
:meth:`UserState.inputs` builds the refresh rows of the triggered users:

- **recent CFV, refreshed**: the batch formula (``jobs.cfv.decayed_scores`` and
  ``top_factors``) evaluated on the trigger's day over the user's factor events of the
  recent window, fresh events included: per (category, factor, day) the summed event
  weights are kept, so the decay and the window edge are exact, not approximated;
- **personal candidates**: the categories of the user's fresh events first (the current
  intent), then the portrait's main categories, each with the refreshed recent factors;
- **history**: known categories, touched and bought items with the fresh events added.

Memory: per user a few hundred values; per item its factors. That suits the catalogs and
user bases of this project's data; a very large deployment would look users up in a
key-value store instead (the interface is :meth:`UserState.inputs`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.categories import UNKNOWN_CATEGORY, load_rules, match_category
from core.config import Config
from core.rundate import resolve_run_date
from jobs import candidates, cfv, q2i, u2q

log = logging.getLogger(__name__)


@dataclass
class UserState:
    """Per-user features from the batch run plus the fresh events (see the module docstring)."""

    conf: Config
    run_date: dt.date
    inputs_by_user: dict[str, dict]
    cfv_lists: dict[tuple[str, str, str], list[dict]]  # (user, category, horizon) -> [{factor, weight}]
    shares: dict[tuple[str, str], float]  # (user, category) -> share of spend (portrait)
    recent_weights: dict[str, dict[tuple[str, str, dt.date], float]]  # user -> (cat, factor, day) -> weight
    known: dict[str, set[str]]
    touched: dict[str, set[str]]
    bought: dict[str, set[str]]
    bands: dict[str, set[str]]  # user -> {"category|band"}
    item_category: dict[str, str]
    item_factors: dict[str, list[str]]  # CFV factor values (excluded kinds left out)
    item_band: dict[str, str]
    folded: set[str] = field(default_factory=set)
    fresh_categories: dict[str, list[str]] = field(default_factory=dict)  # user -> latest first
    fresh_searches: dict[str, list[dict]] = field(default_factory=dict)
    # user -> item -> [events, purchases] after the batch run date (all folded events are).
    fresh_items: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    long_term_by_user: dict[str, list[tuple[str, list[dict]]]] = field(init=False)  # user -> [(cat, factors)]

    def __post_init__(self) -> None:
        self.long_term_by_user = defaultdict(list)
        for (uid, cat, horizon), factors in self.cfv_lists.items():
            if horizon == "long_term":
                self.long_term_by_user[uid].append((cat, factors))

    # --- fresh events ------------------------------------------------------------------

    def fold(self, events: pd.DataFrame) -> int:
        """Add events (event_id, user_id, item_id, event_type, ts, query) not folded before."""
        cc = self.conf.cfv
        weights = cc.event_weights
        rules = load_rules(self.conf.aggregate.category_rules)
        n = 0
        for e in events.sort_values(["ts", "event_id"], kind="stable").itertuples(index=False):
            if e.event_id in self.folded:
                continue
            self.folded.add(e.event_id)
            n += 1
            uid, item = e.user_id, e.item_id if isinstance(e.item_id, str) else None
            category = self.item_category.get(item) if item else None
            if e.event_type == "search" and isinstance(e.query, str) and e.query.strip():
                category = category or match_category(e.query, rules)
                searches = self.fresh_searches.setdefault(uid, [])
                searches[:] = [s for s in searches if s["query"].lower() != e.query.strip().lower()]
                searches.insert(0, {"query": e.query.strip()[:120], "category": category})
            if category and category not in (UNKNOWN_CATEGORY, rules.fallback):
                cats = self.fresh_categories.setdefault(uid, [])
                if category in cats:
                    cats.remove(category)
                cats.insert(0, category)
                self.known.setdefault(uid, set()).add(category)
            if not item:
                continue
            self.touched.setdefault(uid, set()).add(item)
            counts = self.fresh_items.setdefault(uid, {}).setdefault(item, [0, 0])
            counts[0] += 1
            counts[1] += e.event_type == "purchase"
            if e.event_type == "purchase":
                self.bought.setdefault(uid, set()).add(item)
                band = self.item_band.get(item)
                if category and band:
                    self.bands.setdefault(uid, set()).add(f"{category}|{band}")
            w = float(weights.get(e.event_type, 0.0))
            if category and w > 0:
                day = pd.Timestamp(e.ts).date()
                per_user = self.recent_weights.setdefault(uid, {})
                for factor in self.item_factors.get(item, []):
                    key = (category, factor, day)
                    per_user[key] = per_user.get(key, 0.0) + w
        return n

    # --- refreshed features -------------------------------------------------------------

    def recent_cfv(self, user_id: str, on: dt.date) -> dict[str, list[dict]]:
        """category -> [{factor, weight}]: the recent horizon of ``jobs.cfv`` as of ``on``."""
        cc, window = self.conf.cfv, self.conf.aggregate.windows.recent
        half_life = float(cc.half_life_days["recent"])
        scores: dict[str, dict[str, float]] = defaultdict(dict)
        for (cat, factor, day), w in self.recent_weights.get(user_id, {}).items():
            age = (on - day).days
            if 0 <= age < window:
                scores[cat][factor] = scores[cat].get(factor, 0.0) + w * 0.5 ** (age / half_life)
        out = {}
        for cat, by_factor in scores.items():
            ranked = sorted(((s, f) for f, s in by_factor.items() if s > 0), key=lambda x: (-x[0], x[1]))
            ranked = ranked[: cc.top_factors]
            if ranked:
                top = ranked[0][0]
                # Spark's round() rounds half up; Python's would round half to even.
                out[cat] = [
                    {"factor": f, "weight": max(1, math.floor(10.0 * s / top + 0.5))} for s, f in ranked
                ]
        return out

    def inputs(self, user_id: str, on: dt.date) -> dict:
        """The refresh row of one triggered user (``udfs.nearline.INPUT_COLUMNS``)."""
        base = self.inputs_by_user.get(user_id, {})
        recent = self.recent_cfv(user_id, on)
        personal = json.loads(base.get("personal_json") or "[]")
        by_category = {c["category"]: c for c in personal}
        order = list(
            dict.fromkeys(self.fresh_categories.get(user_id, []) + [c["category"] for c in personal])
        )
        candidates = []
        for cat in order[: self.conf.u2q.top_categories]:
            c = by_category.get(cat) or {
                "category": cat,
                "share": self.shares.get((user_id, cat), 0.0),
                "long_term": self.cfv_lists.get((user_id, cat, "long_term"), [])[:5],
                "potential": self.cfv_lists.get((user_id, cat, "potential"), [])[:3],
            }
            candidates.append({**c, "recent": recent.get(cat, [])[:3]})
        prefs: dict[str, dict[str, float]] = defaultdict(dict)
        for cat, factors in self.long_term_by_user.get(user_id, []):
            for f in factors:
                prefs[cat][f["factor"]] = max(prefs[cat].get(f["factor"], 0.0), f["weight"] / 10.0)
        for cat, factors in recent.items():
            for f in factors:
                prefs[cat][f["factor"]] = max(prefs[cat].get(f["factor"], 0.0), f["weight"] / 10.0)
        history = {
            "known_categories": sorted(self.known.get(user_id, set())),
            "touched": sorted(self.touched.get(user_id, set())),
            "bought": sorted(self.bought.get(user_id, set())),
            "prefs": prefs,
            "bands": sorted(self.bands.get(user_id, set())),
            "fresh_items": self.fresh_items.get(user_id, {}),
        }
        searches = self.fresh_searches.get(user_id, [])[: self.conf.nearline.search_queries]
        return {
            "user_id": user_id,
            "buyer_type": base.get("buyer_type"),
            "summary": base.get("summary"),
            "personal_json": json.dumps(candidates),
            "trend_json": base.get("trend_json") or "[]",
            "exploration_json": base.get("exploration_json") or "[]",
            "searches_json": json.dumps(searches),
            "history_json": json.dumps(history),
        }


# --- loading -------------------------------------------------------------------------------


def _pairs(df: DataFrame, key: str, value: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for r in df.select(key, value).collect():
        out[r[0]].add(r[1])
    return out


def history(spark: SparkSession, conf: Config, run_date) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(known categories, touched items, bought items) per user, up to the run date."""
    known = (
        tables.read(spark, conf, "silver.user_windows")
        .filter((F.col("window") == "long_term") & (F.col("n_events") > 0))
        .select("user_id", "leaf_category")
        .distinct()
    )
    events = tables.read(spark, conf, "bronze.events").filter(
        (F.col("dt") <= F.lit(run_date)) & F.col("item_id").isNotNull()
    )
    touched = events.select("user_id", "item_id").distinct()
    bought = events.filter(F.col("event_type") == "purchase").select("user_id", "item_id").distinct()
    return known, touched, bought


def load(spark: SparkSession, conf: Config) -> tuple[UserState, pd.DataFrame]:
    """(user state, item table indexed by vector_id) from the batch tables; prints progress."""

    events = tables.read(spark, conf, "bronze.events")
    # The batch run's date, not the last event's: fresh events are appended to the same table.
    run_date = (
        tables.read(spark, conf, "gold.recommendations").agg(F.max("as_of")).collect()[0][0]
        if conf.run.date == "latest" and tables.exists(spark, conf, "gold.recommendations")
        else None
    ) or resolve_run_date(spark, conf, events)
    cc = conf.cfv
    rules = load_rules(conf.aggregate.category_rules)
    log.info(f"nearline: loading the batch features of run date {run_date} ...")

    inputs = {r["user_id"]: r.asDict() for r in u2q.agent_inputs(spark, conf).collect()}
    cfv_rows = tables.read(spark, conf, "gold.cfv").filter(F.col("horizon").isin("long_term", "potential"))
    cfv_lists = {
        (r["user_id"], r["leaf_category"], r["horizon"]): [f.asDict() for f in r["factors"]]
        for r in cfv_rows.select("user_id", "leaf_category", "horizon", "factors").collect()
    }
    shares = {
        (r["user_id"], m["category"]): float(m["share"])
        for r in tables.read(spark, conf, "gold.portraits").select("user_id", "main_categories").collect()
        for m in (r["main_categories"] or [])
    }
    known, touched_df, bought_df = history(spark, conf, run_date)
    _, bands_df = q2i.user_preferences(spark, conf)

    item_cats = tables.read(spark, conf, "silver.item_categories")
    profiles = tables.read(spark, conf, "silver.item_profiles")
    factor_values = F.array_distinct(
        F.transform(
            F.filter(
                "decision_factors",
                lambda f: ~f["kind"].isin(*cc.exclude_kinds) if cc.exclude_kinds else F.lit(True),
            ),
            lambda f: F.lower(F.trim(f["value"])),
        )
    )
    item_rows = (
        item_cats.select("item_id", "leaf_category")
        .join(profiles.select("item_id", factor_values.alias("factors"), "price_band"), "item_id", "left")
        .toPandas()
    )
    item_category = dict(zip(item_rows["item_id"], item_rows["leaf_category"], strict=True))
    item_factors = {
        i: [f for f in (fs if fs is not None else []) if f]
        for i, fs in zip(item_rows["item_id"], item_rows["factors"], strict=True)
    }
    item_band = {
        i: b for i, b in zip(item_rows["item_id"], item_rows["price_band"], strict=True) if isinstance(b, str)
    }

    # Recent-window factor events of the batch, summed per day (the decay is applied per trigger).
    recent_start = run_date - dt.timedelta(days=conf.aggregate.windows.recent - 1)
    fevents = cfv.factor_events(
        events.filter((F.col("dt") >= F.lit(recent_start)) & (F.col("dt") <= F.lit(run_date))),
        item_cats, profiles, rules, cc.exclude_kinds,
    )  # fmt: skip
    per_day = (
        fevents.withColumn("w", cfv.event_weight(cc.event_weights))
        .groupBy("user_id", "leaf_category", "factor", "dt")
        .agg(F.sum("w").alias("w"))
        .filter(F.col("w") > 0)
    )
    recent_weights: dict[str, dict] = defaultdict(dict)
    for r in per_day.collect():
        recent_weights[r["user_id"]][(r["leaf_category"], r["factor"], r["dt"])] = float(r["w"])

    state = UserState(
        conf=conf,
        run_date=run_date,
        inputs_by_user=inputs,
        cfv_lists=cfv_lists,
        shares=shares,
        recent_weights=recent_weights,
        known=_pairs(known, "user_id", "leaf_category"),
        touched=_pairs(touched_df, "user_id", "item_id"),
        bought=_pairs(bought_df, "user_id", "item_id"),
        bands={
            u: {f"{c}|{b}" for c, b in pairs}
            for u, pairs in _grouped(bands_df.select("user_id", "leaf_category", "price_band")).items()
        },
        item_category=item_category,
        item_factors=item_factors,
        item_band=item_band,
    )
    fresh = events.filter(F.col("dt") > F.lit(run_date)).select(*EVENT_FIELDS).toPandas()
    state.fold(fresh)

    all_factors = profiles.select(
        "item_id",
        F.transform("decision_factors", lambda f: F.lower(F.trim(f["value"]))).alias("factors"),
        F.coalesce("short_title", "title").alias("title"),
    )
    # Item features as the batch candidates stage computes them for its run date.
    known_events = events.filter(F.col("dt") <= F.lit(run_date))
    popular = candidates.item_features(
        known_events, item_cats.select("item_id", "leaf_category"), run_date, conf.candidates,
        conf.aggregate.horizon_days,
    )  # fmt: skip
    items = (
        tables.read(spark, conf, "silver.item_vectors")
        .select("vector_id", "item_id", "leaf_category", "price_band")
        .join(all_factors, "item_id", "left")
        .join(popular, "item_id", "left")
        .toPandas()
        .set_index("vector_id")
    )
    items["factors"] = [list(f) if f is not None else [] for f in items["factors"]]
    log.info(
        f"nearline: {len(inputs):,} users with candidates, {len(items):,} items, "
        f"{len(fresh):,} events after the run date folded in",
    )
    return state, items


EVENT_FIELDS = ["event_id", "user_id", "item_id", "event_type", "ts", "query"]


def _grouped(df: DataFrame) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in df.collect():
        out[r[0]].append((r[1], r[2]))
    return out
