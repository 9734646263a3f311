"""Trend query agent: a seed's rising factors and trend documents -> selling points and queries.

The source's step "summarise trend selling points and rewrite them into e-commerce-friendly
queries" (e.g. "2025 children's dress trend, new styles, innovative colours").

Input columns (one row per seed, built by ``jobs.trends``):

- ``seed_kind`` (category, hot_term, growth_term), ``seed_text``, ``leaf_category``
  (may be null for a term whose items are unknown), ``growth`` (may be null);
- ``rising_json``: the category's rising factors ``[{factor_kind, factor, growth}]``;
- ``documents_json``: the retrieved trend documents ``[{doc_id, source, title, text}]``
  (untrusted text: delimited in the prompt, never obeyed);
- ``category_phrase``: the title words of the category's best-selling items
  (``gold.category_phrases``; may be null): what the heuristic's queries are made of.

Context: ``as_of`` (ISO date), ``max_queries``.

The check: at most ``max_queries`` queries, no two the same (ignoring case and spacing),
none carrying prompt delimiters or line breaks.

Example
-------
>>> row = {"seed_kind": "category", "seed_text": "christmas decorations",
...        "leaf_category": "christmas decorations", "growth": 1.5,
...        "rising_json": '[{"factor_kind": "material", "factor": "wood", "growth": 2.1}]',
...        "documents_json": "[]", "category_phrase": "star hanging decoration"}
>>> heuristic(row, {"as_of": "2011-11-01", "max_queries": 2}).queries
['wood star hanging decoration']
"""

from __future__ import annotations

import datetime as dt
import re

from pydantic import BaseModel, ConfigDict, Field

from udfs.llm.agent import Agent, AnswerError, Context, Row, json_list, narrowed_schema

DOC_CHARS = 600  # of each document's text shown to the model


class TrendQueries(BaseModel):
    model_config = ConfigDict(extra="forbid")
    selling_points: list[str] = Field(min_length=1, max_length=5)
    queries: list[str] = Field(min_length=1, max_length=8)


def season(day: dt.date) -> str:
    """The season a retailer buys for now: the one about two months ahead (north)."""
    month = (day + dt.timedelta(days=60)).month
    return {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
            6: "summer", 7: "summer", 8: "summer"}.get(month, "autumn")  # fmt: skip


def trend_year(day: dt.date) -> int:
    """The year a trend query names: next year from October on (buyers plan ahead)."""
    return day.year + 1 if day.month >= 10 else day.year


def _category(row: Row) -> str:
    return row.get("leaf_category") or row.get("seed_text") or ""


def template_values(row: Row, context: Context) -> dict[str, object]:
    as_of = dt.date.fromisoformat(str(context["as_of"]))
    rising = "; ".join(
        f"{r['factor']} ({r['factor_kind']}, {r['growth']:+.0%})" for r in json_list(row, "rising_json")
    )
    docs = "\n".join(
        f"[{i}] {d.get('title') or ''}: {(d.get('text') or '')[:DOC_CHARS]}"
        for i, d in enumerate(json_list(row, "documents_json"), 1)
    )
    growth = row.get("growth")
    return {
        "as_of": as_of.isoformat(),
        "season": season(as_of),
        "year": trend_year(as_of),
        "seed_kind": row.get("seed_kind") or "",
        "seed_text": row.get("seed_text") or "",
        "category": _category(row),
        "growth": "unknown" if growth is None else f"{growth:+.0%}",
        "rising": rising or "(none)",
        "documents": docs or "(none)",
        "max_queries": int(context.get("max_queries", 3)),
    }


_SPACES = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def sort_out(answer: TrendQueries, context: Context) -> tuple[TrendQueries, list[str]]:
    """(the answer with only the queries and selling points that keep the rules; what is
    wrong with each of the others). Queries: single lines of 2 to 140 characters, none
    twice, at most ``max_queries`` (the first ones); selling points: single lines of 1 to
    60 characters. Either list may end up empty (built without validation)."""
    limit = int(context.get("max_queries", 3))
    problems: list[str] = []

    def clean(text: str) -> bool:
        if "<input>" in text or "</input>" in text or "\n" in text:
            problems.append(f"{text[:60]!r} carries a delimiter or a line break")
            return False
        return True

    queries: list[str] = []
    for q in answer.queries:
        if not clean(q):
            continue
        if not 2 <= len(q.strip()) <= 140:
            problems.append(f"query {q[:60]!r} must have 2 to 140 characters")
        elif _norm(q) in {_norm(x) for x in queries}:
            problems.append(f"query {q!r} is repeated")
        elif len(queries) >= limit:
            problems.append(f"{len(answer.queries)} queries, at most {limit} allowed")
        else:
            queries.append(q)
    points = []
    for p in answer.selling_points:
        if not clean(p):
            continue
        if not 1 <= len(p.strip()) <= 60:
            problems.append(f"selling point {p[:60]!r} must have 1 to 60 characters")
        else:
            points.append(p)
    return TrendQueries.model_construct(selling_points=points, queries=queries), problems


