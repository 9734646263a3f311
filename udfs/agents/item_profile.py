"""Item profile agent: short title, leaf category and decision factors of one item.

Input columns: ``title``, ``price``, ``price_band`` (budget / mid / premium within the
category, may be null), ``leaf_category`` (the catalog's, may be null) and ``image_url``
(sent as an image content part when set). Context: ``categories`` (the
vocabulary the category must come from) and ``rules`` (the keyword rules of
``conf/categories.yaml``, used by the heuristic).

The heuristic twin: title case with pack sizes and codes moved out of the title, the
catalog category or the first keyword rule, and factors found by small word lists.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.categories import CategoryRules, load_rules, match_category, vocabulary
from udfs.llm.agent import Agent, AnswerError, Context, Row, enum_or_string, narrowed_schema, nothing_to_add

FactorKind = Literal[
    "style",
    "material",
    "colour",
    "pattern",
    "design",
    "theme",
    "ip",
    "price_band",
    "pack",
    "size",
    "function",
    "occasion",
]


class Factor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: FactorKind
    # The source's rule is "at most 5 characters" (Chinese); in English: a short phrase.
    value: str = Field(min_length=1, max_length=20)


class ItemProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    short_title: str = Field(min_length=2, max_length=60)
    leaf_category: str = Field(min_length=1)
    decision_factors: list[Factor] = Field(max_length=6)


# Word lists of the heuristic (upper case, as the online_retail titles are written).
_FACTOR_WORDS: dict[str, tuple[str, ...]] = {
    "colour": (
        "RED",
        "PINK",
        "BLUE",
        "GREEN",
        "WHITE",
        "BLACK",
        "IVORY",
        "CREAM",
        "GOLD",
        "SILVER",
        "PURPLE",
        "YELLOW",
        "ORANGE",
        "BROWN",
        "GREY",
        "TURQUOISE",
        "LILAC",
        "PASTEL",
        "NATURAL",
    ),
    "material": (
        "WOODEN",
        "WOOD",
        "GLASS",
        "CERAMIC",
        "ENAMEL",
        "METAL",
        "ZINC",
        "TIN",
        "PAPER",
        "FELT",
        "COTTON",
        "LINEN",
        "WICKER",
        "BAMBOO",
        "PORCELAIN",
        "VELVET",
        "LEATHER",
        "JUTE",
        "RATTAN",
    ),
    "pattern": (
        "RETROSPOT",
        "POLKADOT",
        "SPOTTY",
        "STRIPE",
        "STRIPES",
        "FLORAL",
        "PAISLEY",
        "GINGHAM",
        "DOTS",
        "CHECK",
    ),
    "theme": (
        "HEART",
        "HEARTS",
        "CHRISTMAS",
        "VINTAGE",
        "RETRO",
        "ROSE",
        "ROSES",
        "BIRD",
        "BIRDS",
        "OWL",
        "STAR",
        "STARS",
        "BUTTERFLY",
        "SKULL",
        "SKULLS",
        "CAT",
        "DOG",
        "RABBIT",
        "FAIRY",
        "SPACEBOY",
        "DOLLY",
        "REGENCY",
        "PARIS",
        "LONDON",
        "EASTER",
        "HALLOWEEN",
        "GARDEN",
        "ANTIQUE",
        "SHABBY",
    ),
    "style": ("HANGING", "MINI", "JUMBO", "LARGE", "SMALL", "GIANT", "TRADITIONAL", "CLASSIC", "FOLDING"),
}
_WORD_KIND = {w: kind for kind, words in _FACTOR_WORDS.items() for w in words}
_PACK = re.compile(r"\b(?:SET|PACK|BOX|BAG)\s+OF\s+(\d+)\b|\b(\d+)\s*(?:PC|PCS|PIECE)\b", re.IGNORECASE)
_CODE = re.compile(r"\b[A-Z]*\d{4,}[A-Z]*\b")
_SPACES = re.compile(r"\s+")


def _title_case(text: str) -> str:
    return " ".join(w.capitalize() if w.isupper() or w.islower() else w for w in text.split())


def _clip(text: str, limit: int = 60) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0]


def heuristic(row: Row, context: Context) -> ItemProfile:
    """Profile of one item without an LLM."""
    title = _SPACES.sub(" ", str(row.get("title") or "")).strip()
    if not title:
        raise ValueError("item has no title")
    rules: CategoryRules = context["rules"]
    category = row.get("leaf_category") or match_category(title, rules) or rules.fallback
    category_words = set(category.upper().split())

    factors: list[Factor] = []
    if row.get("price_band"):
        factors.append(Factor(kind="price_band", value=str(row["price_band"])))
    pack = _PACK.search(title)
    if pack:
        factors.append(Factor(kind="pack", value=f"pack of {pack.group(1) or pack.group(2)}"))
    seen: set[str] = set()
    for word in re.findall(r"[A-Z]+", title.upper()):
        kind = _WORD_KIND.get(word)
        if kind and word not in seen and word not in category_words and len(factors) < 6:
            seen.add(word)
            factors.append(Factor(kind=kind, value=word.lower()))

    short = _CODE.sub("", _PACK.sub("", title))
    short = _clip(_title_case(_SPACES.sub(" ", short).strip(" ,-")) or _title_case(title))
    return ItemProfile(
        short_title=short if len(short) >= 2 else title[:60], leaf_category=category, decision_factors=factors
    )


def factor_problems(answer: ItemProfile) -> list[str | None]:
    """Per decision factor, what is wrong with it (None: nothing): at most three words,
    none of them a word of the category's name."""
    category_words = set(answer.leaf_category.lower().split())
    out: list[str | None] = []
    for f in answer.decision_factors:
        words = f.value.lower().split()
        if len(words) > 3:
            out.append(f"factor {f.value!r} is longer than three words")
        elif set(words) & category_words:
            out.append(f"factor {f.value!r} repeats the category name")
        else:
            out.append(None)
    return out


