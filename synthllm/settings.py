"""Every setting and every default, in one place.

Precedence (highest first): explicit overrides (CLI flags, flow parameters), environment
variables (``SYNTHLLM_<SECTION>__<FIELD>``), the config file (YAML or TOML), these defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = "./synthllm-data"
EMBEDDED_MODEL = "smollm2-135m-instruct"


class StoreSettings(BaseModel):
    """Where every table, cache and report lives: a local folder or ``s3://bucket/prefix``."""

    url: str = DEFAULT_STORE
    # S3: credentials come from the usual AWS variables / profiles; only the endpoint is ours.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None


class EngineSettings(BaseModel):
    """One LLM engine. Stages never see which backend runs."""

    backend: Literal["llamacpp", "openai", "vllm"] = "llamacpp"
    model: str = EMBEDDED_MODEL
    # openai backend
    base_url: str | list[str] | None = None
    # Read from the environment, never from flow parameters, so it stays out of logs and tables.
    api_key: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("OPENAI_API_KEY", "EMPTY")))
    max_concurrency: int = Field(64, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    max_http_retries: int = Field(5, ge=0)
    http_backoff_s: float = Field(0.5, gt=0)  # first retry delay; doubles per retry, with jitter
    # how schema output is asked for: "json_schema" (OpenAI, vLLM, llama.cpp's llama-server) or
    # "json_object" with a "schema" key (llama-cpp-python's server)
    json_response_format: Literal["json_schema", "json_object"] = "json_schema"
    # llamacpp backend
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = None
    # vllm backend (passed to vllm.LLM)
    max_model_len: int | None = None
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    # structured output: retries with a new seed on invalid / truncated output
    max_parse_retries: int = Field(2, ge=0)
    # response cache flush interval (completions per cache part written to the store)
    cache_flush_every: int = Field(64, ge=1)


class SamplingSettings(BaseModel):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0


class IngestSettings(BaseModel):
    id_field: str = "id"
    text_field: str = "text"
    shard_size: int = Field(10_000, ge=1)
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(1_000_000, ge=1)
    # NFC, not NFKC: NFKC folds superscripts (x² -> x2) and changes mathematics.
    unicode_form: Literal["NFC", "NFKC"] = "NFC"


class FilterSettings(BaseModel):
    """Stage 1: reference-document filtering (LLM rater + cheap classifier)."""

    enabled: bool = True
    domain: str = "mathematics"
    rounds: int = Field(2, ge=0)
    rate_sample_size: int = Field(64, ge=2)
    cold_start_positives: int = Field(8, ge=0)
    threshold: float = Field(6.5, ge=1, le=10)
    rater_chars: int = Field(2000, ge=100)  # document prefix the rater and the classifier see
    rate_shard_size: int = Field(2000, ge=1)  # documents rated per Prefect task
    rater_sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(temperature=0.0, max_tokens=96)
    )
    writer_sampling: SamplingSettings = Field(  # cold-start example documents
        default_factory=lambda: SamplingSettings(temperature=1.0, max_tokens=768)
    )
    seed: int = 0


class GenerationSettings(BaseModel):
    """Stage 2: questions of three levels and the concept graph."""

    levels: list[int] = Field(default_factory=lambda: [1, 2, 3])
    max_documents: int | None = None  # budget: documents used for L1/L2/concepts
    max_combinations: int | None = None  # budget: L3 combinations
    shard_size: int = Field(2000, ge=1)  # prompts per Prefect task
    doc_chars: int = Field(3000, ge=200)  # document excerpt given to the model
    # Upper bounds, applied to the output schema (grammar) as well as the instructions.
    l1_max_questions: int = Field(5, ge=1, le=5)
    l2_max_questions: int = Field(5, ge=1, le=5)
    l3_max_questions: int = Field(3, ge=1, le=3)
    max_topics: int = Field(5, ge=1, le=5)
    max_concepts_per_topic: int = Field(20, ge=1, le=20)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)


class GraphSettings(BaseModel):
    epsilon: float = Field(1e-3, gt=0)
    temperature: float = Field(1.0, gt=0)
    epochs: int = Field(5, ge=1)
    subset_size: int = Field(200_000, ge=1)
    topic_steps: tuple[int, int] = (1, 2)
    kc_steps: tuple[int, int] = (3, 4)
    references: int = Field(2, ge=1)
    seed: int = 0


