"""Behaviour compression agent: eight weeks of one buyer's behaviour -> digest rows.

One row per (ISO week, leaf category) with activity: net GMV, net quantity, number of
behaviour events and the most frequent decision factors of the items behind them (the
source's five-tuple ``<week, category, amount, quantity, decision_factor>`` plus the
event count). ``jobs/compress.py`` renders the rows as
``#<iso_week>_<category>_<amount>_<quantity>_<count>_<factor:n|factor:n>``.

Input columns (one row per user):

- ``raw_text``: the user's behaviour as text, built by :func:`raw_behavior_text`;
- ``weeks_json``: the ISO week labels of the window, a JSON list;
- ``categories_json``: the user's categories (from ``silver.user_week_category``), a JSON list;
- ``exact_json``: the exact rows of the user (from the aggregate), a JSON list of
  ``{week, category, amount, quantity, count, factors}``. Never sent to the model: the
  heuristic twin copies it, and ``jobs/compress.py`` scores the model's rows against it.

Context: ``categories`` (the rules' vocabulary, allowed besides the user's own
categories) and ``max_factors`` (factors per row).

Example
-------
>>> raw_behavior_text([{"ts": ..., "dt": "2011-11-28", "event_type": "purchase",
...                     "category": "mugs and cups", "title": "Red Mug", "quantity": 24,
...                     "amount": 40.8}])
'== 2011-W48 ==\\n2011-11-28 purchase [mugs and cups] Red Mug | qty 24 | gmv 40.80'
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.categories import load_rules, vocabulary
from udfs.agents.item_profile import _WORD_KIND
from udfs.llm.agent import Agent, AnswerError, Context, Row, enum_or_string, narrowed_schema

WEEK = re.compile(r"^\d{4}-W(0[1-9]|[1-4]\d|5[0-3])$")


class FactorCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: str = Field(min_length=1, max_length=20)
    n: int = Field(ge=1)


class DigestRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    week: str
    category: str = Field(min_length=1)
    amount: float
    quantity: int
    count: int = Field(ge=0)
    factors: list[FactorCount] = Field(default_factory=list, max_length=10)


class BehaviorDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[DigestRow]


# --- the raw behaviour text -----------------------------------------------------------

_SPACES = re.compile(r"\s+")


def _clean(text: Any, limit: int = 80) -> str:
    # One line per event: titles and queries lose newlines, brackets (the category
    # delimiter) and length beyond ``limit``.
    s = _SPACES.sub(" ", str(text or "")).replace("[", "(").replace("]", ")").strip()
    return s[:limit]


def _day(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def iso_week_label(day: dt.date) -> str:
    """ISO week label of a day, as ``silver.user_week_category.iso_week`` writes it.

    >>> iso_week_label(dt.date(2011, 12, 9))
    '2011-W49'
    """
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _event_line(e: Mapping[str, Any]) -> str:
    kind = str(e.get("event_type"))
    head = f"{_day(e['dt']).isoformat()} {kind} [{_clean(e.get('category') or 'unknown', 60)}]"
    if kind == "search":
        query = _clean(e.get("query"))
        return f'{head} "{query}"' if query else head
    title = _clean(e.get("title") or e.get("item_id") or "?")
    line = f"{head} {title}"
    if kind in ("view", "click") and e.get("duration_s") not in (None, ""):
        try:
            line += f" | {round(float(e['duration_s']))}s"
        except (TypeError, ValueError):
            pass  # a malformed dwell time is left out, not guessed
    if kind in ("purchase", "cancel"):
        if e.get("quantity") is not None:
            line += f" | qty {int(e['quantity'])}"
        if e.get("amount") is not None:
            line += f" | gmv {float(e['amount']) + 0.0:.2f}"
    return line


def raw_behavior_text(events: Sequence[Mapping[str, Any]], max_lines: int = 400) -> str:
    """A user's behaviour as text: one line per event, chronological, grouped by ISO week.

    Each event is a mapping with ``ts`` (for the order; ``event_id`` breaks ties), ``dt``,
    ``event_type``, ``category``, ``title`` (the item's short title), ``query``,
    ``quantity``, ``amount`` and optionally ``duration_s`` (dwell time of a view or click).
    Lines: ``<day> search [<category>] "<query>"``, ``<day> click [<category>] <title> |
    <dwell>s``, ``<day> favorite|cart|inquiry [<category>] <title>``, ``<day>
    purchase|cancel [<category>] <title> | qty <n> | gmv <amount>``. The category in each
    line lets the model group by the same categories as the aggregate.

    At most ``max_lines`` event lines are kept, the most recent; a first line says how
    many earlier events were dropped. Week header lines are not counted.

    >>> print(raw_behavior_text([
    ...     {"ts": 1, "dt": "2011-11-28", "event_type": "search", "category": "mugs and cups",
    ...      "query": "red mug"},
    ...     {"ts": 2, "dt": "2011-11-29", "event_type": "purchase", "category": "mugs and cups",
    ...      "title": "Red Mug", "quantity": 24, "amount": 40.8}]))
    == 2011-W48 ==
    2011-11-28 search [mugs and cups] "red mug"
    2011-11-29 purchase [mugs and cups] Red Mug | qty 24 | gmv 40.80
    """
    ordered = sorted(events, key=lambda e: (str(e.get("ts")), str(e.get("event_id") or "")))
    dropped = max(0, len(ordered) - max_lines)
    kept = ordered[dropped:]
    lines: list[str] = []
    if dropped:
        lines.append(f"({dropped} earlier events not shown)")
    week = None
    for e in kept:
        label = iso_week_label(_day(e["dt"]))
        if label != week:
            week = label
            lines.append(f"== {label} ==")
        lines.append(_event_line(e))
    return "\n".join(lines)


# --- fidelity ---------------------------------------------------------------------------


def _amount_ok(got: float, exact: float) -> bool:
    return abs(got - exact) <= max(0.01, 0.01 * abs(exact)) + 1e-9


def compare_rows(
    exact: Sequence[Mapping[str, Any]], got: Sequence[Mapping[str, Any]]
) -> tuple[float, list[str]]:
    """How faithful ``got`` (the model's rows) is to ``exact`` (the aggregate's).

    A row is keyed by (week, category). It is correct when the amount is within 0.01 or
    1 % of the exact one and quantity and count are equal. Fidelity = correct rows /
    (exact rows + invented rows): a wrong or missing row costs one exact row, and an
    invented row counts against it too. A repeated key is flagged and only its first row
    is scored. Factors are not scored (they have no single right answer).

    Returns
    -------
    (fidelity in [0, 1] (1.0 when both are empty), one note per wrong, missing, invented
    or repeated row, ordered by week and category)

    >>> compare_rows([{"week": "2011-W48", "category": "mugs", "amount": 10.0, "quantity": 5,
    ...                "count": 2}], [])
    (0.0, ['2011-W48 mugs: missing (exact amount 10.00, quantity 5, count 2)'])
    """
    exact_by = {(r["week"], r["category"]): r for r in exact}
    notes: list[tuple[tuple[str, str], str]] = []
    seen: set[tuple[str, str]] = set()
    correct = invented = 0
    for r in got:
        key = (r["week"], r["category"])
        where = f"{key[0]} {key[1]}"
        if key in seen:
            notes.append((key, f"{where}: repeated row ignored"))
            continue
        seen.add(key)
        e = exact_by.get(key)
        if e is None:
            invented += 1
            notes.append(
                (key, f"{where}: invented (amount {float(r['amount']):.2f}, quantity {r['quantity']}, "
                      f"count {r['count']}; no such activity)")
            )  # fmt: skip
            continue
        wrong = []
        if not _amount_ok(float(r["amount"]), float(e["amount"] or 0.0)):
            wrong.append(f"amount {float(r['amount']):.2f} (exact {float(e['amount'] or 0.0):.2f})")
        if int(r["quantity"]) != int(e["quantity"] or 0):
            wrong.append(f"quantity {r['quantity']} (exact {e['quantity']})")
        if int(r["count"]) != int(e["count"]):
            wrong.append(f"count {r['count']} (exact {e['count']})")
        if wrong:
            notes.append((key, f"{where}: wrong " + ", ".join(wrong)))
        else:
            correct += 1
    for key, e in exact_by.items():
        if key not in seen:
            notes.append(
                (key, f"{key[0]} {key[1]}: missing (exact amount {float(e['amount'] or 0.0):.2f}, "
                      f"quantity {e['quantity']}, count {e['count']})")
            )  # fmt: skip
    denominator = len(exact_by) + invented
    fidelity = correct / denominator if denominator else 1.0
    return fidelity, [text for _, text in sorted(notes, key=lambda n: n[0])]


# --- the agent --------------------------------------------------------------------------


def _vocabulary(row: Row, context: Context) -> list[str]:
    own = json.loads(row.get("categories_json") or "[]")
    return list(dict.fromkeys([*own, *context.get("categories", ())]))


def template_values(row: Row, context: Context) -> dict[str, object]:
    return {
        "weeks": ", ".join(json.loads(row.get("weeks_json") or "[]")),
        "categories": "; ".join(_vocabulary(row, context)),
        "max_factors": context.get("max_factors", 5),
        "behaviour": row.get("raw_text") or "",
    }


def check(answer: BehaviorDigest, row: Row, context: Context) -> None:
    """Weeks well formed and in the window; categories from the vocabulary given."""
    weeks = set(json.loads(row.get("weeks_json") or "[]"))
    vocabulary = set(_vocabulary(row, context))
    for r in answer.rows:
        if not WEEK.match(r.week):
            raise AnswerError("out_of_vocabulary", f"week {r.week!r} is not an ISO week like 2011-W48")
        if weeks and r.week not in weeks:
            raise AnswerError("out_of_vocabulary", f"week {r.week!r} is outside the weeks given")
        if r.category not in vocabulary:
            raise AnswerError(
                "out_of_vocabulary", f"category {r.category!r} is not one of the categories given"
            )


def heuristic(row: Row, context: Context) -> BehaviorDigest:
    """The exact rows of the aggregate (``exact_json``), as the model should have written them."""
    exact = json.loads(row.get("exact_json") or "[]")
    return BehaviorDigest(
        rows=[
            DigestRow(
                week=r["week"],
                category=r["category"],
                amount=float(r["amount"] or 0.0),
                quantity=int(r["quantity"] or 0),
                count=int(r["count"]),
                factors=[FactorCount(factor=f["factor"][:20], n=int(f["n"])) for f in r.get("factors") or []],
            )
            for r in exact
        ]
    )


def context(category_rules: str = "categories.yaml", max_factors: int = 5) -> dict[str, object]:
    """Context: the rules' category vocabulary and the number of factors per row."""

    return {"categories": vocabulary(load_rules(category_rules)), "max_factors": max_factors}


def request_schema(row: Row, context: Context) -> dict[str, object]:
    """The answer's schema for this log: one row per (week, category) pair with a line (the
    number the prompt asks for), weeks and categories from the lists given."""
    pairs = {(r["week"], r["category"]) for r in rows_from_text(row.get("raw_text") or "", 0)}
    return narrowed_schema(BehaviorDigest, {
        "rows": {"maxItems": max(1, len(pairs))},
        "DigestRow.week": enum_or_string(json.loads(row.get("weeks_json") or "[]"), 10),
        "DigestRow.category": enum_or_string(c for _, c in pairs),
        "DigestRow.factors": {"maxItems": int(context.get("max_factors", 5))},
    })  # fmt: skip


AGENT = Agent(
    name="behavior_compression",
    output_model=BehaviorDigest,
    input_columns=("raw_text", "weeks_json", "categories_json", "exact_json"),
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h1",
    check=check,
    request_schema=request_schema,
)


# --- a scripted model for tests and benchmarks ------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\w+) \[([^\]]*)\](.*)$")
_QTY = re.compile(r"\| qty (-?\d+)")
_GMV = re.compile(r"\| gmv (-?\d+(?:\.\d+)?)\s*$")


def rows_from_text(text: str, max_factors: int = 5) -> list[dict[str, Any]]:
    """Digest rows computed from a raw behaviour text: what a perfect model would answer.

    Amount and quantity sum the ``qty``/``gmv`` of the lines, count counts the lines of each
    (week, category); factors are the title words of the item_profile heuristic's word
    lists. Lines of events dropped by the cap are not in the text, so counts can fall short.
    """

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        day, kind, category, rest = m.groups()
        g = groups.setdefault(
            (iso_week_label(dt.date.fromisoformat(day)), category),
            {"amount": 0.0, "quantity": 0, "count": 0, "factors": Counter()},
        )
        g["count"] += 1
        if kind in ("purchase", "cancel"):
            qty, gmv = _QTY.search(rest), _GMV.search(rest)
            g["quantity"] += int(qty.group(1)) if qty else 0
            g["amount"] += float(gmv.group(1)) if gmv else 0.0
        if kind != "search":
            title = rest.split(" | ")[0]
            words = {w.lower() for w in re.findall(r"[A-Za-z]+", title) if w.upper() in _WORD_KIND}
            g["factors"].update(words)
    return [
        {
            "week": week,
            "category": category,
            "amount": round(g["amount"], 2),
            "quantity": g["quantity"],
            "count": g["count"],
            "factors": [
                {"factor": f, "n": n}
                for f, n in sorted(g["factors"].items(), key=lambda kv: (-kv[1], kv[0]))[:max_factors]
            ],
        }
        for (week, category), g in sorted(groups.items())
    ]
