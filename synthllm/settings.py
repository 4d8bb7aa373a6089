"""Every setting and every default, in one place.

Precedence (highest first): explicit overrides (CLI flags, flow parameters), environment
variables (``SYNTHLLM_<SECTION>__<FIELD>``), the config file (YAML or TOML), these defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = "./synthllm-data"
EMBEDDED_MODEL = "smollm2-135m-instruct"
# Default ``filter.syllabus``: school to early-undergraduate mathematics.
MATHEMATICS_SYLLABUS = (
    "fractions, decimals and percentages", "ratios, rates and proportional reasoning",
    "integers, primes and divisibility", "exponents, roots and scientific notation",
    "linear equations and inequalities", "systems of linear equations", "quadratic equations and factoring",
    "polynomials and rational expressions", "functions and their graphs", "exponential and logarithmic functions",
    "sequences and series", "plane geometry: angles, triangles and polygons", "circles: arcs, chords and tangents",
    "area, surface area and volume", "coordinate geometry", "trigonometry and trigonometric identities",
    "vectors", "complex numbers", "counting, permutations and combinations", "probability",
    "descriptive statistics", "limits and continuity", "derivatives and their applications",
    "integrals and their applications", "differential equations", "matrices and determinants",
    "linear algebra: vector spaces and linear maps", "number theory: congruences and modular arithmetic",
    "mathematical induction and proof", "sets, logic and relations",
)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each dotted field at fault."""


def _allows_bool(annotation: Any) -> bool:
    return annotation is bool or any(_allows_bool(arg) for arg in typing.get_args(annotation))


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list | tuple) and any(_holds_bool(v) for v in value))


class _Section(BaseModel):
    """A settings section: unknown keys are errors, and ``true`` is not a number (pydantic would
    turn ``max_documents: true`` into 1)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        if _holds_bool(value) and not _allows_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected {cls.model_fields[info.field_name].annotation}, not a boolean")
        return value


# What DuckDB's memory_limit accepts: bytes with a decimal or binary unit, or a percentage.
_MEMORY_AMOUNT = re.compile(r"\d+(\.\d+)?\s*(%|b|bytes|[kmgt]i?b)", re.IGNORECASE)


class StoreSettings(_Section):
    """Where every table, cache and report lives: a local folder or ``s3://bucket/prefix``."""

    url: str = DEFAULT_STORE
    # S3: credentials come from the usual AWS variables / profiles; only the endpoint is ours.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # The DuckDB database each process queries the store in: how much memory it may hold before
    # it spills to disk ("4GB", "512MiB", "50%" of the machine), and where it spills. Unset: in a
    # Dask worker with a memory limit, half that limit (the nanny restarts a worker past 95 % of
    # it); elsewhere DuckDB's own 80 % of the machine. Spills go to ``<system temp>/synthllm-duckdb``
    # (TMPDIR), not to a ``.tmp`` folder in the working directory, which may be read-only.
    duckdb_memory_limit: str | None = None
    duckdb_temp_dir: str | None = None

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_amount(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY_AMOUNT.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not an amount of memory: a number with a unit (4GB, 512MiB) or "
                             "a share of the machine's memory (50%)")
        return value

    def client_kwargs(self) -> dict[str, str]:
        """botocore client arguments for s3fs: the one place the endpoint and region are read."""
        kwargs = {"endpoint_url": self.s3_endpoint_url, "region_name": self.s3_region}
        return {key: value for key, value in kwargs.items() if value}


class EngineSettings(_Section):
    """One LLM engine. Stages never see which backend runs."""

    # standin: instant filler replies, for benchmarks and dry runs (synthllm/engines/standin.py)
    backend: Literal["llamacpp", "openai", "vllm", "standin"] = "llamacpp"
    model: str = EMBEDDED_MODEL
    # openai backend
    base_url: str | list[str] | None = None
    # Read from the environment, never from flow parameters, so it stays out of logs and tables.
    api_key: SecretStr = Field(default_factory=lambda: SecretStr(os.environ.get("OPENAI_API_KEY", "EMPTY")))
    max_concurrency: int = Field(64, ge=1)  # openai: requests in flight per base_url replica, per process
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
    # ... or after this many seconds, whichever comes first: a kill loses at most this tail
    cache_flush_interval_s: float = Field(2.0, gt=0)


class SamplingSettings(_Section):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0


class IngestSettings(_Section):
    id_field: str = "id"
    text_field: str = "text"
    shard_size: int = Field(10_000, ge=1)
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(1_000_000, ge=1)
    # NFC, not NFKC: NFKC folds superscripts (x² -> x2) and changes mathematics.
    unicode_form: Literal["NFC", "NFKC"] = "NFC"


