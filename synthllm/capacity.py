"""Capacity planning: what a run costs in LLM requests, tokens, GPU-hours and coordinator CPU.

``synthllm plan`` answers "how long on G GPUs, and how many coordinator processes keep them fed"
before a run is started. The model is plain arithmetic over the settings (questions per document
per level, self-consistency k, document excerpt length, max_tokens) and :class:`PlanAssumptions`,
the numbers neither the settings nor the paper fix. A store with ``llm_usage`` rows replaces the
modelled tokens per request by measured ones; its ``documents`` table replaces the assumed
document length. See docs/capacity.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from synthllm.prompts import load_prompt
from synthllm.resources import read_sql
from synthllm.settings import Settings
from synthllm.store import Store

# The paper's run (Qin et al. 2025): reference documents and QA pairs per level. Its rounded
# 2.3M + 2.6M + 2.6M sum to 7.5M, not its 7.4M total: scaled by 7.4 / 7.5 each still rounds to them.
PAPER_DOCUMENTS = 520_000
PAPER_QA_PAIRS = 7_400_000
PAPER_QUESTIONS = {level: n * PAPER_QA_PAIRS / 7_500_000 for level, n in {1: 2.3e6, 2: 2.6e6, 3: 2.6e6}.items()}
# The paper's generation settings, applied by ``--profile paper`` under the user's --set values.
PAPER_OVERRIDES: dict[str, Any] = {
    "generation.levels": [1, 2, 3],
    "generation.l1_max_questions": 5,
    "generation.l2_max_questions": 5,
    "generation.l3_max_questions": 3,
    "generation.max_topics": 5,
    "generation.max_concepts_per_topic": 20,
    "graph.epochs": 5,
    "answer.self_consistency": 1,
}
# Stage names as the llm_usage table records them, and their prompt files.
def stage_prompt(stage: str) -> str:
    """The prompt a stage sends, from the stage registry (the cold-start writer is not a shard stage)."""
    from synthllm.filtering import WRITE_PROMPT
    from synthllm.stages.registry import stage as registered

    return WRITE_PROMPT if stage == "cold_start" else registered(stage).prompt_name


LEVEL_STAGES = {1: "level1", 2: "level2", 3: "level3"}
ANSWER_STAGE = "answer"
_L3_FILL = 0.9
# Coordinator capacity is sized for the busiest stage lasting this long; a shorter burst (128
# ratings) just queues for a moment.
SUSTAINED_S = 60.0


class PlanError(ValueError):
    """A plan input (option, setting or store) that cannot give a meaningful plan."""


@dataclass(frozen=True)
class PlanAssumptions:
    """Numbers the settings do not fix; the defaults reproduce the paper's run.

    Yields (questions actually written per request, as a share of the configured maximum):
      l1_fill: 2.27M L1 / 520K documents / 5 = 0.87 (the "not suitable" gate and short documents).
      l2_fill: 2.57M L2 / 520K / 5 = 0.99.
      l3_fill: 0.9 of ``l3_max_questions`` per combination (ours: the paper gives no combination count).
      topics_per_document: distinct graph topics per document; a walk starts once per topic per
        epoch, so L3 combinations = documents x this x epochs. 0.365 gives 2.57M L3 questions at
        0.9 x 3 per combination and 5 epochs; it matches the paper's ~32K topics per subset if a
        subset held ~87K documents (6 subsets).
    Lengths, in tokens (the paper's medians, used as means; the paper's 4.5B dataset tokens say
    the means are ~14 % higher: 608 against 531 tokens per QA pair):
      question_tokens / answer_tokens: by level 1, 2, 3.
    Reply and prompt shape (ours, from the prompt files' formats):
      chars_per_token: ~4 for English and LaTeX with a Llama/Qwen tokenizer.
      document_chars: mean reference document length before the excerpt cut (a store replaces it).
      reply_topics, concepts_per_topic: a concept reply's size (paper: 1-5 topics, 5-20 KCs each).
      concept_tokens: one topic or key concept (2-6 words).
      concepts_per_question: KCs an L2/L3 question reports using (paper: 2-3).
      walk_nodes: topics + KCs of one L3 combination (1-2 + 1 topic steps, 3-4 KC steps).
      json_item_tokens / json_object_tokens: quotes, commas, keys around a string / an object.
      reply_header_tokens: the reply's fixed keys; l1_tag_tokens: L1's type and school level.
      chat_overhead_tokens: the chat template's role markers per request.
      rating_reply_tokens / example_document_tokens: a rater reply / a cold-start document.
      judge_reply_tokens: an LLM judge's score and reason (``gate.judge_enabled``).
      gate_kept_share: questions the question gate (rules, judge) keeps for answering; the
        paper had no gate, so its QA pairs are all generated questions.
    """

    l1_fill: float = PAPER_QUESTIONS[1] / PAPER_DOCUMENTS / 5
    l2_fill: float = PAPER_QUESTIONS[2] / PAPER_DOCUMENTS / 5
    l3_fill: float = _L3_FILL
    topics_per_document: float = PAPER_QUESTIONS[3] / (_L3_FILL * 3 * 5) / PAPER_DOCUMENTS
    question_tokens: tuple[float, float, float] = (32, 66, 80)
    answer_tokens: tuple[float, float, float] = (358, 497, 545)
    chars_per_token: float = 4.0
    document_chars: float = 5000
    reply_topics: float = 3
    concepts_per_topic: float = 10
    concept_tokens: float = 5
    concepts_per_question: float = 2.5
    walk_nodes: float = 7
    json_item_tokens: float = 3
    json_object_tokens: float = 8
    reply_header_tokens: float = 12
    l1_tag_tokens: float = 12
    chat_overhead_tokens: float = 10
    rating_reply_tokens: float = 30
    example_document_tokens: float = 600
    judge_reply_tokens: float = 40
    gate_kept_share: float = 1.0


@dataclass(frozen=True)
class Throughput:
    """One GPU's sustained serving rate; a stage's GPU time is the slower of tokens and requests.

    ``answer_completion_tokens_per_s``: the answer model's rate when it differs (the paper answered
    with a 72B model). ``utilisation``: the share of wall time the GPUs are busy.
    """

    completion_tokens_per_s: float = 6000
    prompt_tokens_per_s: float = 60_000
    requests_per_s: float | None = None
    answer_completion_tokens_per_s: float | None = None
    utilisation: float = 0.9

    def __post_init__(self) -> None:
        rates = {"--gpu-tokens-per-s": self.completion_tokens_per_s,
                 "--gpu-prompt-tokens-per-s": self.prompt_tokens_per_s, "--gpu-requests-per-s": self.requests_per_s,
                 "--answer-gpu-tokens-per-s": self.answer_completion_tokens_per_s}
        for option, rate in rates.items():
            if rate is not None and rate <= 0:
                raise PlanError(f"{option} must be > 0, got {rate}")
        if not 0 < self.utilisation <= 1:
            raise PlanError(f"--utilisation must be in (0, 1], got {self.utilisation}")

    def gpu_seconds(self, stage: StageLoad) -> float:
        decode = self.answer_completion_tokens_per_s if stage.stage == ANSWER_STAGE else None
        seconds = stage.completion_tokens / (decode or self.completion_tokens_per_s)
        seconds += stage.prompt_tokens / self.prompt_tokens_per_s
        if self.requests_per_s:
            seconds = max(seconds, stage.requests / self.requests_per_s)
        return seconds


@dataclass(frozen=True)
class Calibration:
    """Measured inputs from a store: tokens per engine call by stage, mean excerpt chars by cut."""

    tokens_per_call: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (prompt, completion)
    excerpt_chars: dict[int, float] = field(default_factory=dict)  # excerpt limit -> mean chars


@dataclass(frozen=True)
class StageLoad:
    """One stage's totals; ``source`` says whether tokens are modelled or measured in the store."""

    stage: str
    requests: float
    prompt_tokens: float
    completion_tokens: float
    source: str = "model"


