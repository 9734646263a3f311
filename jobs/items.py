"""Item enrichment: ``bronze.items`` -> ``silver.item_profiles``.

Per item: a short title, a leaf category (the catalog's where it has one; otherwise the
agent's, constrained to the vocabulary of ``conf/categories.yaml``), a price band within
its category, and decision factors (``{kind, value}``: colour, material, pattern, theme,
pack, ...). Computed by the ``item_profile`` agent (``udfs/agents/item_profile.py``) with
the configured backend: the heuristic by default, or an LLM that also receives the item
image as a content part when ``image_url`` is set.

Incremental: a profile is computed again only when the item's title, image, catalog
category or price band changed (``input_hash``); other rows are left as they are.
Items whose LLM answer failed get the heuristic's profile with ``status = 'failed'`` and
``profile_source = 'heuristic_fallback'``, so downstream always has factors and the
failure stays visible.

Example
-------
>>> from jobs.items import run
>>> run(spark, load_config())          # or: discovery items
"""

from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from core import tables
from core.categories import category_from_text
from core.config import Config
from jobs.agents import KEPT_META_COLUMNS, output_source, run_agent
from udfs.agents import item_profile

log = logging.getLogger(__name__)

PROFILES = "silver.item_profiles"
PRICE_BANDS = ("budget", "mid", "premium")


def price_bands(items: DataFrame) -> DataFrame:
    """Add ``price_band``: the item's price tercile within its category (null without a price).

    The category is the catalog's or the rule-based one (``rule_category``), so that the
    band is known before any LLM call and is part of the input.
    """
    ranked = F.percent_rank().over(Window.partitionBy("_band_cat").orderBy("price"))
    priced = items.filter(F.col("price").isNotNull()).withColumn(
        "_band_cat", F.coalesce("leaf_category", "rule_category")
    )
    banded = priced.withColumn(
        "price_band",
        F.when(ranked < 1 / 3, PRICE_BANDS[0]).when(ranked < 2 / 3, PRICE_BANDS[1]).otherwise(PRICE_BANDS[2]),
    ).drop("_band_cat")
    unpriced = items.filter(F.col("price").isNull()).withColumn("price_band", F.lit(None).cast("string"))
    return banded.unionByName(unpriced)


def input_hash() -> Column:
    """What a profile depends on: title, image, catalog category, price band."""
    parts = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in
             ("title", "image_url", "leaf_category", "price_band")]  # fmt: skip
    return F.sha2(F.concat_ws("\u0001", *parts), 256)


def _profile_columns(agent_output: DataFrame) -> DataFrame:
    """Agent output (a failed answer carrying the heuristic's profile) -> the item_profiles columns."""
    out = F.col("output")
    return agent_output.select(
        "item_id",
        out["short_title"].alias("short_title"),
        out["leaf_category"].alias("agent_category"),
        out["decision_factors"].alias("decision_factors"),
        output_source().alias("profile_source"),
        *KEPT_META_COLUMNS,
        F.coalesce(F.col("answered_at"), F.current_timestamp()).alias("profiled_at"),
    )


def _heuristic_only(conf: Config) -> Config:
    """``conf`` with the item_profile agent on its heuristic backend."""
    name = item_profile.AGENT.name
    changed = conf.model_copy(deep=True)
    changed.llm.agents[name] = conf.llm.agent(name).model_copy(update={"backend": "heuristic"})
    return changed


