"""The one contract every shard stage follows: what it reads, plans, asks and writes.

A stage turns *items* (documents, combinations, questions) into rows of one table. The flow
plans a stage's items in shards, and a shard runs as: load its inputs, process them (an LLM
batch for :class:`LLMStage`, pure rules for :class:`RuleStage`), write rows and failures.

An item is *covered* once the stage's table holds a row for it, or ``failures`` a record, for
the stage's version (prompt or rule set) and model: that one check decides what is planned,
and the coverage query is derived from the stage's ``table``, ``item_column`` and
``row_filter`` (``sql/covered_items.sql``), so a new stage cannot forget it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.prompts import Prompt, load_prompt
from synthllm.runs import Failure
from synthllm.settings import EngineSettings, SamplingSettings, Settings

if TYPE_CHECKING:
    from synthllm.plans import ShardPlan
    from synthllm.store import Store

SHARD_STAGE, GRAPH_STEP = "shard", "graph"


@dataclass(frozen=True)
class Provenance:
    """What produced a row: the prompt (or rule set) version, the model and the request's sampling params."""

    prompt_version: str
    model: str
    params_json: str

    @staticmethod
    def of(version: str, model: str, request: ChatRequest | None = None) -> "Provenance":
        if request is None:
            return Provenance(version, model, "{}")
        head, tail = _params_around_seed(request.temperature, request.top_p, request.max_tokens, request.n)
        seed = str(request.seed) if type(request.seed) is int else json.dumps(request.seed)  # JSON's text for an int
        return Provenance(version, model, f"{head}{seed}{tail}")


_SEED_MARK = "\x00seed\x00"


@lru_cache(maxsize=256)
def _params_around_seed(temperature: float, top_p: float, max_tokens: int, n: int) -> tuple[str, str]:
    """The sampling-params JSON (sorted keys) split where the per-item seed goes: one
    ``json.dumps`` per distinct sampling, not per row."""
    text = json.dumps({"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": n,
                       "seed": _SEED_MARK}, sort_keys=True)
    head, tail = text.split(json.dumps(_SEED_MARK))
    return head, tail


@dataclass(frozen=True)
class Lookup:
    """Rows of another table a stage's shard reads by key. Planning records which shards hold
    them, so the shard reads those files only (``plan.shards_of(table)``), not the whole table."""

    table: str
    key: str  # key column of ``table``
    via: str | None = None  # column of the source row holding the keys (a list or one id); None: the item id


@dataclass
class PlanState:
    """What earlier stages of this run decided, for later stages' planning."""

    doc_ids: list[str] = field(default_factory=list)  # the run's documents, budget applied
    graph: dict[str, Any] | None = None  # the concept-graph step's summary (graph_key, subsets)
    _doc_set: frozenset[str] | None = field(default=None, repr=False)

    def has_document(self, doc_id: str) -> bool:
        if self._doc_set is None:
            self._doc_set = frozenset(self.doc_ids)
        return doc_id in self._doc_set


@dataclass
class ShardInputs:
    """A shard's items, and the items that cannot be processed (recorded as failures)."""

    items: list[dict[str, Any]]
    failures: list[Failure] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)  # shard-wide lookups (e.g. topics by combination)


