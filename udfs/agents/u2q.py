"""U2Q agent: a buyer's portrait, preferences and candidates -> demand queries with reasons.

The source's "U2Q (user-to-query generation)": per buyer a handful of explicit queries of
three kinds, each with a target category and a one-line reason:

- ``personal``: what the buyer already buys, phrased with the factors they choose by
  (long-term and recent CFV) and the potential factors buyers like them add;
- ``trend``: rising trend queries (``gold.trend_queries``) in the buyer's categories;
- ``exploration``: adjacent categories the buyer never bought, which buyers of the
  buyer's main categories also buy (category co-purchase), framed by the buyer's business.

Input columns (one row per user, built by ``jobs.u2q.agent_inputs``): ``buyer_type``,
``summary``, ``personal_json`` ([{category, share, long_term, recent, potential}]),
``trend_json`` ([{trend_query_id, query, category, selling_points, growth}]),
``exploration_json`` ([{category, from_category, buyers_share, factors, phrase}]; ``phrase``
may be absent).
Context: ``counts`` ({personal, trend, exploration}: queries of each kind).

The check: kinds and counts as configured, every category one of the candidates of its
kind, single-line queries of at most 120 characters, no placeholder, no query twice. An
answer with some queries that break these keeps the others (``prune``: status
``partial``), completed by the heuristic.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from udfs.llm.agent import Agent, AnswerError, Context, Row, enum_or_string, json_list, model_schema, one_line

KINDS = ("personal", "trend", "exploration")


class DemandQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(pattern="^(personal|trend|exploration)$")
    query: str = Field(min_length=2, max_length=120)
    category: str = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=200)


class UserQueries(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[DemandQuery] = Field(max_length=20)


DEFAULT_COUNTS = {"personal": 3, "trend": 2, "exploration": 2}


def asked(context: Context) -> dict[str, int]:
    """Queries of each kind asked for (``context["counts"]``, else the defaults)."""
    counts = context.get("counts", {})
    return {k: int(counts.get(k, DEFAULT_COUNTS[k])) for k in KINDS}


def allowed_categories(row: Row) -> dict[str, set[str]]:
    """Per kind, the categories a query of that kind may target."""
    return {
        "personal": {c["category"] for c in json_list(row, "personal_json")},
        "trend": {t["category"] for t in json_list(row, "trend_json") if t.get("category")},
        "exploration": {e["category"] for e in json_list(row, "exploration_json")},
    }


def slots(row: Row, context: Context) -> dict[str, int]:
    """Queries of each kind this buyer's answer has room for: the count asked where the
    kind has candidates, else 0."""
    allowed = allowed_categories(row)
    return {k: n if allowed[k] else 0 for k, n in asked(context).items()}


def _factors(items: list[dict], n: int) -> str:
    return ", ".join(f["factor"] for f in items[:n])


def template_values(row: Row, context: Context) -> dict[str, object]:
    personal = "\n".join(
        f"- {c['category']} ({c['share']:.0%} of spend): long-term {_factors(c['long_term'], 5) or '-'}; "
        f"recent {_factors(c['recent'], 3) or '-'}; buyers like them add {_factors(c['potential'], 3) or '-'}"
        for c in json_list(row, "personal_json")
    )
    trends = "\n".join(
        f"- [{t['category']}] {t['query']} (selling points: {', '.join(t['selling_points'][:3])})"
        for t in json_list(row, "trend_json")
    )
    explore = "\n".join(
        f"- {e['category']}: {e['buyers_share']:.0%} of {e['from_category']} buyers also buy it; "
        f"popular: {', '.join(e['factors'][:3]) or '-'}"
        for e in json_list(row, "exploration_json")
    )
    return {
        "buyer_type": row.get("buyer_type") or "unknown",
        "summary": row.get("summary") or "",
        "personal": personal or "(none)",
        "trends": trends or "(none)",
        "exploration": explore or "(none)",
        **{f"n_{kind}": n for kind, n in slots(row, context).items()},
    }


_SPACES = re.compile(r"\s+")


def sort_out(answer: UserQueries, row: Row, context: Context) -> tuple[list[DemandQuery], list[str]]:
    """(the queries that keep the rules, in order; what is wrong with each of the others).

    A query must target a candidate category of its kind, be one clean line and not a
    ``<placeholder>``, not repeat an earlier one (ignoring case and spacing), and fit in
    the count asked of its kind (the first ones are kept)."""
    n_asked = asked(context)
    allowed = allowed_categories(row)
    seen: set[str] = set()
    per_kind = dict.fromkeys(KINDS, 0)
    kept, problems = [], []
    for q in answer.queries:
        key = _SPACES.sub(" ", q.query.strip().lower())
        if q.category not in allowed[q.kind]:
            problems.append(f"{q.kind} query category {q.category!r} is not a candidate")
        elif "\n" in q.query or "<input>" in q.query or "</input>" in q.query:
            problems.append(f"query {q.query[:60]!r} is not a single clean line")
        elif key.startswith("<") and key.endswith(">"):
            problems.append(f"query {q.query[:60]!r} is a placeholder")
        elif key in seen:
            problems.append(f"query {q.query!r} is repeated")
        elif per_kind[q.kind] >= n_asked[q.kind]:
            problems.append(
                f"more than {n_asked[q.kind]} {q.kind} queries: at most {n_asked[q.kind]} allowed"
            )
        else:
            kept.append(q)
            seen.add(key)
            per_kind[q.kind] += 1
    return kept, problems


def check(answer: UserQueries, row: Row, context: Context) -> None:
    """Every query keeps the rules of :func:`sort_out`."""
    _, problems = sort_out(answer, row, context)
    if problems:
        raise AnswerError("out_of_vocabulary", problems[0])


def prune(answer: UserQueries, row: Row, context: Context) -> tuple[UserQueries, list[str]]:
    """The answer without its queries that break the rules (see :func:`sort_out`), and why."""
    kept, problems = sort_out(answer, row, context)
    return UserQueries(queries=kept), problems


def heuristic(row: Row, context: Context) -> UserQueries:
    """Template queries from the candidates, strongest first:

    - personal: ``"<f1> <f2> <category>"`` from the recent, then long-term factors of the
      top categories; the last slot, where a category has potential factors, is
      ``"<potential factor> <category>"`` (a new factor in a known category);
    - trend: the trend queries as they are;
    - exploration: the title-word phrase of the adjacent category's busiest items
      (``phrase``, ``jobs.phrases``), else ``"<popular factor> <category>"``.
    """
    n_personal, n_trend, n_explore = asked(context).values()
    out: list[DemandQuery] = []
    seen: set[str] = set()

    def add(kind: str, query: str, category: str, reason: str) -> None:
        query = _SPACES.sub(" ", query).strip()[:120]
        if query.lower() not in seen:
            seen.add(query.lower())
            out.append(DemandQuery(kind=kind, query=query, category=category, reason=reason[:200]))

    personal = json_list(row, "personal_json")
    with_potential = [c for c in personal if c["potential"]]
    n_known = n_personal - 1 if with_potential and n_personal > 1 else n_personal
    for c in personal[:n_known]:
        own = [f["factor"] for f in c["recent"]] + [f["factor"] for f in c["long_term"]]
        own = list(dict.fromkeys(own))[:2]
        add("personal", f"{' '.join(own)} {c['category']}", c["category"],
            f"You buy {c['category']} ({c['share']:.0%} of your spend)"
            + (f", choosing {', '.join(own)}" if own else ""))  # fmt: skip
    if with_potential and n_personal > len([q for q in out if q.kind == "personal"]):
        c = with_potential[0]
        p = c["potential"][0]["factor"]
        add("personal", f"{p} {c['category']}", c["category"],
            f"Buyers of {c['category']} with your taste also choose {p}")  # fmt: skip
    for t in json_list(row, "trend_json")[:n_trend]:
        points = ", ".join(t["selling_points"][:2])
        add("trend", t["query"], t["category"],
            f"Rising in {t['category']}" + (f": {points}" if points else ""))  # fmt: skip
    for e in json_list(row, "exploration_json")[:n_explore]:
        query = e.get("phrase") or (f"{e['factors'][0]} {e['category']}" if e["factors"] else e["category"])
        add("exploration", query, e["category"],
            f"New for you: {e['buyers_share']:.0%} of {e['from_category']} buyers also buy {e['category']}")  # fmt: skip
    return UserQueries(queries=out)


def request_schema(row: Row, context: Context) -> dict[str, object]:
    """The answer's schema for this buyer: one slot per query asked, in kind order
    (personal, trend, exploration; kinds without candidates get none), each slot's kind
    fixed and its category one of that kind's candidates, chosen before the query is
    written (the key order a grammar-constrained model follows), query and reason single
    lines without ``<...>``. A grammar-constrained server can then neither aim a query at
    another kind's category, nor write more or fewer queries than asked, nor a line break
    or a placeholder."""
    base = model_schema(DemandQuery)
    allowed = allowed_categories(row)
    defs, order = {}, []
    for kind, n in slots(row, context).items():
        if not n:
            continue
        props = base["properties"]
        defs[f"{kind}_query"] = {
            "type": "object",
            "additionalProperties": False,
            "required": ["kind", "category", "query", "reason"],
            "properties": {
                "kind": {"const": kind},
                "category": enum_or_string(allowed[kind]),
                "query": one_line(props["query"]["minLength"], props["query"]["maxLength"]),
                "reason": one_line(props["reason"]["minLength"], props["reason"]["maxLength"]),
            },
        }
        order += [{"$ref": f"#/$defs/{kind}_query"}] * n
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["queries"],
        "properties": {
            "queries": {"type": "array", "prefixItems": order, "minItems": len(order), "maxItems": len(order)}
        },
        "$defs": defs,
    }


def complete(answer: UserQueries, row: Row, context: Context) -> UserQueries:
    """An answer cut off part-way, filled up to the asked count of each kind with the
    heuristic's queries of that kind (none repeated)."""
    n = asked(context)
    have = {k: sum(q.kind == k for q in answer.queries) for k in KINDS}
    seen = {_SPACES.sub(" ", q.query.strip().lower()) for q in answer.queries}
    out = list(answer.queries)
    for q in heuristic(row, context).queries:
        key = _SPACES.sub(" ", q.query.strip().lower())
        if have[q.kind] < n[q.kind] and key not in seen:
            out.append(q)
            have[q.kind] += 1
            seen.add(key)
    return UserQueries(queries=out)


AGENT = Agent(
    name="u2q",
    output_model=UserQueries,
    input_columns=("buyer_type", "summary", "personal_json", "trend_json", "exploration_json"),
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h2",
    check=check,
    request_schema=request_schema,
    complete=complete,
    prune=prune,
)
