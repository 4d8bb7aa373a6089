"""Stage 1 tasks: Prefect wrappers over :mod:`synthllm.stages.filtering` (never cached: the store is the record)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from synthllm import filtering as F
from synthllm.stages import filtering as S
from tasks.common import open_payload


@task(name="filter-write-examples", cache_policy=NO_CACHE)
def write_examples(settings_payload: dict[str, Any] | str, run_id: str) -> dict[str, Any]:
    settings, store = open_payload(settings_payload)
    summary = S.write_examples(store, settings, run_id)
    get_run_logger().info("cold-start examples: %s", summary)
    return summary


@task(name="filter-sample", cache_policy=NO_CACHE)
def draw_rating_sample(settings_payload: dict[str, Any] | str, round_index: int) -> list[str]:
    settings, store = open_payload(settings_payload)
    return F.rating_sample(store, settings.filter, round_index)


@task(name="filter-rate", cache_policy=NO_CACHE)
def rate_documents(settings_payload: dict[str, Any] | str, round_index: int, doc_ids: list[str], run_id: str
                   ) -> dict[str, Any]:
    settings, store = open_payload(settings_payload)
    summary = S.rate_documents(store, settings, run_id, round_index, doc_ids)
    get_run_logger().info("round %d rating part %s: %s", round_index, summary["shard_id"], summary)
    return summary


@task(name="filter-train", cache_policy=NO_CACHE)
def train_filter(settings_payload: dict[str, Any] | str, round_index: int, examples_path: str | None = None
                 ) -> dict[str, Any]:
    settings, store = open_payload(settings_payload)
    summary = S.train_filter(store, settings, round_index, examples_path)
    get_run_logger().info("round %d model: %s", round_index, summary)
    return summary


@task(name="filter-score", cache_policy=NO_CACHE)
def score_shard(settings_payload: dict[str, Any] | str, round_index: int, version: str, score_key: str,
                documents_shard: str, run_id: str) -> dict[str, Any]:
    settings, store = open_payload(settings_payload)
    return S.score_shard(store, settings, run_id, round_index, version, score_key, documents_shard)


@task(name="filter-score-examples", cache_policy=NO_CACHE)
def score_examples(settings_payload: dict[str, Any] | str, version: str, score_key: str, examples_path: str, run_id: str
                   ) -> dict[str, Any]:
    settings, store = open_payload(settings_payload)
    return S.score_examples(store, settings, run_id, version, score_key, examples_path)