class Stage:
    """A stage's identity, its table and how coverage is read from it. Subclass one of the two kinds."""

    name: ClassVar[str]
    kind: ClassVar[str] = SHARD_STAGE
    table: ClassVar[str]
    item_key: ClassVar[str]  # the key of an input item (dict key in ``load``'s items)
    item_column: ClassVar[str]  # SQL expression over ``table`` giving the item id of a row
    row_filter: ClassVar[str] = "TRUE"  # which rows of ``table`` are this stage's
    after: ClassVar[tuple[str, ...]] = ()  # stages that must finish first (when enabled)
    source: ClassVar[tuple[str, str] | None] = None  # (table, key column) the items are rows of
    lookups: ClassVar[tuple[Lookup, ...]] = ()  # other tables a shard reads by key (located at planning)
    flow: ClassVar[str] = "synthesize"  # the flow whose registry walk runs it
    level: ClassVar[int | None] = None  # question stages: the level they write
    group_by: ClassVar[str | None] = None  # question stages: "doc" or "combo" (diversity groups)
    # True: runs only when an enabled stage runs after it (concepts serve level 2 and the graph)
    serves_others: ClassVar[bool] = False

    def enabled(self, settings: Settings) -> bool:
        return True

    def version(self, settings: Settings) -> str:
        raise NotImplementedError

    def model(self, store: "Store", settings: Settings) -> str:
        raise NotImplementedError

    def max_tokens(self, settings: Settings) -> int:
        """Failures recorded as ``truncated`` under a smaller budget are not covered: raising
        ``max_tokens`` re-asks exactly those items."""
        return 0

    def plan_key(self, settings: Settings) -> dict[str, Any]:
        """What makes this stage's output differ (part of shard ids)."""
        return {"version": self.version(settings)}

    def shard_size(self, settings: Settings) -> int:
        """Items per Prefect task: ``generation.shard_size`` prompts unless the stage's items cost less."""
        return settings.generation.shard_size

    def candidates(self, store: "Store", settings: Settings, state: PlanState) -> list[str]:
        """Every item the stage should cover in this run (coverage removes the done ones)."""
        raise NotImplementedError

    def streamed_items(self, store: "Store", settings: Settings, state: PlanState, upstream: "Stage",
                       shard_id: str) -> list[str] | None:
        """Items that became ready when ``upstream`` wrote its shard ``shard_id`` (read from that
        shard alone). The flow plans them at once, before ``upstream`` has finished its other
        shards, so the engines do not drain at every stage boundary; the stage's full plan still
        runs once everything it waits for has finished and catches what streaming did not.
        None: this stage waits for the whole of ``upstream``."""
        return None

    def prepare(self, store: "Store", settings: Settings, shard_ids: list[str]) -> None:
        """Write inputs beside new plans (``plans.inputs_path``) that a shard would otherwise
        gather from files spread over the whole corpus: planning reads them in one pass, each
        shard then reads one file. Default: nothing to write."""

    def load(self, store: "Store", settings: Settings, plan: "ShardPlan") -> ShardInputs:
        """A shard's inputs (``plan.item_ids``; ``fetch_source`` reads them from the plan's source shards)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


class RuleStage(Stage):
    """A stage decided by code, not a model (the question gate's rules)."""

    rules_version: ClassVar[str]

    def version(self, settings: Settings) -> str:
        return self.rules_version

    def model(self, store: "Store", settings: Settings) -> str:
        return "rules"

    def process(self, settings: Settings, inputs: ShardInputs, origin: Provenance
                ) -> tuple[list[dict[str, Any]], list[Failure]]:
        raise NotImplementedError


class LLMStage(Stage):
    """A stage that asks an LLM: one request per item, one reply turned into rows or a failure."""

    prompt_name: ClassVar[str]

    def prompt(self) -> Prompt:
        return load_prompt(self.prompt_name)

    def version(self, settings: Settings) -> str:
        return self.prompt().version

    def engine(self, settings: Settings) -> EngineSettings:
        return settings.engine

    def sampling(self, settings: Settings) -> SamplingSettings:
        return settings.generation.sampling

    def samples(self, settings: Settings) -> int:
        return 1

    def model(self, store: "Store", settings: Settings) -> str:
        from synthllm.engine_pool import model_id

        return model_id(store, self.engine(settings))

    def max_tokens(self, settings: Settings) -> int:
        return self.sampling(settings).max_tokens

    def plan_key(self, settings: Settings) -> dict[str, Any]:
        engine = self.engine(settings)
        return {"prompt": self.version(settings), "backend": engine.backend, "model": engine.model,
                "sampling": self.sampling(settings).model_dump(), "n": self.samples(settings),
                "options": self.options_key(settings)}

    def options_key(self, settings: Settings) -> Any:
        """Settings besides sampling that change this stage's requests (part of shard ids)."""
        return None

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        raise NotImplementedError

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        raise NotImplementedError

    def shard_rows(self, settings: Settings, items: list[dict[str, Any]], results: list[ChatResult],
                   origins: list[Provenance]) -> list[list[dict[str, Any]] | Failure]:
        """Rows of a whole shard's valid replies; override to batch work across items (answer checking)."""
        return [self.rows(item, result, origin, settings) for item, result, origin in zip(items, results, origins)]