@dataclass(frozen=True)
class LevelYield:
    """Questions generated at one level and the QA pairs left after the question gate."""

    level: int
    questions: float
    qa_pairs: float
    question_tokens: float
    answer_tokens: float


@dataclass(frozen=True)
class Workload:
    documents: int
    stages: list[StageLoad]
    levels: list[LevelYield]
    warnings: list[str]


def template_tokens(stage: str, settings: Settings, a: PlanAssumptions) -> float:
    """Tokens of a stage's prompt file's fixed text: every placeholder but the domain rendered empty."""
    prompt = load_prompt(stage_prompt(stage))
    values = {name: "" for name in prompt.placeholders} | {"domain": settings.filter.domain}
    chars = sum(len(m["content"]) for m in prompt.render(**values))
    return chars / a.chars_per_token + a.chat_overhead_tokens


def _excerpt_tokens(limit: int, a: PlanAssumptions, calibration: Calibration) -> float:
    chars = calibration.excerpt_chars.get(limit, min(a.document_chars, limit))
    return chars / a.chars_per_token


def questions_per_request(settings: Settings, a: PlanAssumptions) -> dict[int, float]:
    gen = settings.generation
    return {1: a.l1_fill * gen.l1_max_questions, 2: a.l2_fill * gen.l2_max_questions,
            3: a.l3_fill * gen.l3_max_questions}


