"""Business portrait agent: who a wholesale buyer is, from a compact summary of a year.

Input columns (one row per user, built by ``jobs.portrait.portrait_inputs``):

- ``facts_json``: ``{"basis": "gmv"|"events", "categories": [{category, share, gmv,
  purchases, events}] (all the user's categories, largest share first), "orders",
  "order_lines", "units", "gmv", "active_weeks", "first_day", "last_day", "factors":
  [{category, factors: [value, ...]}] (top long-term CFV factors)}``;
- ``digest_text``: the 8-week behaviour digest (``gold.behavior_digests``), may be null.

Context: the thresholds of ``conf.portrait`` (:class:`core.config.PortraitConf` as a dict).

Vocabularies (the check rejects anything else):

``BUYER_TYPES``
    ``wholesaler / reseller`` (big quantities per order line), ``specialist retailer``
    (most activity in one category), ``general gift shop`` (spread over categories),
    ``event / seasonal buyer`` (mostly seasonal categories: Christmas, parties),
    ``occasional buyer`` (one order a year or fewer), ``browsing prospect`` (no purchase).
``DROPSHIPPER_TYPES``
    ``dropshipper`` (many tiny orders across many categories: ships single units to end
    customers), ``stockholding`` (buys units in packs or cases), ``unknown``.

The heuristic twin (:func:`heuristic`) applies the rules in :func:`classify` and fills
the profile from templates.

Example
-------
>>> classify({"orders": 40, "order_lines": 40, "units": 40, "categories": [...8 categories...]},
...          PortraitConf().model_dump())
('general gift shop', 'dropshipper')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from udfs.llm.agent import Agent, AnswerError, Context, Row, enum_or_string, narrowed_schema, nothing_to_add

BUYER_TYPES = (
    "wholesaler / reseller",
    "specialist retailer",
    "general gift shop",
    "event / seasonal buyer",
    "occasional buyer",
    "browsing prospect",
)
DROPSHIPPER_TYPES = ("dropshipper", "stockholding", "unknown")
# The shares a model may write, in hundredths (the summary it reads shows whole percents).
SHARES = [0, *(round(i / 100, 2) for i in range(1, 100)), 1]


class CategoryShare(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str = Field(min_length=1)
    # Range checked by `check` (an out-of-range share is an inconsistent answer).
    share: float


class BuyerProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity: str = Field(min_length=1, max_length=300)
    target_audience: str = Field(min_length=1, max_length=300)
    operating_strategy: str = Field(min_length=1, max_length=300)
    procurement_focus: str = Field(min_length=1, max_length=300)


class Portrait(BaseModel):
    model_config = ConfigDict(extra="forbid")
    main_categories: list[CategoryShare] = Field(max_length=10)
    buyer_type: str
    dropshipper: str
    core_intents: list[str] = Field(max_length=10)
    profile: BuyerProfile
    summary: str = Field(min_length=1, max_length=600)


# --- facts ------------------------------------------------------------------------------


def _facts(row: Row) -> dict[str, Any]:
    return json.loads(row.get("facts_json") or "{}")


def order_stats(facts: Mapping[str, Any]) -> dict[str, float]:
    """Units per order line and per order (0 without orders).

    >>> order_stats({"orders": 2, "order_lines": 4, "units": 48})
    {'line_quantity': 12.0, 'order_quantity': 24.0}
    """
    orders, lines, units = (int(facts.get(k) or 0) for k in ("orders", "order_lines", "units"))
    return {
        "line_quantity": units / lines if lines else 0.0,
        "order_quantity": units / orders if orders else 0.0,
    }


def seasonal_share(facts: Mapping[str, Any], seasonal_categories: list[str]) -> float:
    """Share of the user's activity in the seasonal categories."""
    seasonal = set(seasonal_categories)
    return sum(float(c["share"]) for c in facts.get("categories") or [] if c["category"] in seasonal)