def check(answer: TrendQueries, row: Row, context: Context) -> None:
    """At most ``max_queries`` distinct single-line queries of 2 to 140 characters, selling
    points of 1 to 60 (see :func:`sort_out`)."""
    _, problems = sort_out(answer, context)
    if problems:
        raise AnswerError("out_of_vocabulary", problems[0])


def prune(answer: TrendQueries, row: Row, context: Context) -> tuple[TrendQueries, list[str]]:
    """The answer without its queries and selling points that break the rules, and why."""
    return sort_out(answer, context)


def complete(answer: TrendQueries, row: Row, context: Context) -> TrendQueries:
    """A pruned or cut-off answer with an empty list filled by the heuristic's."""
    twin = heuristic(row, context)
    return TrendQueries(
        selling_points=list(answer.selling_points) or twin.selling_points,
        queries=list(answer.queries) or twin.queries,
    )


def with_term(term: str, phrase: str | None) -> str | None:
    """``phrase`` with ``term`` in front, unless each of the term's words is in it already
    (as a word or the start of one: "wood" in "wooden star decoration")."""
    if not phrase:
        return None
    words = phrase.lower().split()
    missing = [w for w in term.lower().split() if not any(p.startswith(w) or w.startswith(p) for p in words)]
    return f"{term} {phrase}" if missing else phrase


def heuristic(row: Row, context: Context) -> TrendQueries:
    """Queries made of the words of the category's best-selling items (``category_phrase``,
    ``jobs.phrases``) with the trend in front, one topic each, so that two seeds naming the
    same trend write the same query (and normalisation merges them):

    - a category seed: per rising factor, strongest first, the factor and the category's
      phrase ("wood" + "star hanging decoration"; the factor once where the phrase has it);
      without a rising factor the category's phrase;
    - a term seed: the term and the category's phrase, then ``"<term> <category>"``.

    Without title words (items known only by id): ``"<factor> <category>"``. Chosen on the
    validation cut over the phrases of each factor's own items, which retrieved narrower
    and worse (``docs/evaluation.md``, "Heuristic queries from title words").

    Selling points: the rising factors as "<factor> <kind>" (a term seed's own term first);
    without any, the seed itself.
    """
    limit = int(context.get("max_queries", 3))
    category = _category(row)
    seed = row.get("seed_text") or category
    rising = json_list(row, "rising_json")
    phrase = row.get("category_phrase") or None
    # "red colour", "owl theme"; a factor that names its kind already ("pack of 3") as it is
    points = [
        (r["factor"] if r["factor_kind"] in r["factor"].split() else f"{r['factor']} {r['factor_kind']}")[:60]
        for r in rising
    ]
    if row.get("seed_kind") == "category" or seed == category:
        candidates = [with_term(r["factor"], phrase) or f"{r['factor']} {category}" for r in rising]
        candidates = candidates or [phrase or category]
    else:
        topic = seed if category in ("", seed) else f"{seed} {category}"
        candidates = [with_term(seed, phrase) or topic, topic]
        own = [p for p in points if p.split(" ")[0] == seed]
        points = own + [p for p in points if p not in own] if own else [seed[:60]] + points
    queries: list[str] = []
    for q in candidates:
        q = _SPACES.sub(" ", q).strip()[:140]
        if q and _norm(q) not in {_norm(x) for x in queries}:
            queries.append(q)
    return TrendQueries(selling_points=points[:5] or [seed[:60] or "trend"], queries=queries[:limit])


def request_schema(row: Row, context: Context) -> dict[str, object]:
    """The answer's schema with the prompt's limits: 1 to 5 selling points of 1 to 60
    characters, 1 to ``max_queries`` queries of 2 to 140."""

    def strings(n: int, lo: int, chars: int) -> dict[str, object]:
        return {
            "minItems": 1,
            "maxItems": n,
            "items": {"type": "string", "minLength": lo, "maxLength": chars},
        }

    return narrowed_schema(
        TrendQueries,
        {"selling_points": strings(5, 1, 60), "queries": strings(int(context["max_queries"]), 2, 140)},
    )


AGENT = Agent(
    name="trend_query",
    output_model=TrendQueries,
    input_columns=(
        "seed_kind",
        "seed_text",
        "leaf_category",
        "growth",
        "rising_json",
        "documents_json",
        "category_phrase",
    ),  # fmt: skip
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h2",
    check=check,
    request_schema=request_schema,
    complete=complete,
    prune=prune,
)