class FilterSettings(_Section):
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
    # Subtopics the cold-start writer is told to cover, one sampled per example (seeded by
    # ``seed``): without them a small model writes the same few topics over and over.
    syllabus: list[str] = Field(default_factory=lambda: list(MATHEMATICS_SYLLABUS), min_length=1)
    seed: int = 0


class GenerationSettings(_Section):
    """Stage 2: questions of three levels and the concept graph."""

    levels: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    max_documents: int | None = Field(None, ge=1)  # budget: documents used for L1/L2/concepts
    max_combinations: int | None = Field(None, ge=1)  # budget: L3 combinations
    shard_size: int = Field(2000, ge=1)  # prompts per Prefect task
    doc_chars: int = Field(3000, ge=200)  # document excerpt given to the model
    # Upper bounds, applied to the output schema (grammar) as well as the instructions.
    l1_max_questions: int = Field(5, ge=1, le=5)
    l2_max_questions: int = Field(5, ge=1, le=5)
    l3_max_questions: int = Field(3, ge=1, le=3)
    max_topics: int = Field(5, ge=1, le=5)
    max_concepts_per_topic: int = Field(20, ge=1, le=20)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)


class GraphSettings(_Section):
    epsilon: float = Field(1e-3, gt=0)
    temperature: float = Field(1.0, gt=0)
    epochs: int = Field(5, ge=1)
    subset_size: int = Field(200_000, ge=1)
    topic_steps: tuple[int, int] = (1, 2)
    kc_steps: tuple[int, int] = (3, 4)
    references: int = Field(2, ge=1)
    seed: int = 0


class AnswerSettings(_Section):
    engine: EngineSettings | None = None  # None: the generation engine
    self_consistency: int = Field(1, ge=1)  # k samples, majority vote
    # Answers whose confidence (agreeing samples / samples asked) is below this are rejected.
    min_agreement: float = Field(0.0, ge=0, le=1)
    # math-verify equivalence runs in worker processes; a comparison past the limit counts as
    # "not equal" and its worker is killed and replaced.
    verify_timeout_s: float = Field(5.0, gt=0)
    verify_workers: int = Field(2, ge=1)
    sampling: SamplingSettings = Field(default_factory=lambda: SamplingSettings(max_tokens=768))


class GateSettings(_Section):
    """The question gate: rule checks on every question, then an optional LLM judge."""

    enabled: bool = True
    min_chars: int = Field(15, ge=1)
    max_chars: int = Field(3000, ge=1)
    max_repeats: int = Field(3, ge=1)  # a run of tokens may repeat this often back to back
    min_concepts: int = Field(2, ge=1)  # known concepts a level-2/3 question must use
    min_topics: int = Field(2, ge=1)  # distinct topics among a level-3 question's concepts
    # questions per rule-check task: the rules cost ~16 µs a question, a Prefect task ~70 ms of CPU
    shard_size: int = Field(20_000, ge=1)
    judge_enabled: bool = False
    judge_threshold: float = Field(6.0, ge=1, le=10)  # judge scores 1-10; below: dropped
    judge_sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(temperature=0.0, max_tokens=160)
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "GateSettings":
        if self.min_chars > self.max_chars:
            raise ValueError(f"gate.min_chars ({self.min_chars}) exceeds gate.max_chars ({self.max_chars})")
        return self


class CurationSettings(_Section):
    ngram: int = Field(13, ge=3)
    minhash_threshold: float = Field(0.8, gt=0, le=1)
    minhash_num_perm: int = Field(128, ge=16)
    minhash_shingle: int = Field(5, ge=1)
    # The paper's six evaluation sets where their licences let them ship (synthllm/data/benchmarks/README.md):
    # add Minerva Math (CC BY-NC-SA) and the rest of CollegeMath as file paths.
    benchmarks: list[str] = Field(
        default_factory=lambda: [
            "builtin:gsm8k", "builtin:math", "builtin:olympiadbench", "builtin:college_math", "builtin:gaokao2023en",
        ]
    )
    embedding_batch_size: int = Field(256, ge=1)
    similar_threshold: float = Field(0.8, ge=0, le=1)
    # diversity report: embed at most this many same-source groups per level (None: all)
    diversity_max_groups: int | None = Field(2000, ge=1)


