"""Prefect tasks of the generation stages: one task = one shard of thousands of prompts.

Each task is skipped when its output shard exists (resume), cached across runs by Prefect on
(shard id, settings), retried on failure, and tagged ``gpu`` when it drives an engine.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import task
from prefect.concurrency.sync import concurrency

from synthllm import generation as gen
from synthllm.concepts import normalise_concept
from synthllm.pipeline import ShardSummary, fetch_rows, open_llm, read_plan, run_llm_shard
from synthllm.prompts import load_prompt
from synthllm.runs import Failure
from synthllm.settings import Settings, settings_from_payload
from synthllm.store import Store


def _open(settings_payload: dict[str, Any]) -> tuple[Settings, Store]:
    settings = settings_from_payload(settings_payload)
    return settings, Store(settings.store)


def engine_slot(settings: Settings):
    """A GPU slot of the Prefect global concurrency limit, when one is configured."""
    limit = settings.orchestration.gpu_concurrency_limit
    return (lambda: concurrency(limit, occupy=1, strict=True)) if limit else nullcontext


# Output table of each stage: a shard is done once its file exists there.
STAGE_TABLES = {
    "concepts": "document_concepts",
    "level1": "questions",
    "level2": "questions",
    "level3": "questions",
    "answer": "answers",
}


def _run_stage(settings: Settings, store: Store, stage: str, shard_id: str, run_id: str, items: list[dict],
               item_key: str, build_request, build_rows) -> ShardSummary:
    """One stage's shard through its engine (the answer engine for answers), prompt and table."""
    return run_llm_shard(
        store, open_llm(store, gen.stage_engine(settings, stage)), stage=stage, table=STAGE_TABLES[stage],
        shard_id=shard_id, run_id=run_id, items=items, item_key=item_key, prompt=load_prompt(gen.PROMPTS[stage]),
        build_request=build_request, build_rows=build_rows, engine_slot=engine_slot(settings),
    )


def concepts_shard_body(settings: Settings, store: Store, shard_id: str, run_id: str) -> ShardSummary:
    docs = fetch_rows(store, "documents", "doc_id", read_plan(store, "concepts", shard_id), "doc_id, text")

    def rows(doc: dict, result, origin) -> list[dict] | Failure:
        links = gen.concept_link_rows(doc["doc_id"], result.parsed, origin)
        return links or Failure("concepts", doc["doc_id"], "no_concepts", "reply held no usable topic", result.text)

    return _run_stage(
        settings, store, "concepts", shard_id, run_id, items=docs.to_dicts(), item_key="doc_id",
        build_request=lambda doc: gen.concept_request(doc, settings), build_rows=rows,
    )


def level1_shard_body(settings: Settings, store: Store, shard_id: str, run_id: str) -> ShardSummary:
    docs = fetch_rows(store, "documents", "doc_id", read_plan(store, "level1", shard_id), "doc_id, text")
    limit = settings.generation.l1_max_questions

    def rows(doc: dict, result, origin) -> list[dict] | Failure:
        if not result.parsed.get("suitable", True):
            return Failure("level1", doc["doc_id"], "not_suitable", "the model judged the document unsuitable",
                           result.text)
        built = gen.question_rows(1, doc["doc_id"], result.parsed, origin, [doc["doc_id"]], limit=limit)
        return built or Failure("level1", doc["doc_id"], "no_questions", "reply held no usable question", result.text)

    return _run_stage(
        settings, store, "level1", shard_id, run_id, items=docs.to_dicts(), item_key="doc_id",
        build_request=lambda doc: gen.level1_request(doc, settings), build_rows=rows,
    )


