"""The per-user work of a nearline refresh, on an executor: U2Q -> embed -> FAISS -> rank.

:func:`refresh_users` runs inside ``mapInPandas`` over the triggered users of one
micro-batch (their rows built on the driver by ``jobs.nearline.state``). Everything heavy
is loaded once per Python worker and kept: the embedding model (``udfs.embedding``), the
FAISS shard files (``jobs.q2i``'s cache) and the item table (a broadcast variable).

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
3. **Rank**: the components and weights of ``jobs.nearline.scoring`` (relevance,
   personalisation, discovery, trend, popularity; bought items as configured), one row per item with its
   best query, at most ``rank.max_per_category`` per category, the top ``rank.top_k``.
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

from jobs.config import NearlineConf, Q2IConf, RankConf
from jobs.nearline.scoring import (
    COMPONENTS,
    DISCOVERY_NEW_CATEGORY,
    DISCOVERY_NEW_ITEM,
    personalisation,
    weighted_total,
)
from jobs.q2i import _shard, dynamic_score
from prompts import Prompt
from udfs.agents import u2q
from udfs.embedding import EmbeddingSpec, encode
from udfs.llm.client import CallSettings
from udfs.vector_index import merge_topk

# Columns of the rows going in (one per triggered user) and coming out.
INPUT_COLUMNS = (
    "user_id", "buyer_type", "summary", "personal_json", "trend_json", "exploration_json", "searches_json",
    "history_json",
)  # fmt: skip
OUTPUT_SCHEMA = (
    "user_id string, items_json string, queries_json string, u2q_status string, u2q_model string, "
    "u2q_error string, llm_latency_ms long, refresh_ms long"
)


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
    rank: RankConf
    nearline: NearlineConf


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
    from udfs.llm.agent import parse_answer, request_hash
    from udfs.llm.client import call_all
    from udfs.llm.ratelimit import NoRateLimit

    assert s.call is not None and s.prompt is not None
    keys, requests, by_key = {}, [], {}
    for row in rows:
        messages = u2q.AGENT.messages(s.prompt, row, context)
        key = request_hash(s.call.body(messages))
        keys[row["user_id"]] = key
        by_key[key] = row
        requests.append((key, messages))

    def parse_for(key: str):
        return lambda text: parse_answer(text, u2q.AGENT, by_key[key], context).model_dump(mode="json")

    results = asyncio.run(call_all(s.call, NoRateLimit(), requests, parse_for, s.prompt.render_repair))
    by_result = {r.cache_key: r for r in results}
    out = {}
    for user_id, key in keys.items():
        r = by_result[key]
        queries = json.loads(r.output_json)["queries"] if r.status == "ok" and r.output_json else None
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
        if status == "ok":
            out[uid] = {"queries": queries, "status": "ok", "model": s.call.model, "error": None,
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
    from udfs.vector_index import search

    qc = s.q2i
    parts = [
        search(_shard(p), vectors, qc.k, nprobe=qc.nprobe, ef_search=qc.ef_search) for p in s.shard_paths
    ]
    if not parts:
        n = len(vectors)
        return np.full((n, qc.k), -np.inf, np.float32), np.full((n, qc.k), -1, np.int64)
    return merge_topk(parts, qc.k)


def rank_user(
    user_id: str, queries: list[dict], scores: np.ndarray, ids: np.ndarray, items: pd.DataFrame,
    history: dict, s: RefreshSettings,
) -> list[dict]:  # fmt: skip
    """One user's list: candidates of every query -> scored, capped, top ``rank.top_k``.

    ``items`` is indexed by vector_id (item_id, leaf_category, price_band, title,
    popularity, factors); ``history``: known_categories, touched, bought (item ids),
    prefs ({category: {factor: weight 0..1}}), bands (["category|band"]).
    """
    qc, rc = s.q2i, s.rank
    rows = []
    for qi in range(len(queries)):
        for rank_in_query, (vid, rel) in enumerate(zip(ids[qi], scores[qi], strict=True), start=1):
            if vid >= 0:
                rows.append((qi, int(vid), float(rel), rank_in_query))
    if not rows:
        return []
    c = pd.DataFrame(rows, columns=["qi", "vector_id", "relevance", "rank_in_query"])
    c = c[c["vector_id"].isin(items.index)]
    if c.empty:
        return []
    c = c.join(items, on="vector_id")
    c["kind"] = [queries[i]["kind"] for i in c["qi"]]
    c["query_id"] = [queries[i]["query_id"] for i in c["qi"]]
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
    c["q2i_score"] = dynamic_score(c["relevance"], kind_weight, c["cfv_match"], c["price_match"], qc)
    # q2i: per query the top `per_query` by score, plus every high-relevance candidate.
    c = c.sort_values(["qi", "q2i_score", "vector_id"], ascending=[True, False, True])
    c["rank_by_score"] = c.groupby("qi").cumcount() + 1
    c = c[(c["rank_by_score"] <= qc.per_query) | (c["relevance"] >= qc.high_relevance)].copy()

    known = set(history.get("known_categories", []))
    touched, bought = set(history.get("touched", [])), set(history.get("bought", []))
    c["personalisation"] = personalisation(c["cfv_match"], c["price_match"])
    c["discovery"] = [
        DISCOVERY_NEW_CATEGORY if cat not in known else DISCOVERY_NEW_ITEM if item not in touched else 0.0
        for cat, item in zip(c["leaf_category"], c["item_id"], strict=True)
    ]
    c["trend"] = (c["kind"] == "trend").astype(float)
    c["popularity"] = c["popularity"].fillna(0.0)
    c["bought"] = c["item_id"].isin(bought)
    c["score"] = weighted_total({k: c[k] for k in COMPONENTS}, s.nearline.weights)
    if s.nearline.bought == "exclude":
        c = c[~c["bought"]].copy()
    elif s.nearline.bought == "demote":
        c.loc[c["bought"], "score"] = c.loc[c["bought"], "score"] * s.nearline.bought_factor
    # One row per item (its best query), a cap per category, the top K.
    c = c.sort_values(["item_id", "score", "query_id"], ascending=[True, False, True]).drop_duplicates(
        "item_id"
    )
    c = c.sort_values(["leaf_category", "score", "item_id"], ascending=[True, False, True])
    c = c[c.groupby("leaf_category").cumcount() < rc.max_per_category]
    c = c.sort_values(["score", "item_id"], ascending=[False, True]).head(rc.top_k)
    out = []
    for position, r in enumerate(c.itertuples(index=False), start=1):
        q = queries[r.qi]
        out.append(
            {
                "position": position,
                "item_id": r.item_id,
                "title": r.title,
                "leaf_category": r.leaf_category,
                "score": round(float(r.score), 5),
                **{k: round(float(getattr(r, k)), 5) for k in COMPONENTS},
                "bought": bool(r.bought),
                "query_kind": q["kind"],
                "query": q["query"],
                "reason": q["reason"],
            }  # fmt: skip
        )
    return out


def refresh_users(pdf: pd.DataFrame, s: RefreshSettings, items: pd.DataFrame) -> pd.DataFrame:
    """The ``mapInPandas`` body for one partition of triggered users (see the module docstring)."""
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
    out, offset = [], 0
    for row in rows:
        uid = row["user_id"]
        a = answers[uid]
        n = len(a["queries"])
        history = json.loads(row.get("history_json") or "{}")
        error = a["error"]
        try:
            listed = rank_user(uid, a["queries"], scores[offset : offset + n], ids[offset : offset + n], items,
                               history, s)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - one bad user must not stop the stream
            listed, error = None, f"refresh_error: {type(e).__name__}: {e}"[:300]
        offset += n
        out.append(
            {
                "user_id": uid,
                "items_json": None if listed is None else json.dumps(listed),
                "queries_json": json.dumps(a["queries"]),
                "u2q_status": a["status"],
                "u2q_model": a["model"],
                "u2q_error": error,
                "llm_latency_ms": int(a["latency_ms"] or 0),
                "refresh_ms": int((time.perf_counter() - started) * 1000),
            }  # fmt: skip
        )
    return pd.DataFrame(out, columns=[c.split()[0] for c in OUTPUT_SCHEMA.split(", ")])


def with_timeouts(call: CallSettings, timeout_s: float, max_retries: int) -> CallSettings:
    """The batch call settings with the nearline's shorter patience."""
    return dataclasses.replace(call, timeout_s=timeout_s, max_retries=max_retries)


def warm_up(pdf: pd.DataFrame, s: RefreshSettings) -> pd.DataFrame:
    """Load the embedding model and every shard in this Python worker (before the first event)."""
    started = time.perf_counter()
    encode(["warm up"], s.embedding)
    for path in s.shard_paths:
        _shard(path)
    return pd.DataFrame({"seconds": [time.perf_counter() - started] * len(pdf)})
