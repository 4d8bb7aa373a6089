"""Curation over a store: read questions, write ``curation`` shards and reports.

Curation is recomputed on every run and its shards replaced, so a rerun is idempotent and new
questions or changed settings are always reflected: ``dedup-all`` (one shard: duplicates must be
looked for across everything), ``decontam-<question shard>`` (one per question shard;
:func:`decontaminate_shards` checks any number of them with one benchmark index).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from synthllm.curation.decontam import contamination_index
from synthllm.curation.dedup import dedup
from synthllm.curation.diversity import Embedder, build_report, minilm_embedder, render_histograms, render_markdown
from synthllm.curation.export import CURATION_SUMMARY, contamination_by_benchmark
from synthllm.resources import read_sql
from synthllm.runs import utcnow
from synthllm.settings import Settings
from synthllm.stages.question_gate import verdicts_in_force
from synthllm.store import Store

DEDUP_SHARD = "dedup-all"
DECONTAM_PREFIX = "decontam-"
DIVERSITY_DIR = "reports/diversity"


def _with_provenance(rows: pl.DataFrame, shard_id: str, run_id: str) -> pl.DataFrame:
    return rows.with_columns(pl.lit(shard_id).alias("shard_id"), pl.lit(run_id).alias("run_id"))


def _dropped(rows: pl.DataFrame, check_name: str) -> int:
    return rows.filter((pl.col("check_name") == check_name) & ~pl.col("kept")).height


def _remove_shard(store: Store, shard_id: str) -> None:
    if store.has_shard("curation", shard_id):
        store.fs.rm(store.shard_path("curation", shard_id))


def run_dedup(store: Store, settings: Settings, run_id: str) -> dict[str, int]:
    """Exact and near-duplicates over every question of every level and run."""
    questions = store.query(read_sql("curation_dedup_input.sql"), list(verdicts_in_force(settings, store)),
                            tables=["questions", "curation"])
    if questions.is_empty():
        _remove_shard(store, DEDUP_SHARD)
        return {"questions": 0, "exact_dup": 0, "near_dup": 0}
    rows = dedup(questions, settings.curation)
    store.write_shard("curation", DEDUP_SHARD, _with_provenance(rows, DEDUP_SHARD, run_id))
    return {"questions": questions.height, "exact_dup": _dropped(rows, "exact_dup"), "near_dup": _dropped(rows, "near_dup")}


def question_shards(store: Store) -> list[str]:
    return sorted(store.shard_ids("questions"))


def decontaminate_shards(store: Store, settings: Settings, run_id: str, shards: Sequence[str]) -> dict[str, Any]:
    """Benchmark checks for many question shards (``decontam-<question shard>`` each), with the
    benchmark index built once per process and reused for every shard.

    Returns totals over the shards and ``per_benchmark``: questions dropped per benchmark name
    (every configured benchmark listed, 0 included), a question counted once.
    """
    curation = settings.curation
    totals: dict[str, Any] = {"shards": len(shards), "questions": 0, "contamination_exact": 0, "contamination_ngram": 0}
    if not curation.benchmarks:
        for shard in shards:
            _remove_shard(store, f"{DECONTAM_PREFIX}{shard}")
        return {**totals, "per_benchmark": {}}
    index = contamination_index(curation.benchmarks, curation.ngram, settings.store)
    per_benchmark = dict.fromkeys((b.name for b in index.benchmarks), 0)
    for question_shard in shards:
        shard_id = f"{DECONTAM_PREFIX}{question_shard}"
        questions = (
            store.read_table("questions", [question_shard])
            .select("question_id", "question")
            .unique("question_id", keep="first", maintain_order=True)
        )
        rows = index.check(questions)
        store.write_shard("curation", shard_id, _with_provenance(rows, shard_id, run_id))
        totals["questions"] += questions.height
        for check in ("contamination_exact", "contamination_ngram"):
            totals[check] += _dropped(rows, check)
        for name, count in _contaminated_by_benchmark(rows).items():
            per_benchmark[name] += count
    return {**totals, "per_benchmark": per_benchmark}


def _contaminated_by_benchmark(rows: pl.DataFrame) -> dict[str, int]:
    """Questions dropped per benchmark (the exact match's benchmark first, else the n-gram's)."""
    dropped = rows.filter(~pl.col("kept")).sort("check_name").unique("question_id", keep="first")
    counted = dropped.group_by(pl.col("matched_id").str.split(":").list.first().alias("benchmark")).len()
    return dict(counted.iter_rows())


def run_decontamination(store: Store, settings: Settings, question_shard: str, run_id: str) -> dict[str, int]:
    """Benchmark checks for one question shard: counts only, so per-shard results add up key by
    key (the per-benchmark report comes from the curation table, see :func:`write_curation_summary`)."""
    result = decontaminate_shards(store, settings, run_id, [question_shard])
    return {key: value for key, value in result.items() if key not in ("shards", "per_benchmark")}


def add_decontamination_totals(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Sum two :func:`decontaminate_shards` results (chunks of shards run apart)."""
    benchmarks = {**first.get("per_benchmark", {})}
    for name, count in second.get("per_benchmark", {}).items():
        benchmarks[name] = benchmarks.get(name, 0) + count
    counts = {key: first.get(key, 0) + second.get(key, 0) for key in {*first, *second} - {"per_benchmark"}}
    return {**counts, "per_benchmark": benchmarks}