class OrchestrationSettings(_Section):
    task_runner: Literal["thread", "dask", "ray"] = "thread"
    task_workers: int = Field(2, ge=1)
    ray_address: str | None = None
    # A running Dask scheduler (tcp://host:8786) for task_runner=dask, e.g. `dask scheduler` with
    # `dask worker` on the GPU or client nodes; None: a temporary local cluster of task_workers processes.
    dask_address: str | None = None
    # Name of a Prefect global concurrency limit held by every engine shard (create it with
    # `prefect gcl create gpu --limit <GPUs>`); None: no limit (laptop, ephemeral API).
    gpu_concurrency_limit: str | None = None
    # Tag shard tasks with their engine kind (gpu / cpu / server) for tag-based concurrency limits.
    # Off by default: Prefect looks up tag limits for every tagged task run (a round trip each).
    tag_tasks: bool = False
    # Store-level leases: one run at a time works on a stage of a store; a second run waits this
    # long for it (then finds the work done), else stops naming the holder.
    lease_wait_s: float = Field(900.0, ge=0)
    lease_ttl_s: float = Field(60.0, gt=0)  # renewed every third of it; a killed run's lease lapses
    # A shard whose failed items exceed this share logs a warning with the top reasons.
    warn_failure_share: float = Field(0.2, ge=0, le=1)
    task_retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


class ScalingSettings(_Section):
    """Scaling-law fits (``synthllm scaling fit``, ``scaling_fit_flow``); see docs/scaling.md."""

    # The one declaration of the scaling options: the CLI and the flow take theirs from these
    # fields and descriptions (synthllm.scaling.options).
    series_col: str = Field("series", description="Column naming the series (one curve each).")
    tokens_col: str = Field("tokens", description="Column with training tokens D.")
    metric_col: str = Field("metric", description="Column with the metric L.")
    metric_kind: Literal["error", "accuracy", "loss"] = Field(
        "error", description="error | accuracy | loss. Accuracy is turned into error; >1 means percent.")
    tokens_per_unit: float = Field(
        1.0, gt=0, description="Multiply the tokens column by this (e.g. 600 when it counts examples).")
    holdout: int = Field(1, ge=0, description="Largest token counts held out to validate (0: none).")
    budgets: list[float] = Field(
        default_factory=list, description="Token budgets to predict at (none: 10x, 100x, 1000x the largest D).")
    plateau_gain: float | None = Field(
        None, gt=0, description="Report the tokens where a doubling gains less than this (metric units).")
    within: float | None = Field(
        None, gt=0, description="Report the tokens to get within this of the asymptote E (metric units).")
    n_bootstrap: int = Field(200, ge=0, description="Bootstrap refits for the intervals (0: none).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Interval confidence level.")
    seed: int = Field(0, description="Bootstrap seed.")


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
    gate: GateSettings = Field(default_factory=GateSettings)
    curation: CurationSettings = Field(default_factory=CurationSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)

    @model_validator(mode="after")
    def _levels_known(self) -> "Settings":
        from synthllm.stages.registry import question_levels  # the registry imports settings

        known = sorted(question_levels())
        unknown = set(self.generation.levels) - set(known)
        if unknown:
            raise ValueError(f"generation.levels: unknown levels {sorted(unknown)} (question stages write {known})")
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
    gate: dict[str, Any] | None = None
    curation: dict[str, Any] | None = None
    orchestration: dict[str, Any] | None = None
    scaling: dict[str, Any] | None = None


def load_settings(
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    store: str | None = None,
) -> Settings:
    """Defaults < config file < environment < overrides (dotted keys allowed) < ``store``.

    An override of None sets the value to None (``generation.max_documents: null`` lifts a config
    file's limit); flows drop their own empty parameters first (:func:`given_options`)."""
    data: dict[str, Any] = read_config_file(config) if config else {}
    env_layer = {k: v for k, v in _EnvOnly().model_dump().items() if v is not None}
    data = _deep_merge(data, env_layer)
    for key, value in (overrides or {}).items():
        if "." in key:
            _set_dotted(data, key, value)
        else:
            data = _deep_merge(data, {key: value}) if isinstance(value, dict) else {**data, key: value}
    if store:
        _set_dotted(data, "store.url", store)
    _reject_unknown_env_sections()
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


ENV_PREFIX = "SYNTHLLM_"


def _reject_unknown_env_sections() -> None:
    """``SYNTHLLM_<SECTION>__<FIELD>`` with a section that does not exist is a typo, not a no-op
    (variables without ``__``, such as SYNTHLLM_MODELS_DIR, are not settings)."""
    sections = list(Settings.model_fields)
    for variable in os.environ:
        if not variable.upper().startswith(ENV_PREFIX) or "__" not in variable:
            continue
        section = variable[len(ENV_PREFIX):].split("__", 1)[0].lower()
        if section not in sections:
            raise SettingsError(f"environment variable {variable}: unknown settings section {section!r}"
                                f"{_suggestion(section, sections)}")