def level2_shard_body(settings: Settings, store: Store, shard_id: str, run_id: str) -> ShardSummary:
    doc_ids = read_plan(store, "level2", shard_id)
    docs = fetch_rows(store, "documents", "doc_id", doc_ids, "doc_id, text").to_dicts()
    links = fetch_rows(store, "document_concepts", "doc_id", doc_ids, "doc_id, kc_id, kc_surface")
    concepts: dict[str, dict[str, str]] = {}
    for doc_id, kc_id, surface in links.drop_nulls("kc_id").iter_rows():
        concepts.setdefault(doc_id, {}).setdefault(kc_id, surface)
    docs = [d for d in docs if len(concepts.get(d["doc_id"], {})) >= 2]
    limit = settings.generation.l2_max_questions

    def rows(doc: dict, result, origin) -> list[dict] | Failure:
        allowed = {normalise_concept(s): k for k, s in concepts[doc["doc_id"]].items()}
        built = gen.question_rows(2, doc["doc_id"], result.parsed, origin, [doc["doc_id"]],
                                  allowed_concepts=allowed, limit=limit)
        return built or Failure("level2", doc["doc_id"], "no_questions", "reply held no usable question", result.text)

    return _run_stage(
        settings, store, "level2", shard_id, run_id, items=docs, item_key="doc_id",
        build_request=lambda doc: gen.level2_request(doc, list(concepts[doc["doc_id"]].values()), settings),
        build_rows=rows,
    )


def level3_shard_body(settings: Settings, store: Store, shard_id: str, run_id: str) -> ShardSummary:
    combos = fetch_rows(store, "concept_combinations", "combo_id", read_plan(store, "level3", shard_id)).to_dicts()
    ref_ids = sorted({d for c in combos for d in c["ref_doc_ids"]})
    texts = dict(fetch_rows(store, "documents", "doc_id", ref_ids, "doc_id, text").iter_rows())
    concept_ids = sorted({c for combo in combos for c in combo["topics"] + combo["kcs"]})
    names = {cid: (forms[0] if forms else name) for cid, name, forms in
             fetch_rows(store, "concepts", "concept_id", concept_ids, "concept_id, name, surface_forms").iter_rows()}
    limit = settings.generation.l3_max_questions

    def rows(combo: dict, result, origin) -> list[dict] | Failure:
        allowed = {normalise_concept(names.get(k, k.split(":", 1)[-1])): k for k in combo["kcs"]}
        allowed |= {k.split(":", 1)[-1]: k for k in combo["kcs"]}
        built = gen.question_rows(3, combo["combo_id"], result.parsed, origin, list(combo["ref_doc_ids"]),
                                  combo_id=combo["combo_id"], allowed_concepts=allowed, limit=limit)
        return built or Failure("level3", combo["combo_id"], "no_questions", "reply held no usable question",
                                result.text)

    return _run_stage(
        settings, store, "level3", shard_id, run_id, items=combos, item_key="combo_id",
        build_request=lambda combo: gen.level3_request(
            combo, [texts[d] for d in combo["ref_doc_ids"] if d in texts], names, settings),
        build_rows=rows,
    )


def answer_shard_body(settings: Settings, store: Store, shard_id: str, run_id: str) -> ShardSummary:
    questions = fetch_rows(store, "questions", "question_id", read_plan(store, "answer", shard_id),
                           "question_id, question").to_dicts()

    def rows(question: dict, result, origin) -> list[dict] | Failure:
        row = gen.answer_row(question["question_id"], result, origin)
        return [row] if row else Failure("answer", question["question_id"], "truncated",
                                         "every sample hit max_tokens or was empty", result.text)

    return _run_stage(
        settings, store, "answer", shard_id, run_id, items=questions, item_key="question_id",
        build_request=lambda q: gen.answer_request(q, settings), build_rows=rows,
    )


STAGE_BODIES = {
    "concepts": concepts_shard_body,
    "level1": level1_shard_body,
    "level2": level2_shard_body,
    "level3": level3_shard_body,
    "answer": answer_shard_body,
}


@task(name="generate-shard", tags=["gpu"], task_run_name="{stage}:{shard_id}")
def generate_shard(stage: str, shard_id: str, settings_payload: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Run one shard of one LLM stage (concepts, level1, level2, level3 or answer).

    With ``orchestration.gpu_concurrency_limit`` set, a Prefect global concurrency limit
    (``prefect gcl create gpu --limit <GPUs>``) keeps engine shards from outnumbering the GPUs.
    """
    settings, store = _open(settings_payload)
    if store.has_shard(STAGE_TABLES[stage], shard_id):
        return {"stage": stage, **ShardSummary(shard_id, skipped=True).as_dict()}
    return {"stage": stage, **STAGE_BODIES[stage](settings, store, shard_id, run_id).as_dict()}