def classify(facts: Mapping[str, Any], conf: Mapping[str, Any]) -> tuple[str, str]:
    """(buyer_type, dropshipper) by the rules of ``conf.portrait``; first match wins.

    Buyer type: no order -> browsing prospect; units per order line >=
    ``wholesale_line_quantity`` -> wholesaler / reseller; orders <= ``occasional_max_orders``
    -> occasional buyer; seasonal share >= ``seasonal_share`` -> event / seasonal buyer;
    top category share >= ``specialist_share`` -> specialist retailer; else general gift shop.
    Dropshipper: units per order line <= ``dropshipper_max_line_quantity`` with at least
    ``dropshipper_min_orders`` orders over at least ``dropshipper_min_categories``
    purchased categories -> dropshipper; units per order line >=
    ``stockholding_min_line_quantity`` -> stockholding; else unknown.
    """
    orders = int(facts.get("orders") or 0)
    stats = order_stats(facts)
    categories = facts.get("categories") or []
    bought = sum(1 for c in categories if int(c.get("purchases") or 0) > 0)
    top_share = float(categories[0]["share"]) if categories else 0.0
    if orders == 0:
        buyer = "browsing prospect"
    elif stats["line_quantity"] >= conf["wholesale_line_quantity"]:
        buyer = "wholesaler / reseller"
    elif orders <= conf["occasional_max_orders"]:
        buyer = "occasional buyer"
    elif seasonal_share(facts, conf["seasonal_categories"]) >= conf["seasonal_share"]:
        buyer = "event / seasonal buyer"
    elif top_share >= conf["specialist_share"]:
        buyer = "specialist retailer"
    else:
        buyer = "general gift shop"
    if orders == 0:
        drop = "unknown"
    elif (
        stats["line_quantity"] <= conf["dropshipper_max_line_quantity"]
        and orders >= conf["dropshipper_min_orders"]
        and bought >= conf["dropshipper_min_categories"]
    ):
        drop = "dropshipper"
    elif stats["line_quantity"] >= conf["stockholding_min_line_quantity"]:
        drop = "stockholding"
    else:
        drop = "unknown"
    return buyer, drop


def _factors_of(facts: Mapping[str, Any]) -> dict[str, list[str]]:
    return {f["category"]: list(f.get("factors") or []) for f in facts.get("factors") or []}


def core_intents(
    main: list[str], factors: Mapping[str, list[str]], per_category: int, limit: int
) -> list[str]:
    """``"<factor> <category>"`` for the top factors of each main category, round robin
    (first factor of every category, then the second ...); a category without factors
    gives its name. At most ``limit``.

    >>> core_intents(["mugs", "bags"], {"mugs": ["red", "enamel"], "bags": []}, 2, 5)
    ['red mugs', 'bags', 'enamel mugs']
    """
    out: list[str] = []
    for j in range(per_category):
        for category in main:
            values = factors.get(category) or []
            if j < len(values):
                out.append(f"{values[j]} {category}")
            elif j == 0:
                out.append(category)
    return list(dict.fromkeys(out))[:limit]