def level3_combinations(documents: int, settings: Settings, a: PlanAssumptions) -> float:
    combinations = documents * a.topics_per_document * settings.graph.epochs
    cap = settings.generation.max_combinations
    return min(combinations, cap) if cap is not None else combinations


def workload(documents: int, settings: Settings, a: PlanAssumptions = PlanAssumptions(),
             calibration: Calibration = Calibration()) -> Workload:
    """Requests and tokens per stage for ``documents`` reference documents under ``settings``."""
    if documents < 0:
        raise PlanError(f"documents must be >= 0, got {documents}")
    gen, k = settings.generation, settings.answer.self_consistency
    docs = min(documents, gen.max_documents) if gen.max_documents is not None else documents
    levels = set(gen.levels)
    per_request = questions_per_request(settings, a)
    item = a.concept_tokens + a.json_item_tokens
    excerpt = _excerpt_tokens(gen.doc_chars, a, calibration)
    topics = min(a.reply_topics, gen.max_topics)
    kcs = topics * min(a.concepts_per_topic, gen.max_concepts_per_topic)

    def reply(level: int) -> float:
        extra = a.l1_tag_tokens if level == 1 else a.concepts_per_question * item
        per_question = a.question_tokens[level - 1] + a.json_object_tokens + extra
        return a.reply_header_tokens + per_request[level] * per_question

    # stage -> (requests, prompt tokens per request, completion tokens per request, max_tokens x n)
    shapes: dict[str, tuple[float, float, float, int]] = {}
    cap = gen.sampling.max_tokens
    if settings.filter.enabled:
        fs = settings.filter
        shapes["cold_start"] = (fs.cold_start_positives, template_tokens("cold_start", settings, a),
                                a.example_document_tokens, fs.writer_sampling.max_tokens)
        shapes["rate"] = (fs.rounds * fs.rate_sample_size, template_tokens("rate", settings, a)
                          + _excerpt_tokens(fs.rater_chars, a, calibration), a.rating_reply_tokens,
                          fs.rater_sampling.max_tokens)
    if levels & {2, 3}:
        shapes["concepts"] = (docs, template_tokens("concepts", settings, a) + excerpt,
                              a.reply_header_tokens + topics * (a.json_object_tokens + item) + kcs * item, cap)
    if 1 in levels:
        shapes["level1"] = (docs, template_tokens("level1", settings, a) + excerpt, reply(1), cap)
    if 2 in levels:
        shapes["level2"] = (docs, template_tokens("level2", settings, a) + excerpt
                            + kcs * (a.concept_tokens + 1), reply(2), cap)
    if 3 in levels:
        shapes["level3"] = (level3_combinations(docs, settings, a), template_tokens("level3", settings, a)
                            + 2 * _excerpt_tokens(gen.doc_chars // 2, a, calibration) + a.walk_nodes * item,
                            reply(3), cap)
    kept = a.gate_kept_share if settings.gate.enabled or settings.gate.judge_enabled else 1.0
    level_yields = []
    for level in sorted(levels):
        questions = shapes[LEVEL_STAGES[level]][0] * per_request[level]
        level_yields.append(LevelYield(level, questions, questions * kept, a.question_tokens[level - 1],
                                       a.answer_tokens[level - 1]))
    generated = sum(y.questions for y in level_yields)
    if generated and settings.gate.judge_enabled:
        mean_question = sum(y.questions * y.question_tokens for y in level_yields) / generated
        shapes["llm_judge"] = (generated, template_tokens("llm_judge", settings, a) + mean_question,
                               a.judge_reply_tokens, settings.gate.judge_sampling.max_tokens)
    answered = sum(y.qa_pairs for y in level_yields)
    if answered:
        shapes[ANSWER_STAGE] = (
            answered,
            template_tokens(ANSWER_STAGE, settings, a)
            + sum(y.qa_pairs * y.question_tokens for y in level_yields) / answered,
            k * sum(y.qa_pairs * y.answer_tokens for y in level_yields) / answered,
            k * settings.answer.sampling.max_tokens,
        )
    stages, warnings = [], []
    for stage, (requests, prompt, completion, max_tokens) in shapes.items():
        source = "model"
        if stage in calibration.tokens_per_call:
            prompt, completion = calibration.tokens_per_call[stage]
            source = "store"
        elif completion > max_tokens:
            warnings.append(f"{stage}: modelled reply of {completion:.0f} tokens exceeds max_tokens {max_tokens}; "
                            "replies would be truncated (raise the stage's sampling.max_tokens)")
            completion = max_tokens
        stages.append(StageLoad(stage, requests, requests * prompt, requests * completion, source))
    return Workload(docs, stages, level_yields, warnings)


def coordinator_needs(requests: float, wall_s: float, ms_per_request: float) -> tuple[float, int]:
    """Requests/s the coordinator must sustain, and processes at ``ms_per_request`` CPU each."""
    rate = requests / wall_s if wall_s > 0 else 0.0
    return rate, max(1, math.ceil(rate * ms_per_request / 1000))


def plan(work: Workload, throughput: Throughput, gpus: list[int], ms_per_request: float) -> dict[str, Any]:
    """The plan as one JSON-able object: per stage, in total, per level and per GPU count."""
    if not gpus or min(gpus) < 1:
        raise PlanError(f"--gpus must be one or more counts >= 1, got {gpus}")
    if ms_per_request <= 0:
        raise PlanError(f"--coordinator-ms-per-request must be > 0, got {ms_per_request}")
    gpu_s = {s.stage: throughput.gpu_seconds(s) for s in work.stages}
    stages = [{"stage": s.stage, "requests": round(s.requests), "prompt_tokens": round(s.prompt_tokens),
               "completion_tokens": round(s.completion_tokens), "gpu_hours": gpu_s[s.stage] / 3600,
               "tokens_source": s.source} for s in work.stages]
    total = {key: sum(row[key] for row in stages) for key in ("requests", "prompt_tokens", "completion_tokens",
                                                              "gpu_hours")}
    by_gpus = []
    for count in sorted(set(gpus)):
        walls = {stage: seconds / (count * throughput.utilisation) for stage, seconds in gpu_s.items()}
        needs = {s.stage: coordinator_needs(s.requests, walls[s.stage], ms_per_request) for s in work.stages}
        wall = sum(walls.values())
        sustained = [stage for stage in needs if walls[stage] >= SUSTAINED_S] or list(needs)
        peak = max(sustained, key=lambda stage: needs[stage][0], default=None)
        by_gpus.append({
            "gpus": count,
            "wall_hours": wall / 3600,
            "stage_wall_hours": {stage: seconds / 3600 for stage, seconds in walls.items()},
            "stage_requests_per_s": {stage: need[0] for stage, need in needs.items()},
            "peak_stage": peak,
            "coordinator_requests_per_s": needs[peak][0] if peak else 0.0,
            "coordinator_processes": needs[peak][1] if peak else 0,
        })
    gpu_total_s = total["gpu_hours"] * 3600
    coordinator_cpu_s = total["requests"] * ms_per_request / 1000
    levels = [asdict(y) | {"questions": round(y.questions), "qa_pairs": round(y.qa_pairs)} for y in work.levels]
    return {
        "documents": work.documents,
        "qa_pairs": round(sum(y.qa_pairs for y in work.levels)),
        "dataset_tokens": round(sum(y.qa_pairs * (y.question_tokens + y.answer_tokens) for y in work.levels)),
        "levels": levels,
        "stages": stages,
        "total": total,
        "gpus": by_gpus,
        "coordinator": {"ms_per_request": ms_per_request, "cpu_hours": coordinator_cpu_s / 3600,
                        "cpu_share_of_gpu_time": coordinator_cpu_s / gpu_total_s if gpu_total_s else 0.0},
        "throughput": asdict(throughput),
        "warnings": work.warnings,
    }


# --------------------------------------------------------------------------- store inputs
def store_documents(store: Store, settings: Settings) -> int:
    """The documents a synthesis run would use: the reference set once filtering ran, else all."""
    if settings.filter.enabled and store.table_files("document_scores"):
        sql = f"SELECT count(*) AS n FROM ({read_sql('reference_documents.sql')})"
        return int(store.query(sql, tables=["document_scores"])["n"][0])
    return int(store.query("SELECT count(*) AS n FROM documents", tables=["documents"])["n"][0])


def store_calibration(store: Store, settings: Settings) -> Calibration:
    """Mean tokens per engine call by stage (``llm_usage``) and mean excerpt lengths (``documents``)."""
    usage = store.query(
        "SELECT stage, sum(prompt_tokens) / sum(calls) AS prompt, sum(completion_tokens) / sum(calls) AS completion "
        "FROM llm_usage WHERE calls > 0 GROUP BY stage", tables=["llm_usage"])
    limits = sorted({settings.generation.doc_chars, settings.generation.doc_chars // 2, settings.filter.rater_chars})
    excerpt: dict[int, float] = {}
    if store.table_files("documents"):
        columns = ", ".join(f"avg(least(n_chars, {limit})) AS c{limit}" for limit in limits)
        row = store.query(f"SELECT {columns} FROM documents", tables=["documents"]).row(0, named=True)
        excerpt = {limit: float(row[f"c{limit}"]) for limit in limits if row[f"c{limit}"] is not None}
    return Calibration({r["stage"]: (float(r["prompt"]), float(r["completion"])) for r in usage.iter_rows(named=True)},
                       excerpt)
