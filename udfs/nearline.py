"""The per-user work of a nearline refresh, on an executor: U2Q -> embed -> FAISS -> rank.

:func:`refresh_users` runs in a Spark task over the triggered users of one micro-batch
(their rows built on the driver by ``jobs.nearline.state``; the stream itself is
``jobs.nearline``). Everything heavy is loaded once per Python worker and kept: the
embedding model (``udfs.embedding``), the FAISS shard files
(``udfs.vector_index.load_shard``) and the item table (a broadcast variable).

Per user:

1. **U2Q**: the ``u2q`` agent on the refreshed candidates; with an LLM backend all users of
   the partition are sent at once (``llm.runtime.max_in_flight``), each answer validated
   as in the batch job; a timeout, an error or an invalid answer falls back to the
   heuristic (``u2q_status = failed``). The user's fresh searches are added as queries of
   kind ``search``.
2. **Q2Vec + Q2I**: the queries are embedded, every shard is searched for the top
   ``q2i.k`` and the shards' answers merged (``udfs.vector_index.merge_topk``); each
   candidate is scored as in ``jobs.q2i`` (relevance x kind weight + CFV and price-band
   match) and the top ``q2i.per_query`` per query kept, plus the high-relevance ones.
3. **Candidates**: the buyer's candidates of the batch run (all channels, with their
   features, read from ``gold.candidate_features`` for the triggered buyers only), the
   query channels replaced by the fresh queries' and the buyer's fresh events applied
   (:func:`user_candidates`).
4. **Rank**: the learned ranker and the list rules of the batch ``rank`` stage, through
   the same function (``udfs.ranking.rank_users``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.config import CandidatesConf, Q2IConf
from prompts import Prompt
from udfs.agents import u2q
from udfs.embedding import EmbeddingSpec, encode
from udfs.features import FEATURE_COLUMNS, ITEM_FEATURES, dynamic_score, normalise_title
from udfs.llm.client import CallSettings, agent_request, answer_parser, call_all
from udfs.llm.ratelimit import NoRateLimit
from udfs.ranking import CHANNELS, ListRules, Ranker, rank_users
from udfs.vector_index import load_shard, merge_topk
from udfs.vector_index import search as search_index

# Columns of the rows going in (one per triggered user) and coming out.
INPUT_COLUMNS = (
    "user_id", "buyer_type", "summary", "personal_json", "trend_json", "exploration_json", "searches_json",
    "history_json", "candidates_json",
)  # fmt: skip
OUTPUT_COLUMNS = (
    "user_id", "items_json", "queries_json", "u2q_status", "u2q_model", "u2q_error", "llm_latency_ms",
    "refresh_ms",
)  # fmt: skip


@dataclass
class RefreshSettings:
    """What the executors need, shipped once per micro-batch (the item table goes by broadcast)."""

    u2q_counts: dict[str, int]
    backend: str  # heuristic | openai
    prompt: Prompt | None
    call: CallSettings | None
    embedding: EmbeddingSpec
    shard_paths: list[str]
    q2i: Q2IConf
    candidates: CandidatesConf
    horizon_days: int
    ranker: Ranker
    rules: ListRules


def query_id(user_id: str, kind: str, query: str) -> str:
    """The id ``jobs.u2q`` gives a query: sha256 of ``user|kind|lower(query)``, 16 hex digits."""
    return hashlib.sha256(f"{user_id}|{kind}|{query.lower()}".encode()).hexdigest()[:16]


# --- U2Q --------------------------------------------------------------------------------


def _heuristic(row: dict, context: dict) -> list[dict]:
    return [q.model_dump() for q in u2q.AGENT.heuristic(row, context).queries]


def _llm_answers(
    rows: list[dict], context: dict, s: RefreshSettings
) -> dict[str, tuple[str, Any, str | None, int]]:
    """user_id -> (status, queries or None, error, latency ms) from the endpoint."""

    assert s.call is not None and s.prompt is not None
    keys, requests, by_key = {}, [], {}
    for row in rows:
        key, body = agent_request(u2q.AGENT, s.prompt, s.call, row, context)
        keys[row["user_id"]] = key
        by_key[key] = row
        requests.append((key, body))

    def parse_for(key: str):
        return answer_parser(u2q.AGENT, s.prompt, by_key[key], context)

    results = asyncio.run(call_all(s.call, NoRateLimit(), requests, parse_for, s.prompt.render_repair))
    by_result = {r.cache_key: r for r in results}
    out = {}
    for user_id, key in keys.items():
        r = by_result[key]
        usable = r.status in ("ok", "partial") and r.output_json
        queries = json.loads(r.output_json)["queries"] if usable else None
        error = None if r.status == "ok" else f"{r.error_class}: {r.error_message or ''}"[:300]
        out[user_id] = (r.status, queries, error, r.latency_ms)
    return out


def demand_queries(rows: list[dict], s: RefreshSettings) -> dict[str, dict]:
    """user_id -> {queries: [{kind, query, category, reason}], status, model, error, latency_ms}."""
    context = {"counts": s.u2q_counts}
    answers = _llm_answers(rows, context, s) if s.backend != "heuristic" and rows else {}
    out = {}
    for row in rows:
        uid = row["user_id"]
        if s.backend == "heuristic":
            out[uid] = {"queries": _heuristic(row, context), "status": "heuristic", "model": "heuristic",
                        "error": None, "latency_ms": 0}  # fmt: skip
            continue
        status, queries, error, latency = answers[uid]
        if queries is not None:  # ok, or partial (cut off, completed by the heuristic)
            out[uid] = {"queries": queries, "status": status, "model": s.call.model, "error": error,
                        "latency_ms": latency}  # fmt: skip
        else:  # the heuristic's queries, as the batch job does
            out[uid] = {"queries": _heuristic(row, context), "status": "failed", "model": "heuristic",
                        "error": error, "latency_ms": latency}  # fmt: skip
    for row in rows:
        for search in json.loads(row.get("searches_json") or "[]"):
            out[row["user_id"]]["queries"].append(
                {
                    "kind": "search",
                    "query": search["query"],
                    "category": search.get("category"),
                    "reason": f"You searched for '{search['query']}' just now",
                }  # fmt: skip
            )
    return out


# --- Q2I and rank ---------------------------------------------------------------------------


def search_shards(vectors: np.ndarray, s: RefreshSettings) -> tuple[np.ndarray, np.ndarray]:
    """(scores, vector ids) of the top ``q2i.k`` over every shard, per query."""
    qc = s.q2i
    parts = [
        search_index(load_shard(p), vectors, qc.k, nprobe=qc.nprobe, ef_search=qc.ef_search)
        for p in s.shard_paths
    ]
    if not parts:
        n = len(vectors)
        return np.full((n, qc.k), -np.inf, np.float32), np.full((n, qc.k), -1, np.int64)
    return merge_topk(parts, qc.k)


QUERY_CHANNELS = ("query", "trend")
# What a query hit needs of its item: fresh_query_candidates joins these by vector id.
HIT_COLUMNS = ["item_id", "leaf_category", "price_band", "factors"]


@dataclass(frozen=True)
class ItemCatalog:
    """The batch run's items, indexed once per batch run (``from_items`` on the driver, then
    broadcast), not once per trigger: a refresh looks up a few dozen hits, and rebuilding a
    lookup over the catalog for each buyer (hash tables over every item id) cost it about
    a second per micro-batch at 654k items.

    ``by_vector``: ``HIT_COLUMNS`` indexed by vector_id; ``by_item``: every column of the
    item table indexed by item_id, an item once.
    """

    by_vector: pd.DataFrame
    by_item: pd.DataFrame

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> ItemCatalog:
        """From the item table indexed by vector_id (``jobs.nearline.state.load``)."""
        return cls(
            by_vector=items[HIT_COLUMNS],
            by_item=items.reset_index().drop_duplicates("item_id").set_index("item_id"),
        )


def fresh_query_candidates(
    queries: list[dict], scores: np.ndarray, ids: np.ndarray, items: pd.DataFrame, history: dict,
    s: RefreshSettings,
) -> pd.DataFrame:  # fmt: skip
    """The fresh queries' hits scored as ``jobs.q2i`` does (relevance x kind weight + CFV
    and price-band match), per query the top ``q2i.per_query`` plus the high-relevance ones;
    one row per (item, channel): ``query`` (personal, exploration, search) or ``trend``,
    with the item's best query. ``items``: ``HIT_COLUMNS`` indexed by vector_id
    (``ItemCatalog.by_vector``); hits of other vector ids are left out."""
    qc = s.q2i
    rows = []
    for qi in range(len(queries)):
        for vid, rel in zip(ids[qi], scores[qi], strict=True):
            if vid >= 0:
                rows.append((qi, int(vid), float(rel)))
    columns = ["item_id", "leaf_category", "channel", "channel_score", "relevance", "kind", "query", "reason"]
    if not rows:
        return pd.DataFrame(columns=columns)
    c = pd.DataFrame(rows, columns=["qi", "vector_id", "relevance"])
    # A join on the index (its hash table is built once per catalog), not an ``isin``
    # and a column copy of the whole catalog per buyer.
    c = c.join(items, on="vector_id", how="inner")
    if c.empty:
        return pd.DataFrame(columns=columns)
    c["kind"] = [queries[i]["kind"] for i in c["qi"]]
    c["query"] = [queries[i]["query"] for i in c["qi"]]
    c["reason"] = [queries[i]["reason"] for i in c["qi"]]
    prefs, bands = history.get("prefs", {}), set(history.get("bands", []))
    c["cfv_match"] = [
        max([prefs.get(cat, {}).get(f, 0.0) for f in factors] or [0.0])
        for cat, factors in zip(c["leaf_category"], c["factors"], strict=True)
    ]
    c["price_match"] = [
        1.0 if f"{cat}|{band}" in bands else 0.0
        for cat, band in zip(c["leaf_category"], c["price_band"], strict=True)
    ]
    kind_weight = c["kind"].map(lambda k: float(qc.kind_weights.get(k, 1.0)))
    c["channel_score"] = dynamic_score(c["relevance"], kind_weight, c["cfv_match"], c["price_match"], qc)
    c = c.sort_values(["qi", "channel_score", "vector_id"], ascending=[True, False, True])
    c["rank_by_score"] = c.groupby("qi").cumcount() + 1
    c = c[(c["rank_by_score"] <= qc.per_query) | (c["relevance"] >= qc.high_relevance)].copy()
    c["channel"] = np.where(c["kind"] == "trend", "trend", "query")
    return c[columns].reset_index(drop=True)


def _ranked(values: pd.Series, items: pd.Series, limit: int) -> pd.Series:
    """Rank 1.. by value (descending, ties by item id) of the non-null values; NaN beyond ``limit``."""
    order = (
        pd.DataFrame({"v": values, "i": items})
        .dropna(subset=["v"])
        .sort_values(["v", "i"], ascending=[False, True])
    )
    ranks = pd.Series(np.nan, index=values.index)
    ranks.loc[order.index] = np.arange(1, len(order) + 1, dtype=float)
    return ranks.where(ranks <= limit)


def user_candidates(
    stored: list[dict], fresh: pd.DataFrame, items_by_id: pd.DataFrame, history: dict, s: RefreshSettings
) -> pd.DataFrame:
    """One triggered buyer's candidates with their features: the batch run's candidates of
    the buyer (``stored``, rows of ``gold.candidate_features``) with the query channels
    replaced by the fresh queries' (``fresh``) and the buyer's fresh events applied.

    Without fresh events and with the batch run's queries this is exactly the batch's
    frame, so the list is the batch's (``tests/test_nearline.py``). Items only the fresh
    queries found take their item features from ``items_by_id`` and their buyer-category
    features from the buyer's other candidates of that category.
    """
    frame = pd.DataFrame(stored)
    limit = s.candidates.query_per_user
    if frame.empty:
        frame = pd.DataFrame(
            columns=["user_id", "item_id", "leaf_category", "title", "reasons", *FEATURE_COLUMNS]
        )
    uid = history.get("user_id")
    for ch in QUERY_CHANNELS:  # the stored query channels give way to the fresh ones
        frame[f"{ch}_score"] = np.nan
        frame[f"{ch}_rank"] = np.nan
    frame["reasons"] = [
        {c: r for c, r in dict(m or {}).items() if c not in QUERY_CHANNELS} for m in frame["reasons"]
    ]
    for col in ("relevance", "query_kind", "query"):
        frame[col] = np.nan if col == "relevance" else None
    frame["is_personal_query"] = 0.0
    frame["is_exploration_query"] = 0.0

    if not fresh.empty:
        new_items = sorted(set(fresh["item_id"]) - set(frame["item_id"]))
        if new_items:
            known = set(history.get("known_categories", []))
            touched, bought = set(history.get("touched", [])), set(history.get("bought", []))
            by_cat = frame.drop_duplicates("leaf_category").set_index("leaf_category")
            info = items_by_id.loc[new_items]
            added = pd.DataFrame({"item_id": new_items, "user_id": uid})
            added["leaf_category"] = info["leaf_category"].to_numpy()
            added["title"] = info["title"].to_numpy()
            for f in ITEM_FEATURES:
                added[f] = info[f].to_numpy(dtype=float)
            added["own_events"] = [float(i in touched) for i in new_items]
            added["own_purchases"] = [float(i in bought) for i in new_items]
            added["days_since_event"] = added["days_since_purchase"] = float(s.horizon_days)
            added["is_new_item"] = 1.0 - added["own_events"]
            added["is_new_category"] = [float(c not in known) for c in added["leaf_category"]]
            for f in ("category_share", "category_transition"):
                added[f] = [
                    float(by_cat[f].get(c, 0.0)) if f in by_cat else 0.0 for c in added["leaf_category"]
                ]
            for ch in CHANNELS:
                added[f"{ch}_score"] = added[f"{ch}_rank"] = np.nan
            added["reasons"] = [{} for _ in new_items]
            added["cfv_match"] = added["price_match"] = 0.0
            frame = pd.concat([frame, added], ignore_index=True)
        per_item = fresh.sort_values(["channel_score", "item_id"], ascending=[False, True])
        index = {item: i for i, item in enumerate(frame["item_id"])}
        for ch in QUERY_CHANNELS:
            best = per_item[per_item["channel"] == ch].drop_duplicates("item_id")
            at = [index[i] for i in best["item_id"]]
            frame.loc[at, f"{ch}_score"] = best["channel_score"].to_numpy()
            frame[f"{ch}_rank"] = _ranked(frame[f"{ch}_score"], frame["item_id"], limit)
            frame.loc[frame[f"{ch}_rank"].isna(), f"{ch}_score"] = np.nan
            ranks, reasons = frame[f"{ch}_rank"].to_numpy(), frame["reasons"].tolist()
            for item, reason in zip(best["item_id"], best["reason"], strict=True):
                if not np.isnan(ranks[index[item]]):
                    reasons[index[item]] = {**reasons[index[item]], ch: reason}
            frame["reasons"] = reasons
        agg = fresh.groupby("item_id").agg(relevance=("relevance", "max"))
        agg["is_personal_query"] = fresh.assign(p=fresh["kind"] == "personal").groupby("item_id")["p"].max()
        agg["is_exploration_query"] = (
            fresh.assign(p=fresh["kind"] == "exploration").groupby("item_id")["p"].max()
        )
        top = per_item.drop_duplicates("item_id").set_index("item_id")
        at = [index[i] for i in agg.index]
        frame.loc[at, "relevance"] = agg["relevance"].to_numpy()
        frame.loc[at, "is_personal_query"] = agg["is_personal_query"].astype(float).to_numpy()
        frame.loc[at, "is_exploration_query"] = agg["is_exploration_query"].astype(float).to_numpy()
        frame.loc[at, "query_kind"] = top.loc[agg.index, "kind"].to_numpy()
        frame.loc[at, "query"] = top.loc[agg.index, "query"].to_numpy()
        prefs, bands = history.get("prefs", {}), set(history.get("bands", []))
        fresh_rows = frame["item_id"].isin(new_items)
        ids, cats = frame.loc[fresh_rows, "item_id"], frame.loc[fresh_rows, "leaf_category"]
        factors = items_by_id.loc[ids, "factors"].tolist()
        price_bands = items_by_id.loc[ids, "price_band"].tolist()
        frame.loc[fresh_rows, "cfv_match"] = [
            max([prefs.get(c, {}).get(f, 0.0) for f in (fs or [])] or [0.0])
            for fs, c in zip(factors, cats, strict=True)
        ]
        frame.loc[fresh_rows, "price_match"] = [
            1.0 if f"{c}|{b}" in bands else 0.0 for b, c in zip(price_bands, cats, strict=True)
        ]

    # Items that only the stored queries had found are no candidates any more.
    scores = frame[[f"{c}_score" for c in CHANNELS]]
    frame = frame[scores.notna().any(axis=1)].reset_index(drop=True)
    frame["n_channels"] = frame[[f"{c}_score" for c in CHANNELS]].notna().sum(axis=1).astype(float)
    # The buyer's fresh events (after the batch run date).
    known = set(history.get("known_categories", []))
    frame["is_new_category"] = [float(c not in known) for c in frame["leaf_category"]]
    for item, (n_events, n_purchases) in (history.get("fresh_items") or {}).items():
        at = frame["item_id"] == item
        frame.loc[at, "own_events"] += n_events
        frame.loc[at, "own_purchases"] += n_purchases
        frame.loc[at, "days_since_event"] = 0.0
        frame.loc[at, "is_new_item"] = 0.0
        if n_purchases:
            frame.loc[at, "days_since_purchase"] = 0.0
    frame["user_id"] = uid
    frame["norm_title"] = [normalise_title(t) for t in frame["title"]]
    return frame


def list_records(listed: pd.DataFrame) -> list[dict]:
    """The chosen rows as the items of ``gold.nearline_recommendations``."""
    return [
        {
            "position": int(r["position"]),
            "item_id": r["item_id"],
            "title": r["title"],
            "leaf_category": r["leaf_category"],
            "score": round(float(r["score"]), 5),
            "channel": r["channel"],
            "reason": r["reason"],
            "query_kind": r["query_kind"] if isinstance(r["query_kind"], str) else None,
            "query": r["query"] if isinstance(r["query"], str) else None,
            "bought": bool(r["own_purchases"] > 0),
            "is_new_category": bool(r["is_new_category"] > 0),
        }  # fmt: skip
        for r in listed.to_dict("records")
    ]


def _rank_all(frames: dict[str, pd.DataFrame], s: RefreshSettings, errors: dict[str, str]) -> dict[str, list]:
    """user_id -> the list records of every buyer in ``frames``, ranked together (one
    model call per head for the whole partition; ``udfs.ranking.rank_users`` gives each
    buyer the list it gives them alone). If that fails, buyer by buyer, so that one bad
    frame costs only its own buyer (its error goes to ``errors``)."""
    if not frames:
        return {}
    try:
        ranked = rank_users(pd.concat(list(frames.values()), ignore_index=True), s.ranker, s.rules)
        by_user = {uid: list_records(g) for uid, g in ranked.groupby("user_id", sort=False)}
        return {uid: by_user.get(uid, []) for uid in frames}
    except Exception:  # noqa: BLE001 - find the buyer it was
        pass
    out = {}
    for uid, frame in frames.items():
        try:
            out[uid] = list_records(rank_users(frame, s.ranker, s.rules))
        except Exception as e:  # noqa: BLE001 - one bad user must not stop the stream
            errors[uid] = f"refresh_error: {type(e).__name__}: {e}"[:300]
    return out


def refresh_users(pdf: pd.DataFrame, s: RefreshSettings, items: ItemCatalog) -> pd.DataFrame:
    """The refresh of one partition of triggered users (see the module docstring)."""
    started = time.perf_counter()
    rows = [{k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
            for r in pdf.to_dict("records")]  # fmt: skip
    answers = demand_queries(rows, s)
    texts = []
    for row in rows:
        uid = row["user_id"]
        for q in answers[uid]["queries"]:
            q["query_id"] = query_id(uid, q["kind"], q["query"])
            texts.append(q["query"])
    vectors = encode(texts, s.embedding) if texts else np.zeros((0, 0), np.float32)
    scores, ids = search_shards(vectors, s) if texts else (np.zeros((0, 0)), np.zeros((0, 0), np.int64))
    frames: dict[str, pd.DataFrame] = {}
    errors: dict[str, str] = {}
    offset = 0
    for row in rows:
        uid = row["user_id"]
        n = len(answers[uid]["queries"])
        history = json.loads(row.get("history_json") or "{}")
        try:
            fresh = fresh_query_candidates(answers[uid]["queries"], scores[offset : offset + n],
                                           ids[offset : offset + n], items.by_vector, history, s)  # fmt: skip
            stored = json.loads(row.get("candidates_json") or "[]")
            frames[uid] = user_candidates(stored, fresh, items.by_item, {**history, "user_id": uid}, s)
        except Exception as e:  # noqa: BLE001 - one bad user must not stop the stream
            errors[uid] = f"refresh_error: {type(e).__name__}: {e}"[:300]
        offset += n
    listed = _rank_all(frames, s, errors)
    out = []
    for row in rows:
        uid = row["user_id"]
        a = answers[uid]
        out.append(
            {
                "user_id": uid,
                "items_json": json.dumps(listed[uid]) if uid in listed else None,
                "queries_json": json.dumps(a["queries"]),
                "u2q_status": a["status"],
                "u2q_model": a["model"],
                "u2q_error": errors.get(uid, a["error"]),
                "llm_latency_ms": int(a["latency_ms"] or 0),
                "refresh_ms": int((time.perf_counter() - started) * 1000),
            }  # fmt: skip
        )
    return pd.DataFrame(out, columns=list(OUTPUT_COLUMNS))


def with_timeouts(call: CallSettings, timeout_s: float, max_retries: int) -> CallSettings:
    """The batch call settings with the nearline's shorter patience."""
    return dataclasses.replace(call, timeout_s=timeout_s, max_retries=max_retries)


def warm_up(s: RefreshSettings) -> float:
    """Load the embedding model and every shard in this Python worker (before the first
    event); the seconds it took."""
    started = time.perf_counter()
    encode(["warm up"], s.embedding)
    for path in s.shard_paths:
        load_shard(path)
    return time.perf_counter() - started
