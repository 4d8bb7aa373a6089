"""Decontamination against the paper's six benchmarks (shipped where licences allow, else by path)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from synthllm.curation.decontam import (
    BUILTIN_BENCHMARKS,
    BUILTIN_DIR,
    BenchmarkError,
    ContaminationIndex,
    load_benchmark,
    parse_benchmark_spec,
)
from synthllm.curation.text import word_lists
from synthllm.settings import CurationSettings

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
MINERVA = SHARED / "minerva_math-test.jsonl"
LONG_QUESTION = (
    "A farmer plants 12 rows of tomatoes with 15 plants in each row. Each plant yields 4 kilograms of "
    "tomatoes over the summer, and the farmer sells every kilogram at the weekly market for 3 dollars. "
    "How much money does the farmer earn from the whole harvest?"
)
CLEAN = [
    "Maria's hens lay eggs every day; if each of 5 hens lays 2 eggs per day, how many eggs are laid in a week?",
    "A cyclist rides 18 km in 45 minutes. At the same speed, how far does she ride in 2 hours?",
    "Let f(x) = 3x^2 - 5x + 2. Find all real x with f(x) = 0 and compute their sum.",
    "How many positive divisors does 360 have, and what is the sum of its prime factors?",
]


def _items(filename: str, field: str) -> list[str]:
    lines = (BUILTIN_DIR / filename).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)[field] for line in lines if line.strip()]


GSM8K = _items("gsm8k-test.jsonl", "question")
MATH = _items("math-test.jsonl", "problem")


def _tokens(text: str) -> list[str]:
    return word_lists([text]).to_list()[0]


def _by_check(rows: pl.DataFrame, check: str) -> dict[str, dict]:
    return {r["question_id"]: r for r in rows.filter(pl.col("check_name") == check).iter_rows(named=True)}


@pytest.fixture(scope="module")
def six_index() -> ContaminationIndex:
    """The default benchmarks (five shipped) plus Minerva Math from its file path."""
    specs = [*CurationSettings().benchmarks, str(MINERVA)]
    return ContaminationIndex([load_benchmark(spec) for spec in specs], ngram=13)


def test_default_benchmarks_are_the_paper_sets_that_ship() -> None:
    names = [parse_benchmark_spec(spec)[0] for spec in CurationSettings().benchmarks]
    assert names == ["gsm8k", "math", "olympiadbench", "college_math", "gaokao2023en"]
    for spec in CurationSettings().benchmarks:
        assert len(load_benchmark(spec).texts) > 300, spec


def test_shipped_college_math_rows_carry_a_redistributable_licence() -> None:
    rows = [json.loads(line) for line in (BUILTIN_DIR / BUILTIN_BENCHMARKS["college_math"][0]).open(encoding="utf-8")]
    licences = {row["license"] for row in rows}
    assert len(rows) == 1260
    assert all("CC BY" in licence and "NC" not in licence for licence in licences), licences
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    for filename, _ in BUILTIN_BENCHMARKS.values():
        assert f"`{filename}`" in readme, filename
    assert "minerva" in readme.lower() and "not shipped" in readme.lower()


def test_verbatim_items_of_all_six_benchmarks_are_caught(six_index: ContaminationIndex) -> None:
    expected = {}
    for benchmark in six_index.benchmarks:
        for index in (0, len(benchmark.texts) // 2, len(benchmark.texts) - 1):
            expected[f"{benchmark.name}-{index}"] = (benchmark.texts[index], f"{benchmark.name}:{index}")
    questions = pl.DataFrame(
        {"question_id": [*expected, "clean"], "question": [t for t, _ in expected.values()] + [CLEAN[0]]}
    )
    rows = six_index.check(questions)
    ngram, exact = _by_check(rows, "contamination_ngram"), _by_check(rows, "contamination_exact")
    for question_id, (_, item) in expected.items():
        assert not ngram[question_id]["kept"] and not exact[question_id]["kept"], question_id
        benchmark = item.split(":")[0]
        assert ngram[question_id]["matched_id"].split(":")[0] == benchmark, question_id
    assert {b.name for b in six_index.benchmarks} == {
        "gsm8k", "math", "olympiadbench", "college_math", "gaokao2023en", "minerva_math-test",
    }
    assert ngram["clean"]["kept"] and exact["clean"]["kept"]


GSM8K_EDITED = GSM8K[0].replace("Janet’s", "Maria's").replace("16 eggs", "18 eggs").replace("$2", "$3")
MATH_EDITED = MATH[20].replace("m < 20", "m < 30")
SHORT_MATH = MATH[59]  # "Simplify $(3-i)(6+2i)$."


def test_lightly_edited_and_short_items_are_caught(six_index: ContaminationIndex) -> None:
    short_item = next(i for i, t in enumerate(MATH) if t == SHORT_MATH)
    assert len(_tokens(SHORT_MATH)) < 13
    questions = pl.DataFrame(
        {
            "question_id": ["gsm-edited", "math-edited", "short-inside", "math-upper", *map(str, range(len(CLEAN)))],
            "question": [GSM8K_EDITED, MATH_EDITED, "First, " + SHORT_MATH + " Then halve it.", "  " + MATH[20].upper(),
                         *CLEAN],
        }
    )
    rows = six_index.check(questions)
    ngram, exact = _by_check(rows, "contamination_ngram"), _by_check(rows, "contamination_exact")
    assert GSM8K_EDITED != GSM8K[0] and MATH_EDITED != MATH[20]
    assert ngram["gsm-edited"]["matched_id"] == "gsm8k:0"
    assert ngram["math-edited"]["matched_id"] == "math:20"
    assert ngram["short-inside"]["matched_id"] == f"math:{short_item}"
    assert ngram["short-inside"]["detail"] == f"contains the whole {len(_tokens(SHORT_MATH))}-word item"
    assert exact["math-upper"]["matched_id"] == "math:20" and exact["short-inside"]["kept"]
    verbatim = six_index.check(pl.DataFrame({"question_id": ["v"], "question": [GSM8K[0]]}))
    shared = _by_check(verbatim, "contamination_ngram")["v"]["score"]
    assert shared == len(set(zip(*[_tokens(GSM8K[0])[i:] for i in range(13)], strict=False)))
    assert 0 < ngram["gsm-edited"]["score"] < shared
    for question_id in map(str, range(len(CLEAN))):
        assert exact[question_id]["kept"] and ngram[question_id]["kept"], CLEAN[int(question_id)]


def test_an_operator_change_in_a_short_item_is_not_contamination(tmp_path: Path) -> None:
    bench = tmp_path / "ops.jsonl"
    bench.write_text(json.dumps({"problem": "Solve x + 3 = 7."}) + "\n", encoding="utf-8")
    index = ContaminationIndex([load_benchmark(str(bench))], ngram=13)
    rows = index.check(pl.DataFrame({"question_id": ["same", "minus"], "question": ["Solve x+3=7", "Solve x − 3 = 7"]}))
    ngram = _by_check(rows, "contamination_ngram")
    assert not ngram["same"]["kept"] and ngram["minus"]["kept"]


def test_layouts_are_detected_per_known_benchmark_or_named(tmp_path: Path) -> None:
    olympiad = load_benchmark(str(SHARED / "olympiadbench-test.jsonl"))
    minerva = load_benchmark(str(MINERVA))
    svamp_like = tmp_path / "svamp-like.json"
    svamp_like.write_text(json.dumps([{"Body": "Ann has 3 pens.", "Question": "How many pens?"}]), encoding="utf-8")
    parquet = tmp_path / "exam.parquet"
    pl.DataFrame({"problem": [CLEAN[1]], "answer": ["48 km"]}).write_parquet(parquet)
    custom = tmp_path / "my-bench.jsonl"
    custom.write_text("\n".join(json.dumps({"prompt": t}) for t in [CLEAN[2], LONG_QUESTION]), encoding="utf-8")
    assert olympiad.texts[0].startswith("Xenia and Sergey play")
    assert minerva.texts[0].startswith("Each of the two Magellan telescopes")
    assert load_benchmark(str(svamp_like)).texts == ["Ann has 3 pens. How many pens?"]
    assert load_benchmark(str(parquet)).texts == [CLEAN[1]]
    named = load_benchmark(f"{custom}:prompt")
    assert named.name == "my-bench" and named.texts[1] == LONG_QUESTION
    index = ContaminationIndex([named, load_benchmark(str(parquet))], ngram=13)
    rows = index.check(pl.DataFrame({"question_id": ["a", "b", "c"], "question": [LONG_QUESTION, CLEAN[1], CLEAN[0]]}))
    ngram = _by_check(rows, "contamination_ngram")
    assert ngram["a"]["matched_id"] == "my-bench:1" and ngram["b"]["matched_id"] == "exam:0" and ngram["c"]["kept"]


def test_bad_benchmark_specs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="unknown builtin"):
        parse_benchmark_spec("builtin:nope")
    with pytest.raises(BenchmarkError, match="expected a"):
        parse_benchmark_spec(str(tmp_path / "bench.csv"))
    no_field = tmp_path / "b.jsonl"
    no_field.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"no question or problem or Body\+Question field"):
        load_benchmark(str(no_field))
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    assert parse_benchmark_spec("s3://bucket/evals/test.jsonl") == ("test", "s3://bucket/evals/test.jsonl", None)
    assert parse_benchmark_spec("s3://bucket/t.parquet:Body+Question")[2] == "Body+Question"


def test_batches_give_the_same_rows_as_one_pass(six_index: ContaminationIndex) -> None:
    texts = [GSM8K[3], CLEAN[0], MATH[9], SHORT_MATH, CLEAN[3], MATH_EDITED, ""]
    questions = pl.DataFrame({"question_id": [f"q{i}" for i in range(len(texts))], "question": texts})
    whole = six_index.check(questions).sort("question_id", "check_name")
    batched = six_index.check(questions, batch_size=2).sort("question_id", "check_name")
    assert whole.equals(batched)
    assert whole.filter(~pl.col("kept"))["question_id"].unique().sort().to_list() == ["q0", "q2", "q3", "q5"]


def test_every_short_item_is_found_inside_a_longer_question(six_index: ContaminationIndex) -> None:
    """Short items of every length (3 to 12 tokens here) are searched only where a prefix of the
    shortest length starts; each one embedded mid-sentence must still be found, and the item
    reported must really occur in the question."""
    specs = [*CurationSettings().benchmarks, str(MINERVA)]
    items = [(b.item_id(i), t) for b in map(load_benchmark, specs) for i, t in enumerate(b.texts)]
    tokens = dict(zip([i for i, _ in items], word_lists([t for _, t in items]).list.join(" ").to_list(), strict=True))
    short = [(item_id, text) for item_id, text in items if 0 < len(tokens[item_id].split()) < 13]
    assert len({len(tokens[item_id].split()) for item_id, _ in short}) >= 5
    texts = [f"Quick one: {t} Then stop." for _, t in short]
    questions = pl.DataFrame({"question_id": [item_id for item_id, _ in short], "question": texts})
    rows = _by_check(six_index.check(questions), "contamination_ngram")
    question_tokens = word_lists(texts).list.join(" ").to_list()
    for (item_id, text), words in zip(short, question_tokens, strict=True):
        row = rows[item_id]
        assert not row["kept"], text
        assert f" {tokens[row['matched_id']]} " in f" {words} "


@pytest.mark.parametrize("lengths", [(4, 5, 6), (5,), (5, 6)])
def test_items_of_n_tokens_and_either_side_are_found(tmp_path: Path, lengths: tuple[int, ...]) -> None:
    """The boundary between short items (one window of all their tokens) and n-gram items, n = 5,
    with and without shorter items in the index."""
    words = "walrus quietly folds seven paper lanterns beside harbour".split()
    items = {n: " ".join(words[:n]) for n in lengths}
    bench = tmp_path / "edge.jsonl"
    bench.write_text("".join(json.dumps({"problem": text}) + "\n" for text in items.values()), encoding="utf-8")
    index = ContaminationIndex([load_benchmark(str(bench))], ngram=5)
    questions = pl.DataFrame({"question_id": [f"q{n}" for n in lengths] + ["clean"],
                              "question": [f"First, {text}, then count them." for text in items.values()]
                              + ["Seven lanterns fold quietly beside a walrus in the harbour."]})
    ngram = _by_check(index.check(questions), "contamination_ngram")
    assert {qid: row["kept"] for qid, row in ngram.items()} == {**{f"q{n}": False for n in lengths}, "clean": True}
