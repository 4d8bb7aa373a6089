"""Stage 1 flow: documents -> reference documents (``document_scores``; kept set in sql/reference_documents.sql)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed

from flows.tracking import tracked
from synthllm import filtering as F
from synthllm.progress import LIGHT_WEIGHT
from synthllm.runs import open_run
from synthllm.settings import EMBEDDED_MODEL, Settings, given_options, resolve_settings, settings_payload_text
from synthllm.store import Store
from tasks.common import open_task_runner, task_options
from tasks.filtering import (
    draw_rating_sample,
    rate_documents,
    score_examples,
    score_shard,
    train_filter,
    write_examples,
)

# Engines that cannot rate documents: SmolLM2-135M gives every document the same score (docs/filtering.md).
CANNOT_RATE = {("llamacpp", EMBEDDED_MODEL)}


def filter_skip_reason(settings: Settings) -> str | None:
    """Why ``synthllm-run`` skips reference filtering with these settings (None: it runs it)."""
    engine = settings.engine
    if not settings.filter.enabled or (engine.backend, engine.model) not in CANNOT_RATE:
        return None
    return (f"reference filtering skipped: the embedded model {engine.model} cannot rate documents (it scores "
            "every document alike, docs/filtering.md), so every document is used. To filter, configure a capable "
            "engine (e.g. --set engine.backend=openai --set engine.model=NAME --set engine.base_url=URL) or run "
            "`synthllm filter` first; --set filter.enabled=false silences this line.")


def filter_steps(settings: Settings) -> dict[str, float]:
    """The rating (LLM) and scoring steps of every round, for the run's progress."""
    first = 0 if settings.filter.cold_start_positives else 1
    steps: dict[str, float] = {}
    for round_index in range(first, settings.filter.rounds + 1):
        steps[f"filter-r{round_index}-{'examples' if round_index == 0 else 'rate'}"] = 1.0
        steps[f"filter-r{round_index}-score"] = LIGHT_WEIGHT
    return steps


