"""Stage 1 flow: documents -> reference documents (``document_scores``; kept set in sql/reference_documents.sql)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from synthllm import filtering as F
from synthllm.runs import public_params, recorded_run
from synthllm.settings import Settings, load_settings, settings_payload
from synthllm.store import Store
from tasks.common import make_task_runner
from tasks.filtering import (
    draw_rating_sample,
    rate_documents,
    score_examples,
    score_shard,
    train_filter,
    write_examples,
)


def _retrying(task_, settings: Settings):
    return task_.with_options(
        retries=settings.orchestration.task_retries, retry_delay_seconds=settings.orchestration.retry_delay_s
    )


@flow(name="filter-references")
def filter_references_flow(
    store: str | None = None,
    config: str | None = None,
    domain: str | None = None,
    rounds: int | None = None,
    rate_sample_size: int | None = None,
    threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rate samples with the LLM, train a cheap classifier per round, score every document shard.

    Rating parts and scoring shards go to the task runner the settings choose (threads, Dask, Ray).
    """
    settings = load_settings(
        config,
        {**(overrides or {}), "filter.domain": domain, "filter.rounds": rounds,
         "filter.rate_sample_size": rate_sample_size, "filter.threshold": threshold},
        store,
    )
    target = Store(settings.store)
    target.check_reachable()
    logger = get_run_logger()
    fs = settings.filter
    if not fs.enabled:
        logger.info("filter.enabled is false: every document is a reference document")
        return {"enabled": False}
    documents_shards = sorted(target.shard_ids("documents"))
    if not documents_shards:
        raise F.FilterError(f"no documents in {target.url}: run ingest first")
    if fs.rounds == 0 and fs.cold_start_positives == 0:
        raise F.FilterError("filter.rounds = 0 and filter.cold_start_positives = 0 leave nothing to train on")

    payload = settings_payload(settings)
    write, sample, rate, train, score, score_synthetic = (
        _retrying(t, settings)
        for t in (write_examples, draw_rating_sample, rate_documents, train_filter, score_shard, score_examples)
    )
    rounds_summary: list[dict[str, Any]] = []
    with (
        recorded_run(target, "filter_references", public_params(settings)) as (run_id, summary),
        make_task_runner(settings) as runner,
    ):
        F.prune_rounds_after(target, fs.rounds)
        first_round = 0 if fs.cold_start_positives else 1
        if first_round == 1:
            F.prune_round(target, 0, keep=set())
        for round_index in range(first_round, fs.rounds + 1):
            current: set[str] = set()
            row: dict[str, Any] = {"round": round_index, "new_ratings": 0, "rate_failures": 0}
            if round_index == 0:
                examples = write(payload, run_id)
                row["examples"] = examples["examples"]
                model = train(payload, 0, examples["path"])
            else:
                doc_ids = sample(payload, round_index)
                parts = runner.map(rate, {"settings_payload": unmapped(payload), "round_index": unmapped(round_index),
                                          "doc_ids": F.chunks(doc_ids, fs.rate_shard_size), "run_id": unmapped(run_id)})
                for part in parts.result():
                    current.add(part["shard_id"])
                    row["new_ratings"] += part["rated"]
                    row["rate_failures"] += part["failures"]
                # the training query reads every rater row of this round: drop an older run's first
                F.prune_round(target, round_index, keep=current, kind="rate")
                model = train(payload, round_index)
            scored = runner.map(score, {
                "settings_payload": unmapped(payload), "round_index": unmapped(round_index),
                "version": unmapped(model["version"]), "score_key": unmapped(model["score_key"]),
                "documents_shard": documents_shards, "run_id": unmapped(run_id),
            }).result()
            if round_index == 0:
                scored.append(score_synthetic(payload, model["version"], model["score_key"], examples["path"], run_id))
            current.update(part["shard_id"] for part in scored)
            F.prune_round(target, round_index, keep=current)
            row.update(n_train=model["n_train"], version=model["version"], **F.round_counts(target, round_index))
            logger.info("round %d: %s", round_index, row)
            rounds_summary.append(row)
        summary.update(rounds=rounds_summary, reference_documents=F.reference_documents(target).height)
    target.write_catalog()
    create_table_artifact(key="filter-rounds", table=rounds_summary, description=f"Stage 1 filtering in {target.url}")
    return summary
