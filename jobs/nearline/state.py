"""What the nearline path knows about users and items.

Nothing per user stays on the driver between micro-batches. :func:`load` writes the
batch pipeline's per-user outputs to ``gold.nearline_user_features`` (one row per user
and batch run date: the U2Q candidates of ``jobs.u2q.agent_inputs``, long-term and
potential CFV, portrait shares, the recent window's factor events per day, known
categories, touched and bought items, purchase price bands), its files cut by user range
so that a lookup of a few users skips the rest; the driver keeps only what the catalog
bounds (item categories, factors and price bands; the item table the executors get by
broadcast). Each micro-batch, :meth:`Features.users` reads the triggered users' rows and
their events after the batch run date (``bronze.events``, which the stream reads, so the
micro-batch's own events are there), folds those events in (:meth:`UserState.fold`,
idempotent by event id) and :meth:`UserState.inputs` builds their refresh rows:

- **recent CFV, refreshed**: the batch formula (``jobs.cfv.decayed_scores`` and
  ``top_factors``) evaluated on the trigger's day over the user's factor events of the
  recent window, fresh events included: per (category, factor, day) the summed event
  weights are kept, so the decay and the window edge are exact, not approximated;
- **personal candidates**: the categories of the user's fresh events first (the current
  intent), then the portrait's main categories, each with the refreshed recent factors;
- **history**: known categories, touched and bought items with the fresh events added.

With the delta-rs commit engine (a local warehouse) the lookups run on the driver in tens
of milliseconds; otherwise each is a small Spark job over the skipped files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core import tables
from core.categories import UNKNOWN_CATEGORY, load_rules, match_category
from core.config import Config
from core.rundate import resolve_run_date
from jobs import candidates, cfv, q2i, u2q
from jobs.nearline.outputs import commit_engine
from udfs.nearline import ItemCatalog

log = logging.getLogger(__name__)

USER_FEATURES = "gold.nearline_user_features"
# One row per buyer, several KB wide: row groups of about 1 MB (a hundred-odd buyers) and
# files of at most 10,000 buyers, so that a lookup of a few buyers reads a few row groups
# whatever the number of buyers (as gold.candidate_features, jobs/candidates.py).
USER_FEATURES_PROPERTIES = {"parquet.block.size": 1024 * 1024}
USER_FEATURES_MAX_ROWS_PER_FILE = 10_000
EVENT_FIELDS = ["event_id", "user_id", "item_id", "event_type", "ts", "query"]


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


# --- lookups -------------------------------------------------------------------------------


def lookup(
    spark: SparkSession,
    conf: Config,
    name: str,
    columns: list[str],
    users: list[str],
    equal: tuple[str, object] | None = None,
    after: tuple[str, object] | None = None,
) -> pd.DataFrame:
    """The rows of table ``name`` whose ``user_id`` is in ``users`` (and whose column
    ``equal[0]`` equals ``equal[1]``, column ``after[0]`` is above ``after[1]``) as pandas.

    Read by delta-rs on the driver when the nearline commits with delta-rs (a local
    warehouse: tens of milliseconds, no Spark job), else by a Spark job; both skip the
    files whose partition values or statistics exclude the filter."""
    filters: list[tables.Filter] = [("user_id", "in", sorted(set(users)))]
    if equal:
        filters.append((equal[0], "=", equal[1]))
    if after:
        filters.append((after[0], ">", after[1]))
    path = tables.local_path(conf, name) if commit_engine(conf) == "delta-rs" else None
    if path:
        return tables.rs_read(path, columns, filters)
    return tables.read(spark, conf, name).filter(tables.spark_condition(filters)).select(*columns).toPandas()


def utc_naive(ts) -> dt.datetime:
    """A timestamp as naive UTC (delta-rs reads them tz-aware, Spark's session in UTC naive)."""
    t = pd.Timestamp(ts)
    return (t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t).to_pydatetime()


def _strings(value) -> list[str]:
    return [] if value is None else [v for v in value if isinstance(v, str)]


@dataclass
class Features:
    """The driver's part of the nearline state: the batch run date and what the catalog
    bounds (per item its category, CFV factors and price band). Per-user features are
    looked up per micro-batch (:meth:`users`)."""

    conf: Config
    run_date: dt.date
    item_category: dict[str, str]
    item_factors: dict[str, list[str]]
    item_band: dict[str, str]

    def users(self, spark: SparkSession, user_ids: list[str], batch: pd.DataFrame | None = None) -> UserState:
        """The state of ``user_ids``: their batch features, with their events after the
        batch run date in ``bronze.events`` and their events in ``batch`` (the micro-batch's,
        which may include late events of earlier days) folded in, each once."""
        rows = lookup(
            spark, self.conf, USER_FEATURES, FEATURE_COLUMNS, user_ids, equal=("as_of", self.run_date)
        )
        fresh = lookup(
            spark, self.conf, "bronze.events", EVENT_FIELDS + ["dt"], user_ids, after=("dt", self.run_date)
        )
        inputs, cfv_lists, shares, recent = {}, {}, {}, {}
        known, touched, bought, bands = {}, {}, {}, {}
        for r in rows.to_dict("records"):
            uid = r["user_id"]
            inputs[uid] = {c: r[c] for c in INPUT_FIELDS}
            for c in r["cfv"] if r["cfv"] is not None else []:
                cfv_lists[(uid, c["category"], c["horizon"])] = [
                    {"factor": f["factor"], "weight": int(f["weight"])} for f in c["factors"]
                ]
            for m in r["main_categories"] if r["main_categories"] is not None else []:
                shares[(uid, m["category"])] = float(m["share"])
            recent[uid] = {
                (w["category"], w["factor"], pd.Timestamp(w["dt"]).date()): float(w["w"])
                for w in (r["recent"] if r["recent"] is not None else [])
            }
            known[uid], touched[uid] = set(_strings(r["known"])), set(_strings(r["touched"]))
            bought[uid], bands[uid] = set(_strings(r["bought"])), set(_strings(r["bands"]))
        state = UserState(
            conf=self.conf,
            run_date=self.run_date,
            inputs_by_user=inputs,
            cfv_lists=cfv_lists,
            shares=shares,
            recent_weights=recent,
            known=known,
            touched=touched,
            bought=bought,
            bands=bands,
            item_category=self.item_category,
            item_factors=self.item_factors,
            item_band=self.item_band,
        )
        fresh = fresh[EVENT_FIELDS]
        if batch is not None and not batch.empty:
            fresh = pd.concat([fresh, batch[EVENT_FIELDS]], ignore_index=True) if not fresh.empty else batch
        if not fresh.empty:
            fresh = fresh.assign(ts=[utc_naive(t) for t in fresh["ts"]])
            state.fold(fresh)
        return state

    def sample_users(self, spark: SparkSession, n: int) -> list[str]:
        """The first ``n`` users (by id) with features: the warm-up refresh's."""
        return [
            r[0]
            for r in tables.read(spark, self.conf, USER_FEATURES)
            .filter(F.col("as_of") == F.lit(self.run_date))
            .select("user_id")
            .orderBy("user_id")
            .limit(n)
            .collect()
        ]


# --- the batch features, written once per batch run ------------------------------------

INPUT_FIELDS = ["buyer_type", "summary", "personal_json", "trend_json", "exploration_json"]
FEATURE_COLUMNS = [
    "user_id", *INPUT_FIELDS, "cfv", "main_categories", "recent", "known", "touched", "bought", "bands",
]  # fmt: skip


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


def _factor_values(exclude_kinds: list[str]) -> Column:
    """An item profile's CFV factor values (lower-cased; the excluded kinds left out)."""
    return F.array_distinct(
        F.transform(
            F.filter(
                "decision_factors",
                lambda f: ~f["kind"].isin(*exclude_kinds) if exclude_kinds else F.lit(True),
            ),
            lambda f: F.lower(F.trim(f["value"])),
        )
    )


def user_features(spark: SparkSession, conf: Config, run_date: dt.date) -> DataFrame:
    """One row per user (``FEATURE_COLUMNS``): the batch features of ``run_date``."""
    cc = conf.cfv
    rules = load_rules(conf.aggregate.category_rules)
    events = tables.read(spark, conf, "bronze.events")
    inputs = u2q.agent_inputs(spark, conf).select("user_id", *INPUT_FIELDS)
    cfv_rows = (
        tables.read(spark, conf, "gold.cfv")
        .filter(F.col("horizon").isin("long_term", "potential"))
        .groupBy("user_id")
        .agg(
            F.collect_list(
                F.struct(F.col("leaf_category").alias("category"), "horizon", F.col("factors"))
            ).alias("cfv")
        )
    )
    portraits = tables.read(spark, conf, "gold.portraits").select(
        "user_id", F.transform("main_categories", lambda m: F.struct(m["category"].alias("category"),
                                                                     m["share"].cast("double").alias("share")))
        .alias("main_categories"),
    )  # fmt: skip
    # Recent-window factor events of the batch, summed per day (the decay is applied per trigger).
    recent_start = run_date - dt.timedelta(days=conf.aggregate.windows.recent - 1)
    fevents = cfv.factor_events(
        events.filter((F.col("dt") >= F.lit(recent_start)) & (F.col("dt") <= F.lit(run_date))),
        tables.read(spark, conf, "silver.item_categories"),
        tables.read(spark, conf, "silver.item_profiles"),
        rules,
        cc.exclude_kinds,
    )
    recent = (
        fevents.withColumn("w", cfv.event_weight(cc.event_weights))
        .groupBy("user_id", "leaf_category", "factor", "dt")
        .agg(F.sum("w").alias("w"))
        .filter(F.col("w") > 0)
        .groupBy("user_id")
        .agg(
            F.collect_list(
                F.struct(
                    F.col("leaf_category").alias("category"),
                    "factor",
                    "dt",
                    F.col("w").cast("double").alias("w"),
                )
            ).alias("recent")
        )
    )
    known, touched, bought = history(spark, conf, run_date)
    _, bands = q2i.user_preferences(spark, conf)
    parts = [
        inputs,
        cfv_rows,
        portraits,
        recent,
        known.groupBy("user_id").agg(F.collect_set("leaf_category").alias("known")),
        touched.groupBy("user_id").agg(F.collect_set("item_id").alias("touched")),
        bought.groupBy("user_id").agg(F.collect_set("item_id").alias("bought")),
        bands.groupBy("user_id").agg(
            F.collect_set(F.concat_ws("|", "leaf_category", "price_band")).alias("bands")
        ),
    ]
    out = parts[0]
    for part in parts[1:]:
        out = out.join(part, "user_id", "full_outer")
    return out.select(*FEATURE_COLUMNS).withColumn("as_of", F.lit(run_date).cast("date"))


def write_user_features(spark: SparkSession, conf: Config, run_date: dt.date) -> int:
    """Replace the ``run_date`` rows of ``gold.nearline_user_features``, files by user range
    (a lookup of a few users reads one file); returns the number of users."""
    feats = user_features(spark, conf, run_date)
    return tables.replace_partition_by_key(
        spark, conf, USER_FEATURES, feats, ("as_of", run_date), "user_id",
        USER_FEATURES_PROPERTIES, USER_FEATURES_MAX_ROWS_PER_FILE,
    )  # fmt: skip


def drop_older_features(spark: SparkSession, conf: Config, run_date: dt.date) -> None:
    """Delete the features of batch run dates before ``run_date`` (no longer in use)."""
    tables.delete_where(spark, conf, USER_FEATURES, f"as_of < '{run_date}'")


def load(spark: SparkSession, conf: Config) -> tuple[Features, ItemCatalog]:
    """(features, the item table as an ``ItemCatalog``) of the batch run; writes the per-user
    features of its run date (``gold.nearline_user_features``); logs progress."""
    events = tables.read(spark, conf, "bronze.events")
    # The batch run's date, not the last event's: fresh events are appended to the same table.
    run_date = (
        tables.read(spark, conf, "gold.recommendations").agg(F.max("as_of")).collect()[0][0]
        if conf.run.date == "latest" and tables.exists(spark, conf, "gold.recommendations")
        else None
    ) or resolve_run_date(spark, conf, events)
    log.info(f"nearline: writing the per-user batch features of run date {run_date} ...")
    n_users = write_user_features(spark, conf, run_date)

    cc = conf.cfv
    item_cats = tables.read(spark, conf, "silver.item_categories")
    profiles = tables.read(spark, conf, "silver.item_profiles")
    item_rows = (
        item_cats.select("item_id", "leaf_category")
        .join(
            profiles.select("item_id", _factor_values(cc.exclude_kinds).alias("factors"), "price_band"),
            "item_id",
            "left",
        )
        .toPandas()
    )
    features = Features(
        conf=conf,
        run_date=run_date,
        item_category=dict(zip(item_rows["item_id"], item_rows["leaf_category"], strict=True)),
        item_factors={
            i: [f for f in (fs if fs is not None else []) if f]
            for i, fs in zip(item_rows["item_id"], item_rows["factors"], strict=True)
        },
        item_band={
            i: b
            for i, b in zip(item_rows["item_id"], item_rows["price_band"], strict=True)
            if isinstance(b, str)
        },
    )
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
    log.info(f"nearline: features of {n_users:,} users written, {len(items):,} items loaded")
    return features, ItemCatalog.from_items(items)
