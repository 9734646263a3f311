"""The pipeline DAG: which tables each stage reads and writes, and so what it depends on.

``jobs/cli.py: STAGES`` gives the execution order; this module gives the graph. Stage B
depends on stage A when B reads a table that A writes (A earlier in the order). The
scheduled job definition (``databricks.yml``) has one task per stage with exactly these
dependencies; ``tests/test_dag.py`` checks both against the code.

Caches are no dependency: ``silver.text_vectors`` (embeddings) and
``silver.llm_responses`` (LLM answers) are read and appended by whichever stage embeds a
text or asks a model, and a missing entry is simply computed.
"""

from __future__ import annotations

CACHES = ("silver.text_vectors", "silver.llm_responses")

# stage -> (tables read, tables written); external inputs (raw logs, trend sources) are
# not tables and not listed.
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ingest": ((), ("bronze.events", "bronze.items", "bronze.quarantine")),
    "items": (("bronze.items",), ("silver.item_profiles",)),
    "aggregate": (
        ("bronze.events", "bronze.items", "silver.item_profiles"),
        (
            "silver.item_categories",
            "silver.user_week_category",
            "silver.user_windows",
            "silver.search_terms_weekly",
        ),
    ),
    "compress": (
        ("bronze.events", "silver.item_categories", "silver.item_profiles", "silver.user_week_category"),
        ("gold.behavior_digests",),
    ),
    "cfv": (("bronze.events", "silver.item_categories", "silver.item_profiles"), ("gold.cfv",)),
    "portrait": (
        (
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "silver.user_windows",
            "gold.behavior_digests",
        ),
        ("gold.portraits",),
    ),
    "trends": (
        ("bronze.events", "silver.item_categories", "silver.item_profiles", "silver.search_terms_weekly"),
        (
            "silver.trend_seeds",
            "gold.category_trends",
            "bronze.trend_documents",
            "bronze.trend_documents_quarantine",
            "gold.trend_queries",
        ),
    ),
    "u2q": (
        ("bronze.events", "silver.user_windows", "gold.cfv", "gold.portraits", "gold.trend_queries"),
        ("gold.user_queries",),
    ),
    "embed": (("silver.item_profiles",), ("silver.item_vectors",)),
    "index": (("silver.item_vectors",), ("gold.index_manifest",)),
    "q2i": (
        (
            "bronze.events",
            "silver.item_profiles",
            "silver.item_vectors",
            "gold.cfv",
            "gold.user_queries",
            "gold.index_manifest",
        ),
        ("gold.q2i_candidates",),
    ),
    "candidates": (
        (
            "bronze.events",
            "silver.item_categories",
            "silver.item_profiles",
            "gold.cfv",
            "gold.user_queries",
            "gold.q2i_candidates",
        ),
        ("gold.candidates", "gold.candidate_features"),
    ),
    # Retrains when the newest model is older than ranker.max_age_days (weekly by default).
    "train": (("bronze.events", "gold.candidate_features"), ("gold.ranker_models",)),
    "rank": (
        ("bronze.events", "gold.candidate_features", "gold.ranker_models"),
        ("gold.recommendations",),
    ),
    # The evaluation reruns the stages above as of its cut date in a warehouse of its own;
    # from the main warehouse it reads only the events and the catalog.
    "evaluate": (
        ("bronze.events", "bronze.items"),
        (
            "gold.evaluation",
            "gold.evaluation_users",
            "gold.evaluation_lists",
            "gold.evaluation_cuts",
            "gold.evaluation_tuning",
            "gold.evaluation_tradeoff",
        ),
    ),
}


def stage_order() -> list[str]:
    from jobs.cli import STAGES

    return [name for name, _ in STAGES]


def dependencies() -> dict[str, list[str]]:
    """stage -> the stages it depends on directly (sorted), in DAG order of the stages."""
    order = stage_order()
    missing = set(order) ^ set(STAGE_IO)
    if missing:
        raise ValueError(f"jobs/dag.py STAGE_IO and jobs/cli.py STAGES differ on: {sorted(missing)}")
    producer: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for stage in order:
        reads, writes = STAGE_IO[stage]
        out[stage] = sorted({producer[t] for t in reads if t in producer and producer[t] != stage})
        for table in writes:
            producer[table] = stage
    return out


def stage_tables(stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(reads, writes) of one stage."""
    return STAGE_IO[stage]
