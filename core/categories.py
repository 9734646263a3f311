"""Leaf categories for items whose catalog has none, from title words.

A deterministic, documented method (``conf/categories.yaml``, ``docs/categories.md``):
ordered keyword rules on the upper-cased title, first match wins, ``other`` otherwise.
The LLM categoriser of a later stage writes the same columns.

Example
-------
>>> rules = load_rules()
>>> items.transform(assign_leaf_category(rules))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.config import conf_dir_file

# The leaf category of an item no rule or source category places.
UNKNOWN_CATEGORY = "unknown"


@dataclass(frozen=True)
class CategoryRules:
    version: int
    fallback: str
    rules: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def method(self) -> str:
        return f"rules_v{self.version}"


def load_rules(name: str = "categories.yaml") -> CategoryRules:
    """Rules from a file in ``conf/`` (or a path)."""
    try:
        text = conf_dir_file(name)
    except (FileNotFoundError, OSError):
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    data = yaml.safe_load(text)
    rules = []
    for i, r in enumerate(data.get("rules") or []):
        if not r.get("category") or not r.get("keywords"):
            raise ValueError(f"{name}: rule {i} needs a category and keywords")
        rules.append((str(r["category"]), tuple(str(k).upper() for k in r["keywords"])))
    return CategoryRules(int(data.get("version", 1)), str(data.get("fallback", "other")), tuple(rules))


def _pattern(keywords: tuple[str, ...]) -> str:
    # Whole words/phrases, an optional plural; longest first so phrases win.
    alts = "|".join(re.escape(k) for k in sorted(set(keywords), key=len, reverse=True))
    return rf"(^|[^A-Z0-9])({alts})(S|ES)?([^A-Z0-9]|$)"


def category_from_text(text: Column, rules: CategoryRules) -> Column:
    """The first rule matching ``text``, or null where none does."""
    upper = F.upper(F.coalesce(text, F.lit("")))
    out = None
    for category, keywords in rules.rules:
        cond = upper.rlike(_pattern(keywords))
        out = F.when(cond, F.lit(category)) if out is None else out.when(cond, F.lit(category))
    return out.otherwise(F.lit(None)) if out is not None else F.lit(None).cast("string")


def assign_leaf_category(rules: CategoryRules) -> Callable[[DataFrame], DataFrame]:
    """Fill ``leaf_category`` where the catalog left it empty; say where it came from.

    Adds ``category_source``: ``catalog``, ``rules_v<N>`` or ``fallback``.
    """

    def transform(items: DataFrame) -> DataFrame:
        by_rule = category_from_text(F.col("title"), rules)
        catalog = F.col("leaf_category")
        return items.withColumn(
            "category_source",
            F.when(catalog.isNotNull(), "catalog")
            .when(by_rule.isNotNull(), rules.method)
            .otherwise("fallback"),
        ).withColumn("leaf_category", F.coalesce(catalog, by_rule, F.lit(rules.fallback)))

    return transform


def match_category(title: str | None, rules: CategoryRules) -> str | None:
    """The first rule matching ``title`` in plain Python (same regex as ``category_from_text``)."""
    upper = (title or "").upper()
    for category, keywords in rules.rules:
        if re.search(_pattern(keywords), upper):
            return category
    return None


def vocabulary(rules: CategoryRules) -> list[str]:
    """Every leaf category the rules can assign, fallback included, in rule order."""
    return list(dict.fromkeys([c for c, _ in rules.rules] + [rules.fallback]))