@flow(name="filter-references")
def filter_references_flow(
    store: str | None = None,
    config: str | None = None,
    domain: str | None = None,
    rounds: int | None = None,
    rate_sample_size: int | None = None,
    threshold: float | None = None,
    overrides: dict[str, Any] | None = None,
    parent_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rate samples with the LLM, train a cheap classifier per round, score every document shard.

    Rating parts and scoring shards go to the task runner the settings choose (threads, Dask, Ray).

    Args:
        store: Store URL, a folder or s3://bucket/prefix (default: the config's store.url).
        config: Path of a YAML or TOML settings file on the worker.
        domain: The domain reference documents must belong to (default filter.domain, "mathematics").
        rounds: Rating + training rounds after the cold start (default filter.rounds).
        rate_sample_size: Documents the LLM rates per round (default filter.rate_sample_size).
        threshold: Keep documents scored above this, 1-10 (default filter.threshold, 6.5).
        overrides: Dotted settings on top of the config file, e.g. {"filter.rater_chars": 1500}.
        parent_settings: Resolved settings handed down by a parent run (synthllm-run); leave empty.
    """
    options = {"filter.domain": domain, "filter.rounds": rounds, "filter.rate_sample_size": rate_sample_size,
               "filter.threshold": threshold}
    resolved = resolve_settings(config, {**(overrides or {}), **given_options(options)}, store, parent_settings)
    target = Store(resolved.store)
    logger = get_run_logger()
    fs = resolved.filter
    if not fs.enabled:
        logger.info("filter.enabled is false: every document is a reference document")
        return {"enabled": False}
    documents_shards = sorted(target.shard_ids("documents"))
    if not documents_shards:
        raise F.FilterError(f"no documents in {target.url}: run ingest first")
    if fs.rounds == 0 and fs.cold_start_positives == 0:
        raise F.FilterError("filter.rounds = 0 and filter.cold_start_positives = 0 leave nothing to train on")

    payload = settings_payload_text(resolved)
    write, sample, rate, train, score, score_synthetic = (
        t.with_options(**task_options(resolved, uses_engine=t in (write_examples, rate_documents)))
        for t in (write_examples, draw_rating_sample, rate_documents, train_filter, score_shard, score_examples)
    )
    rounds_summary: list[dict[str, Any]] = []
    with (
        open_run("filter_references", resolved) as run,
        tracked("filter-references", target, filter_steps(resolved)) as tracker,
        open_task_runner(resolved) as runner,
        # a second filter run would rate the same samples again and prune the shards this one writes
        run.lease("filter", "reference filter", logger) as lease,
    ):
        run_id, summary = run.run_id, run.summary
        F.prune_rounds_after(target, fs.rounds)
        first_round = 0 if fs.cold_start_positives else 1
        if first_round == 1:
            F.prune_round(target, 0, keep=set())
        for round_index in range(first_round, fs.rounds + 1):
            current: set[str] = set()
            row: dict[str, Any] = {"round": round_index, "new_ratings": 0, "rate_failures": 0}
            llm_step = f"filter-r{round_index}-{'examples' if round_index == 0 else 'rate'}"
            score_step = f"filter-r{round_index}-score"
            if round_index == 0:
                tracker.plan(llm_step, 1, fs.cold_start_positives)
                examples = write(payload, run_id)
                row["examples"] = examples["examples"]
                tracker.finish_shard(llm_step, {"items": examples["examples"] + examples.get("failures", 0),
                                                "rows": examples["examples"], "failures": examples.get("failures", 0),
                                                "skipped": examples.get("skipped", False)})
                model = train(payload, 0, examples["path"])
            else:
                lease.check()
                doc_ids = sample(payload, round_index)
                doc_parts = F.chunks(doc_ids, fs.rate_shard_size)
                tracker.plan(llm_step, len(doc_parts), len(doc_ids))
                parts = runner.map(rate, {"settings_payload": unmapped(payload), "round_index": unmapped(round_index),
                                          "doc_ids": doc_parts, "run_id": unmapped(run_id)})
                for future in as_completed(parts):
                    part = future.result()
                    current.add(part["shard_id"])
                    row["new_ratings"] += part["rated"]
                    row["rate_failures"] += part["failures"]
                    tracker.finish_shard(llm_step, {"items": part["rated"] + part["failures"], "rows": part["rated"],
                                                    "failures": part["failures"], "skipped": part["skipped"]})
                # the training query reads every rater row of this round: drop an older run's first
                lease.check()
                F.prune_round(target, round_index, keep=current, kind="rate")
                model = train(payload, round_index)
            tracker.close(llm_step)
            tracker.plan(score_step, len(documents_shards))
            scored = []
            for future in as_completed(runner.map(score, {
                "settings_payload": unmapped(payload), "round_index": unmapped(round_index),
                "version": unmapped(model["version"]), "score_key": unmapped(model["score_key"]),
                "documents_shard": documents_shards, "run_id": unmapped(run_id),
            })):
                scored.append(future.result())
                tracker.finish_shard(score_step, {"items": scored[-1]["scored"], "rows": scored[-1]["scored"],
                                                  "skipped": scored[-1]["skipped"]})
            tracker.close(score_step)
            if round_index == 0:
                scored.append(score_synthetic(payload, model["version"], model["score_key"], examples["path"], run_id))
            current.update(part["shard_id"] for part in scored)
            lease.check()
            F.prune_round(target, round_index, keep=current)
            row.update(n_train=model["n_train"], version=model["version"], **F.round_counts(target, round_index))
            logger.info("round %d: %s", round_index, row)
            rounds_summary.append(row)
        summary.update(rounds=rounds_summary, reference_documents=F.reference_documents(target).height)
    create_table_artifact(key="filter-rounds", table=rounds_summary, description=f"Stage 1 filtering in {target.url}")
    return summary