class AnswerSettings(BaseModel):
    engine: EngineSettings | None = None  # None: the generation engine
    self_consistency: int = Field(1, ge=1)  # k samples, majority vote
    min_agreement: float = Field(0.0, ge=0, le=1)
    sampling: SamplingSettings = Field(default_factory=lambda: SamplingSettings(max_tokens=768))


class CurationSettings(BaseModel):
    ngram: int = Field(13, ge=3)
    minhash_threshold: float = Field(0.8, gt=0, le=1)
    minhash_num_perm: int = Field(128, ge=16)
    minhash_shingle: int = Field(5, ge=1)
    benchmarks: list[str] = Field(default_factory=lambda: ["builtin:gsm8k", "builtin:math"])
    embedding_batch_size: int = Field(256, ge=1)
    similar_threshold: float = Field(0.8, ge=0, le=1)
    # diversity report: embed at most this many same-source groups per level (None: all)
    diversity_max_groups: int | None = Field(2000, ge=1)


class OrchestrationSettings(BaseModel):
    task_runner: Literal["thread", "dask", "ray"] = "thread"
    task_workers: int = Field(2, ge=1)
    ray_address: str | None = None
    # Name of a Prefect global concurrency limit held by every engine shard (create it with
    # `prefect gcl create gpu --limit <GPUs>`); None: no limit (laptop, ephemeral API).
    gpu_concurrency_limit: str | None = None
    task_retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


class ScalingSettings(BaseModel):
    """Scaling-law fits (``synthllm scaling fit``, ``scaling_fit_flow``); see docs/scaling.md."""

    series_col: str = "series"
    tokens_col: str = "tokens"
    metric_col: str = "metric"
    metric_kind: Literal["error", "accuracy", "loss"] = "error"  # accuracy is turned into error
    tokens_per_unit: float = Field(1.0, gt=0)  # e.g. 600 when the tokens column counts examples
    holdout: int = Field(1, ge=0)  # largest token counts held out to validate the fit
    budgets: list[float] = Field(default_factory=list)  # empty: 10x, 100x, 1000x the largest D
    plateau_gain: float | None = Field(None, gt=0)  # metric units gained per doubling of D
    within: float | None = Field(None, gt=0)  # metric units above the asymptote E
    n_bootstrap: int = Field(200, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class Settings(BaseModel):
    """The whole configuration. Build it with :func:`load_settings`."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    store: StoreSettings = Field(default_factory=StoreSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    curation: CurationSettings = Field(default_factory=CurationSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)

    @model_validator(mode="after")
    def _levels_known(self) -> "Settings":
        unknown = set(self.generation.levels) - {1, 2, 3}
        if unknown:
            raise ValueError(f"generation.levels: unknown levels {sorted(unknown)} (use 1, 2, 3)")
        return self

    @property
    def answer_engine(self) -> EngineSettings:
        return self.answer.engine or self.engine



def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or TOML config file into a plain dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        data = tomllib.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


class _EnvOnly(BaseSettings):
    """The environment layer alone, so it can sit between the config file and overrides."""

    model_config = SettingsConfigDict(env_prefix="SYNTHLLM_", env_nested_delimiter="__", extra="ignore")
    store: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    ingest: dict[str, Any] | None = None
    filter: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    graph: dict[str, Any] | None = None
    answer: dict[str, Any] | None = None
    curation: dict[str, Any] | None = None
    orchestration: dict[str, Any] | None = None
    scaling: dict[str, Any] | None = None


def load_settings(
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    store: str | None = None,
) -> Settings:
    """Defaults < config file < environment < overrides (dotted keys allowed) < ``store``."""
    data: dict[str, Any] = read_config_file(config) if config else {}
    env_layer = {k: v for k, v in _EnvOnly().model_dump().items() if v is not None}
    data = _deep_merge(data, env_layer)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if "." in key:
            _set_dotted(data, key, value)
        else:
            data = _deep_merge(data, {key: value}) if isinstance(value, dict) else {**data, key: value}
    if store:
        _set_dotted(data, "store.url", store)
    return Settings.model_validate(data)


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON for task parameters and cache keys; secrets are left out."""
    data = settings.model_dump(mode="json", exclude={"engine": {"api_key"}})
    if data["answer"].get("engine"):
        data["answer"]["engine"].pop("api_key", None)
    return data


def settings_from_payload(payload: dict[str, Any]) -> Settings:
    """Rebuild settings inside a task; secrets come back from the worker's environment."""
    return Settings.model_validate(payload)
