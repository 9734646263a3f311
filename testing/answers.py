"""Scripted answers of each agent, for :class:`testing.scripted_server.ScriptedLLMServer`:
the answer a well-behaved model would give to one request, computed from the rendered
prompt, so tests and benchmarks run the LLM path offline with valid answers. One
``responder`` per agent, named after it (``python -m testing.scripted_server --responder
testing.answers:item_profile``)."""

from __future__ import annotations

import functools
import json
import re

from udfs.agents import behavior_compression as behavior_compression_agent
from udfs.agents import item_profile as item_profile_agent

_INPUT = re.compile(r"<input>(.*?)</input>", re.DOTALL)
_ITEM_PROFILE_BAND = re.compile(r"price band in its category: (\w+)")
_TREND_QUERY_SEED = re.compile(r"Seed \(\w+\): <input>(.*?)</input>", re.DOTALL)
_CFV_POTENTIAL_CANDIDATES = re.compile(
    r"Candidate factors \(factor:buyers\): <input>(.*?)</input>", re.DOTALL
)
_PORTRAIT_FACTS = re.compile(r"Categories \(share of [^)]*\): (.*)")


def item_profile(body: dict) -> str:
    """The answer a perfect model would give to one request of this agent (its heuristic's).

    A ``responder`` for :class:`testing.scripted_server.ScriptedLLMServer`, so tests and
    benchmarks can run the LLM path offline with valid answers.
    """
    user = body["messages"][1]["content"]
    text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user if isinstance(p, dict))
    title = _INPUT.search(text).group(1)
    band = _ITEM_PROFILE_BAND.search(text)
    row = {"title": title, "price_band": band.group(1) if band and band.group(1) != "unknown" else None}
    return item_profile_agent.heuristic(row, _item_profile_context()).model_dump_json()


@functools.lru_cache(maxsize=1)
def _item_profile_context() -> dict[str, object]:
    return item_profile_agent.context()


def trend_query(body: dict) -> str:
    """A ``responder`` for :class:`testing.scripted_server.ScriptedLLMServer`: two queries
    and one selling point naming the seed of the request."""
    user = body["messages"][1]["content"]
    m = _TREND_QUERY_SEED.search(user if isinstance(user, str) else "")
    seed = m.group(1).strip() if m else "trend"
    return json.dumps(
        {
            "selling_points": [f"{seed} new looks"[:60]],
            "queries": [f"{seed} trend new styles for retailers", f"trending {seed} wholesale restock ideas"],
        }
    )


def cfv_potential(body: dict) -> str:
    """A ``responder`` for :class:`testing.scripted_server.ScriptedLLMServer`: the first
    candidates of the prompt, weights 10, 9, 8, ... (at most 3)."""
    user = body["messages"][1]["content"]
    m = _CFV_POTENTIAL_CANDIDATES.search(user if isinstance(user, str) else "")
    text = m.group(1).strip() if m else ""
    names = [p.rsplit(":", 1)[0] for p in text.split("|") if p and p != "(none)"][:3]
    return json.dumps({"factors": [{"factor": n, "weight": 10 - i} for i, n in enumerate(names)]})


def portrait(body: dict) -> str:
    """A ``responder`` for :class:`testing.scripted_server.ScriptedLLMServer`: a valid
    portrait naming the first category of the prompt with its share."""
    user = body["messages"][1]["content"]
    m = _PORTRAIT_FACTS.search(user if isinstance(user, str) else "")
    first = (m.group(1).split("; ")[0] if m else "unknown 0%").rsplit(" ", 1)
    share = float(first[1].rstrip("%")) / 100 if len(first) == 2 else 0.0
    return json.dumps(
        {
            "main_categories": [{"category": first[0], "share": share}],
            "buyer_type": "specialist retailer",
            "dropshipper": "stockholding",
            "core_intents": [first[0]],
            "profile": {
                "identity": f"Shop selling {first[0]}",
                "target_audience": "Gift shoppers",
                "operating_strategy": "Regular restocking",
                "procurement_focus": first[0],
            },
            "summary": f"A shop focused on {first[0]}.",
        }
    )


def u2q(body: dict) -> str:
    """A ``responder`` for the scripted test server: one personal query on the first
    category listed under "Personal", or no query."""
    user = body["messages"][1]["content"]
    text = user if isinstance(user, str) else ""
    m = re.search(r"Personal:\n<input>- (.+?) \(", text)
    if not m:
        return json.dumps({"queries": []})
    category = m.group(1)
    q = {"kind": "personal", "query": f"best {category} for my shop", "category": category,
         "reason": f"you buy {category}"}  # fmt: skip
    return json.dumps({"queries": [q]})


def behavior_compression(body: dict) -> str:
    """A ``responder`` for :class:`testing.scripted_server.ScriptedLLMServer`: the rows
    :func:`rows_from_text` computes from the behaviour in the prompt, as JSON."""
    user = body["messages"][1]["content"]
    text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user if isinstance(p, dict))
    m = _INPUT.search(text)
    return json.dumps(
        {
            "rows": behavior_compression_agent.rows_from_text(
                m.group(1) if m else "", _behavior_compression_context()["max_factors"]
            )
        }
    )


@functools.lru_cache(maxsize=1)
def _behavior_compression_context() -> dict[str, object]:
    return behavior_compression_agent.context()