def remove_stale_decontamination(store: Store, settings: Settings) -> int:
    """Drop ``decontam-*`` shards whose question shard is gone (all of them when no benchmark is set)."""
    live = set(question_shards(store)) if settings.curation.benchmarks else set()
    stale = [
        s for s in store.shard_ids("curation") if s.startswith(DECONTAM_PREFIX) and s.removeprefix(DECONTAM_PREFIX) not in live
    ]
    for shard_id in stale:
        _remove_shard(store, shard_id)
    return len(stale)


def write_curation_summary(store: Store, settings: Settings, run_id: str, summary: dict[str, Any]) -> str:
    """What the last curate run checked, with which settings, and the per-benchmark report (from
    the curation table, so it holds whichever way the shards were run): the dataset card quotes it."""
    path = store.path(CURATION_SUMMARY)
    payload = {
        "run_id": run_id,
        "finished_at": utcnow().isoformat(),
        "settings": settings.curation.model_dump(mode="json"),
        "summary": summary,
        "contamination_by_benchmark": contamination_by_benchmark(store, settings.curation.benchmarks),
    }
    store.write_text(path, json.dumps(payload, indent=2, default=str))
    return path


def _lazy_minilm(batch_size: int) -> Embedder:
    """Load the model only when there is something to embed."""

    def embed(texts: Sequence[str]):
        return minilm_embedder(batch_size)(texts)

    return embed


def run_diversity_report(
    store: Store, settings: Settings, curated_only: bool = False, embed: Embedder | None = None
) -> dict[str, Any]:
    """Compute the report and publish it under ``reports/diversity/``; returns the report and file paths."""
    curation = settings.curation
    questions = store.query(read_sql("curation_report_questions.sql"), [curated_only], tables=["questions", "curation"])
    concepts = store.query("SELECT concept_id, name, surface_forms FROM concepts", tables=["concepts"])
    report, similarities = build_report(
        questions,
        concepts,
        embed or _lazy_minilm(curation.embedding_batch_size),
        similar_threshold=curation.similar_threshold,
        max_groups_per_level=curation.diversity_max_groups,
    )
    report["scope"] = "curated questions" if curated_only else "all generated questions"
    markdown = render_markdown(report)
    files = {
        "report.json": json.dumps(report, indent=2).encode("utf-8"),
        "report.md": markdown.encode("utf-8"),
        "histograms.png": render_histograms(similarities),
    }
    paths = []
    for filename, data in files.items():
        path = store.path(DIVERSITY_DIR, filename)
        store.write_bytes(path, data)
        paths.append(path)
    return {"report": report, "markdown": markdown, "files": paths}