def check(answer: ItemProfile, row: Row, context: Context) -> None:
    """Category from the vocabulary; factors short and not the category word."""
    categories = context["categories"]
    if answer.leaf_category not in categories:
        raise AnswerError(
            "out_of_vocabulary", f"leaf_category {answer.leaf_category!r} is not one of the categories given"
        )
    problems = [p for p in factor_problems(answer) if p]
    if problems:
        raise AnswerError("out_of_vocabulary", problems[0])


def prune(answer: ItemProfile, row: Row, context: Context) -> tuple[ItemProfile, list[str]]:
    """The profile without its decision factors that break the rules, and why (the check
    still rejects a category outside the vocabulary)."""
    problems = factor_problems(answer)
    kept = [f for f, p in zip(answer.decision_factors, problems, strict=True) if p is None]
    return answer.model_copy(update={"decision_factors": kept}), [p for p in problems if p]


def template_values(row: Row, context: Context) -> dict[str, object]:
    price = row.get("price")
    return {
        "title": row.get("title") or "",
        "price": f"{float(price):.2f}" if price is not None else "unknown",
        "price_band": row.get("price_band") or "unknown",
        "categories": "; ".join(context["categories"]),
    }


def context(category_rules: str = "categories.yaml") -> dict[str, object]:
    """Context for the agent: the category vocabulary and rules of ``conf/<category_rules>``."""
    rules = load_rules(category_rules)
    return {"categories": vocabulary(rules), "rules": rules}


def request_schema(row: Row, context: Context) -> dict[str, object]:
    """The answer's schema with the category vocabulary as an enum."""
    return narrowed_schema(ItemProfile, {"leaf_category": enum_or_string(context["categories"])})


AGENT = Agent(
    name="item_profile",
    output_model=ItemProfile,
    input_columns=("title", "price", "price_band", "leaf_category", "image_url"),
    template_values=template_values,
    heuristic=heuristic,
    heuristic_version="h1",
    check=check,
    image_column="image_url",
    request_schema=request_schema,
    complete=nothing_to_add,
    prune=prune,
)