def _suggestion(name: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; known: {', '.join(known)}"


def _model_at(path: list[str]) -> type[BaseModel] | None:
    """The settings model a dotted path leads to (through ``X | None`` annotations)."""
    model: type[BaseModel] | None = Settings
    for part in path:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _env_origin(path: list[str]) -> str:
    variable = ENV_PREFIX + "__".join(path).upper()
    return f" (from environment variable {variable})" if variable in {v.upper() for v in os.environ} else ""


def describe_errors(exc: ValidationError) -> str:
    """One line per error, each naming the dotted setting; unknown keys get the closest known name."""
    lines = []
    for error in exc.errors():
        path = [str(part) for part in error["loc"]]
        dotted = ".".join(path)
        if error["type"] == "extra_forbidden":
            model = _model_at(path[:-1])
            known = list(model.model_fields) if model else []
            parent = ".".join(path[:-1])
            hint = _suggestion(path[-1], known, f"{parent}." if parent else "") if known else ""
            lines.append(f"{dotted}: unknown setting{hint}{_env_origin(path)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if not dotted:  # a check across sections names its fields itself
            lines.append(message)
            continue
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        lines.append(f"{dotted}: {message} (got {shown}){_env_origin(path)}")
    return "invalid settings:\n  " + "\n  ".join(lines)


# Secret settings: never flow parameters, rows, logs or artifacts. They reach tasks through the
# process environment (inherited by Dask/Ray worker processes started by the run).
SECRET_ENV = {"engine.api_key": "SYNTHLLM_ENGINE__API_KEY", "answer.engine.api_key": "SYNTHLLM_ANSWER__ENGINE__API_KEY"}


def split_secrets(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``overrides`` without secret keys, and the secrets by environment variable name."""
    clean = {k: v for k, v in overrides.items() if k not in SECRET_ENV}
    return clean, {SECRET_ENV[k]: str(v) for k, v in overrides.items() if k in SECRET_ENV and v is not None}


def reject_secret_overrides(overrides: dict[str, Any] | None) -> None:
    """Flow parameters are stored by Prefect in plain text: a secret there would leak."""
    leaked = sorted(set(overrides or {}) & set(SECRET_ENV))
    if leaked:
        raise ValueError(f"{', '.join(leaked)} must not be a flow parameter (Prefect stores parameters in plain "
                         f"text): set {SECRET_ENV[leaked[0]]} or OPENAI_API_KEY in the worker's environment, or put "
                         "it in the config file")


def export_secrets(settings: Settings) -> None:
    """Put keys that came from the config file or ``--set`` into this process's environment, so
    tasks rebuilding settings from a payload (threads, or worker processes this run starts) get them."""
    engines = {"engine.api_key": settings.engine, "answer.engine.api_key": settings.answer.engine}
    for dotted, engine in engines.items():
        if engine is not None and engine.api_key.get_secret_value() not in ("", "EMPTY"):
            os.environ[SECRET_ENV[dotted]] = engine.api_key.get_secret_value()


def given_options(options: dict[str, Any]) -> dict[str, Any]:
    """A flow's own parameters as overrides: one left empty (None) keeps the settings' value."""
    return {key: value for key, value in options.items() if value is not None}


def resolve_settings(config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                     store: str | None = None, resolved: dict[str, Any] | None = None) -> Settings:
    """A run's settings, resolved once: from ``resolved`` (a parent run's payload, handed down to
    its sub-flows) or from defaults < config file < environment < overrides < ``store``."""
    if resolved is not None:
        return settings_from_payload(resolved)
    reject_secret_overrides(overrides)
    settings = load_settings(config, overrides, store)
    export_secrets(settings)
    return settings


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON for task parameters and cache keys; secrets are left out."""
    data = settings.model_dump(mode="json", exclude={"engine": {"api_key"}})
    if data["answer"].get("engine"):
        data["answer"]["engine"].pop("api_key", None)
    return data


def settings_payload_text(settings: Settings) -> str:
    """The payload as JSON text, what flows hand their shard tasks: a nested dict is walked for
    futures by Prefect, and hashed and pickled by Dask, on every submit (``bench/submit_cost.py``)."""
    return json.dumps(settings_payload(settings))


def settings_from_payload(payload: dict[str, Any] | str) -> Settings:
    """Rebuild settings inside a task (from the payload or its JSON text); secrets come back from
    the worker's environment."""
    settings = Settings.model_validate_json(payload) if isinstance(payload, str) else Settings.model_validate(payload)
    for dotted, variable in SECRET_ENV.items():
        engine = settings.engine if dotted == "engine.api_key" else settings.answer.engine
        if engine is not None and os.environ.get(variable):
            engine.api_key = SecretStr(os.environ[variable])
    return settings