def _pct(share: float) -> str:
    return f"{round(100 * share)}%"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def heuristic(row: Row, context: Context) -> Portrait:
    """The rule-based portrait of one user (see :func:`classify`), profile text from templates."""
    facts = _facts(row)
    categories = facts.get("categories") or []
    if not categories:
        raise ValueError("user has no categories")
    main = categories[: int(context["top_categories"])]
    buyer, drop = classify(facts, context)
    factors = _factors_of(facts)
    stats = order_stats(facts)
    orders = int(facts.get("orders") or 0)
    names = [c["category"] for c in main]
    top_factors = (factors.get(names[0]) or [])[:3]
    basis = "spend" if facts.get("basis") == "gmv" else "activity"

    shares = ", ".join(f"{c['category']} ({_pct(float(c['share']))})" for c in main)
    identity = f"{buyer.capitalize()} buying mainly {shares} of its {basis}"
    audience = (
        f"Shoppers who want {_join(top_factors)} {names[0]}"
        if top_factors
        else f"Shoppers for {_join(names)}"
    )
    if orders == 0:
        strategy = f"No purchase in the last year; looks at {len(categories)} categories"
    else:
        how = {
            "dropshipper": "many small orders: likely ships single units to end customers without stock",
            "stockholding": "buys in packs and cases to hold stock",
            "unknown": "order size does not show whether it holds stock",
        }[drop]
        strategy = (
            f"{orders} orders in {int(facts.get('active_weeks') or 0)} active weeks, "
            f"{stats['line_quantity']:.1f} units per order line; {how}"
        )
    focus = "; ".join(f"{n}: {', '.join(factors[n][:3])}" if factors.get(n) else n for n in names)
    summary = f"A {buyer} ({drop}) focused on {names[0]} ({_pct(float(main[0]['share']))} of its {basis})"
    summary += f" and {len(categories) - 1} other categories." if len(categories) > 1 else "."
    if top_factors:
        summary += f" Prefers {_join(top_factors)}."
    return Portrait(
        main_categories=[
            CategoryShare(category=c["category"], share=round(float(c["share"]), 4)) for c in main
        ],
        buyer_type=buyer,
        dropshipper=drop,
        core_intents=core_intents(
            names, factors, int(context["intents_per_category"]), int(context["max_intents"])
        ),
        profile=BuyerProfile(
            identity=identity[:300],
            target_audience=audience[:300],
            operating_strategy=strategy[:300],
            procurement_focus=focus[:300],
        ),
        summary=summary[:600],
    )


def sort_out(answer: Portrait, row: Row, context: Context) -> tuple[list[CategoryShare], list[str]]:
    """(the main categories that keep the rules, in order; what is wrong with the others).
    A main category is one of the user's, not repeated, with a share in [0, 1], at most
    ``top_categories`` of them (the first ones), their shares summing to at most 1.01 (a
    category that would push the sum over is left out)."""
    own = {c["category"] for c in _facts(row).get("categories") or []}
    limit = int(context.get("top_categories", 3))
    kept: list[CategoryShare] = []
    problems: list[str] = []
    for c in answer.main_categories:
        total = sum(k.share for k in kept) + c.share
        if c.category not in own:
            problems.append(f"category {c.category!r} is not one of the user's categories")
        elif c.category in {k.category for k in kept}:
            problems.append(f"category {c.category!r} is repeated")
        elif not 0.0 <= c.share <= 1.0:
            problems.append(f"share {c.share} of {c.category!r} is outside [0, 1]")
        elif len(kept) >= limit:
            problems.append(f"{len(answer.main_categories)} main categories, at most {limit}")
        elif total > 1.01:
            problems.append(f"main category shares sum to {total:.2f}, more than 1")
        else:
            kept.append(c)
    return kept, problems


def check(answer: Portrait, row: Row, context: Context) -> None:
    """Vocabularies, at least one main category, and the rules of :func:`sort_out`."""
    if answer.buyer_type not in BUYER_TYPES:
        raise AnswerError(
            "out_of_vocabulary", f"buyer_type {answer.buyer_type!r} is not one of: {'; '.join(BUYER_TYPES)}"
        )
    if answer.dropshipper not in DROPSHIPPER_TYPES:
        raise AnswerError(
            "out_of_vocabulary",
            f"dropshipper {answer.dropshipper!r} is not one of: {'; '.join(DROPSHIPPER_TYPES)}",
        )
    if not answer.main_categories:
        raise AnswerError("out_of_vocabulary", "main_categories is empty")
    _, problems = sort_out(answer, row, context)
    if problems:
        raise AnswerError("out_of_vocabulary", problems[0])


def prune(answer: Portrait, row: Row, context: Context) -> tuple[Portrait, list[str]]:
    """The answer without the main categories that break the rules, and why (the check
    still rejects an answer left with none, or with a word outside the vocabularies)."""
    kept, problems = sort_out(answer, row, context)
    return answer.model_copy(update={"main_categories": kept}), problems


