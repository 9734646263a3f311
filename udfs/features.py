"""What the candidate features are, shared by the batch ``candidates`` stage (Spark, on
the driver's plan) and the nearline refresh (pandas, in the executors): the numeric
features the ranker reads, the item features, the query channel's score and the title
normalisation that keeps one product once per list."""

from __future__ import annotations

import re

from pyspark.sql import Column
from pyspark.sql import functions as F

from udfs.ranking import CHANNELS

# The numeric features the ranker reads, in this order (a model records the list it was
# trained on; scoring with another list is refused).
FEATURE_COLUMNS = (
    *(f"{c}_score" for c in CHANNELS),
    *(f"{c}_rank" for c in CHANNELS),
    "n_channels",
    "relevance",
    "is_personal_query",
    "is_exploration_query",
    "cfv_match",
    "price_match",
    "own_purchases",
    "own_events",
    "days_since_purchase",
    "days_since_event",
    "is_new_item",
    "is_new_category",
    "category_share",
    "category_transition",
    "log_buyers",
    "log_recent_buyers",
    "buyer_trend",
    "category_rank",
    "category_buyer_share",
)
ITEM_FEATURES = ("log_buyers", "log_recent_buyers", "buyer_trend", "category_rank", "category_buyer_share")


def dynamic_score(relevance, kind_weight, cfv_match, price_match, qc):
    """The personalised score of a candidate (Spark columns or numpy / pandas values)."""
    return relevance * kind_weight + cfv_match * qc.cfv_match + price_match * qc.price_band


_UNITS = r"(oz|g|gr|kg|ml|cl|l|lb|lbs|pk|pack|pcs|pc|ct|count|cm|mm|in|inch|x)"
_SIZE = re.compile(rf"\b\d+([.,/]\d+)?\s*{_UNITS}?\b|\b{_UNITS}\b|\bset of\b|\bpack of\b")
_NON_WORD = re.compile(r"[^a-z ]+")


def normalise_title(title: str | None) -> str | None:
    """The title without case, numbers, sizes and pack words: two items with the same
    normalised title are the same product in another size or pack."""
    if title is None:
        return None
    text = _SIZE.sub(" ", title.lower())
    text = " ".join(_NON_WORD.sub(" ", text).split())
    return text or None


def normalised_title(title: Column) -> Column:
    """:func:`normalise_title` as a Spark column expression (the same steps)."""
    text = F.regexp_replace(F.lower(title), _SIZE.pattern, " ")
    text = F.trim(F.regexp_replace(F.regexp_replace(text, _NON_WORD.pattern, " "), " +", " "))
    return F.when(F.length(text) > 0, text)
