"""CFV potential agent: new decision factors a buyer is likely to want in one category.

Input columns (one row per user x category, built by ``jobs.cfv.potential_inputs``):

- ``leaf_category``;
- ``long_term_json``, ``recent_json``: the user's CFV there, ``[{factor, weight}]``;
- ``vocabulary_json``: the category's known factor vocabulary, its most common long-term
  factors, ``[{factor, buyers}]``;
- ``user_factors_json``: every factor the user has touched in the category;
- ``heuristic_json``: the co-occurrence heuristic's answer (``jobs.cfv``), never sent to
  the model: the heuristic twin returns it.

Context: ``max_factors`` (factors per answer).

The check: every factor comes from the vocabulary given, none is one the user already
has, no factor twice, at most ``max_factors``.

Example
-------
>>> heuristic({"heuristic_json": '[{"factor": "floral", "weight": 10}]'}, {"max_factors": 5})
PotentialFactors(factors=[FactorWeight(factor='floral', weight=10)])
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from udfs.llm.agent import Agent, AnswerError, Context, Row, json_list


class FactorWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: str = Field(min_length=1, max_length=40)
    weight: int = Field(ge=1, le=10)


class PotentialFactors(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factors: list[FactorWeight] = Field(max_length=10)


def vocabulary(row: Row) -> list[str]:
    """The category's factor values given in the row, most common first."""
    return [v["factor"] for v in json_list(row, "vocabulary_json")]


def user_factors(row: Row) -> set[str]:
    """Every factor the user already has in the category (touched, long-term, recent)."""
    own = set(json_list(row, "user_factors_json"))
    own.update(f["factor"] for f in json_list(row, "long_term_json"))
    own.update(f["factor"] for f in json_list(row, "recent_json"))
    return own


def _pairs(items: list[dict], key: str) -> str:
    return "|".join(f"{i['factor']}:{i[key]}" for i in items) or "(none)"


def template_values(row: Row, context: Context) -> dict[str, object]:
    own = user_factors(row)
    popular = [v for v in json_list(row, "vocabulary_json") if v["factor"] not in own]
    return {
        "category": row.get("leaf_category") or "",
        "long_term": _pairs(json_list(row, "long_term_json"), "weight"),
        "recent": _pairs(json_list(row, "recent_json"), "weight"),
        "candidates": _pairs(popular, "buyers"),
        "max_factors": context.get("max_factors", 5),
    }


def check(answer: PotentialFactors, row: Row, context: Context) -> None:
    """Factors from the category's vocabulary, new to the user, distinct, at most ``max_factors``."""
    known = set(vocabulary(row))
    own = user_factors(row)
    limit = int(context.get("max_factors", 5))
    if len(answer.factors) > limit:
        raise AnswerError("out_of_vocabulary", f"{len(answer.factors)} factors, at most {limit} allowed")
    seen: set[str] = set()
    for f in answer.factors:
        if f.factor in own:
            raise AnswerError(
                "out_of_vocabulary", f"factor {f.factor!r} is already one of the user's factors"
            )
        if f.factor not in known:
            raise AnswerError("out_of_vocabulary", f"factor {f.factor!r} is not one of the candidate factors")
        if f.factor in seen:
            raise AnswerError("out_of_vocabulary", f"factor {f.factor!r} is repeated")
        seen.add(f.factor)


def heuristic(row: Row, context: Context) -> PotentialFactors:
    """The co-occurrence heuristic's factors (``heuristic_json``), at most ``max_factors``."""
    limit = int(context.get("max_factors", 5))
    return PotentialFactors(
        factors=[
            FactorWeight(factor=f["factor"], weight=int(f["weight"]))
            for f in json_list(row, "heuristic_json")[:limit]
        ]
    )


AGENT = Agent(
    name="cfv_potential",
    output_model=PotentialFactors,
    input_columns=(
        "leaf_category",
        "long_term_json",
        "recent_json",
        "vocabulary_json",
        "user_factors_json",
        "heuristic_json",
    ),
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h1",
    check=check,
)