# --- the prompt -------------------------------------------------------------------------


def behaviour_summary(facts: Mapping[str, Any], shown: int = 8) -> str:
    """The compact text the model reads: categories with shares, order stats, top factors.

    >>> print(behaviour_summary({"basis": "gmv", "categories": [{"category": "mugs", "share": 1.0}],
    ...                          "orders": 2, "order_lines": 4, "units": 48, "gmv": 60.0}))
    Categories (share of spend): mugs 100%
    Orders in the last year: 2 orders, 4 order lines, 48 units, GMV 60.00; 12.0 units per order line, 24.0 per order; 0 active weeks
    """
    categories = facts.get("categories") or []
    basis = "spend" if facts.get("basis") == "gmv" else "weighted events"
    parts = [f"{c['category']} {_pct(float(c['share']))}" for c in categories[:shown]]
    rest = sum(float(c["share"]) for c in categories[shown:])
    if len(categories) > shown:
        parts.append(f"{len(categories) - shown} other categories {_pct(rest)}")
    stats = order_stats(facts)
    lines = [
        f"Categories (share of {basis}): {'; '.join(parts)}",
        f"Orders in the last year: {int(facts.get('orders') or 0)} orders, "
        f"{int(facts.get('order_lines') or 0)} order lines, {int(facts.get('units') or 0)} units, "
        f"GMV {float(facts.get('gmv') or 0.0):.2f}; {stats['line_quantity']:.1f} units per order line, "
        f"{stats['order_quantity']:.1f} per order; {int(facts.get('active_weeks') or 0)} active weeks",
    ]
    if facts.get("first_day"):
        lines[-1] += f", {facts['first_day']} .. {facts['last_day']}"
    factors = [f for f in facts.get("factors") or [] if f.get("factors")]
    if factors:
        lines.append(
            "Top decision factors: "
            + "; ".join(f"{f['category']}: {', '.join(f['factors'][:5])}" for f in factors)
        )
    return "\n".join(lines)


def template_values(row: Row, context: Context) -> dict[str, object]:
    digest = row.get("digest_text")
    return {
        "summary": behaviour_summary(_facts(row), int(context.get("prompt_categories", 8))),
        "digest": digest if digest else "(none)",
        "buyer_types": "; ".join(BUYER_TYPES),
        "dropshipper_types": "; ".join(DROPSHIPPER_TYPES),
        "top_categories": context.get("top_categories", 3),
    }


def context(portrait_conf: Any) -> dict[str, Any]:
    """Context from :class:`core.config.PortraitConf`: its thresholds as a dict."""
    return portrait_conf.model_dump()


def request_schema(row: Row, context: Context) -> dict[str, object]:
    """The answer's schema with the limits the prompt states: 1 to ``top_categories`` main
    categories from the buyer's own, each share one of :data:`SHARES`, the two
    vocabularies, 1 to 5 intents of at most 80 characters."""
    own = [c["category"] for c in _facts(row).get("categories") or []]
    return narrowed_schema(Portrait, {
        "main_categories": {"minItems": 1, "maxItems": int(context.get("top_categories", 3))},
        "CategoryShare.category": enum_or_string(own),
        # shares in hundredths from 0 to 1: a grammar cannot bound a free number
        "CategoryShare.share": {"enum": SHARES},
        "buyer_type": {"enum": list(BUYER_TYPES)},
        "dropshipper": {"enum": list(DROPSHIPPER_TYPES)},
        "core_intents": {"minItems": 1, "maxItems": 5, "items": {"type": "string", "minLength": 1, "maxLength": 80}},
    })  # fmt: skip


AGENT = Agent(
    name="portrait",
    output_model=Portrait,
    input_columns=("facts_json", "digest_text"),
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h1",
    check=check,
    request_schema=request_schema,
    complete=nothing_to_add,
    prune=prune,
)