def profile_items(todo: DataFrame, conf: Config, context: dict) -> DataFrame:
    """Profiles of ``todo`` items (item_id, title, price, leaf_category, image_url, price_band, input_hash)."""
    inputs = todo.select("item_id", "title", "price", "leaf_category", "image_url", "price_band")
    if conf.llm.agent(item_profile.AGENT.name).backend == "heuristic":
        output = run_agent(inputs, item_profile.AGENT, conf, ["item_id"], context).output
    else:
        # An item with neither a title nor an image gives a model nothing to read: no
        # request is sent for it (catalogs such as Taobao's ship ids only); it gets the
        # heuristic's answer (a failure with a category from the catalog or the fallback).
        describable = (F.length(F.trim(F.coalesce("title", F.lit("")))) > 0) | F.col("image_url").isNotNull()
        asked = run_agent(inputs.filter(describable), item_profile.AGENT, conf, ["item_id"], context).output
        mute = run_agent(inputs.filter(~describable), item_profile.AGENT, _heuristic_only(conf), ["item_id"],
                         context).output  # fmt: skip
        output = asked.unionByName(mute)
    profiles = _profile_columns(output)
    catalog = F.col("leaf_category")
    return (
        todo.join(profiles, "item_id")
        .withColumn(
            "category_source",
            F.when(catalog.isNotNull(), "catalog")
            .when(F.col("profile_source") == "llm", "llm")
            .otherwise(F.lit(f"rules_v{context['rules'].version}")),
        )
        # An item neither the agent nor the heuristic could profile (no title) still gets a category.
        .withColumn(
            "leaf_category", F.coalesce(catalog, F.col("agent_category"), F.lit(context["rules"].fallback))
        )
        .select(
            "item_id",
            "title",
            "image_url",
            "price",
            "price_band",
            "leaf_category",
            "category_source",
            "short_title",
            "decision_factors",
            "profile_source",
            *KEPT_META_COLUMNS,
            "profiled_at",
            "input_hash",
        )  # fmt: skip
    )


def catalog(spark: SparkSession, conf: Config, rules) -> DataFrame:
    """``bronze.items`` with ``rule_category``, ``price_band`` and ``input_hash``: the rows to profile."""
    items = tables.read(spark, conf, "bronze.items").select(
        "item_id", "title", "price", "leaf_category", "image_url"
    )
    return (
        items.withColumn(
            "rule_category", F.coalesce(category_from_text(F.col("title"), rules), F.lit(rules.fallback))
        )
        .transform(price_bands)
        .withColumn("input_hash", input_hash())
    )


def run(spark: SparkSession, conf: Config) -> dict[str, int]:
    """Profile new and changed items; returns counts (items, profiled, unchanged, failed)."""
    context = item_profile.context(conf.aggregate.category_rules)
    items = catalog(spark, conf, context["rules"])
    if tables.exists(spark, conf, PROFILES):
        known = tables.read(spark, conf, PROFILES).select(
            "item_id",
            F.col("input_hash").alias("_known"),
            # An LLM failure may succeed next time; a heuristic failure (no title) will not.
            (
                (F.col("status") == "failed") & (F.coalesce("error_class", F.lit("")) != "heuristic_error")
            ).alias("_retry"),
        )
        # New, changed, or failed last time (a later run may get an answer).
        todo = (
            items.join(known, "item_id", "left")
            .filter(F.col("_known").isNull() | (F.col("_known") != F.col("input_hash")) | F.col("_retry"))
            .drop("_known", "_retry")
        )
    else:
        todo = items
    todo = todo.drop("rule_category").persist()
    n_items, n_todo = items.count(), todo.count()
    log.info(f"items: {n_items:,} items, {n_todo:,} new or changed to profile")
    if n_todo:
        profiles = profile_items(todo, conf, context)
        tables.merge_upsert(
            profiles,
            conf,
            PROFILES,
            keys=["item_id"],
            update_when=(
                "t.input_hash <> s.input_hash "
                "OR (t.status = 'failed' AND coalesce(t.error_class, '') <> 'heuristic_error')"
            ),
            update_set={c: f"s.`{c}`" for c in profiles.columns},
        )
    todo.unpersist()
    # Failed profiles in the table (this run's and earlier ones'): LLM failures carry the
    # heuristic's profile; heuristic failures are items without a title.
    failed = (
        tables.read(spark, conf, PROFILES).filter(F.col("status") == "failed").count()
        if tables.exists(spark, conf, PROFILES)
        else 0
    )
    counts = {"items": n_items, "profiled": n_todo, "unchanged": n_items - n_todo, "failed": failed}
    log.info(
        f"items: silver.item_profiles: profiled {n_todo:,}, unchanged {n_items - n_todo:,}, "
        f"failed {failed:,} (LLM failures use the heuristic's profile; items without a title get none)",
    )
    return counts
