"""What the export holds, end to end: `synthllm run` through a fake OpenAI-compatible server that
plants junk questions, operator variants, verbatim items of all six benchmarks and answers in
mixed formats (issue 12's "done when")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import command_env
from openai_pipeline import openai_overrides, pipeline_server
from scripted_llm import PipelineResponder

from synthllm.answers import normalize_answer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "benchmarks"
BUILTIN = REPO / "synthllm" / "data" / "benchmarks"
BENCHMARKS = {  # name -> (file, text field)
    "gsm8k": (BUILTIN / "gsm8k-test.jsonl", "question"),
    "math": (BUILTIN / "math-test.jsonl", "problem"),
    "olympiadbench": (BUILTIN / "olympiadbench-test.jsonl", "question"),
    "college_math": (BUILTIN / "college_math-ccby-test.jsonl", "question"),
    "gaokao2023en": (BUILTIN / "gaokao2023en-test.jsonl", "question"),
    "minerva_math": (SHARED / "minerva_math-test.jsonl", "problem"),
}
JUNK = ["Question 1", "What is the difference between", "According to the passage, what is the value of x?"]
FORMATS = ["Adding and simplifying.\n\\boxed{{{}}}", "The answer is {}.", "So the solution is x = {}",
           "Therefore the result is ${}$."]
DOCUMENTS = 8


def planted_item(name: str) -> str:
    path, field = BENCHMARKS[name]
    return json.loads(path.read_text().splitlines()[3])[field]


def operator_pair(i: int) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two questions that differ only in an operator, with their answers (some fractional)."""
    a, b = i + 2, 3 * i + 11
    return ((f"Solve 2x + {a} = {b} for x.", _fraction(b - a)), (f"Solve 2x − {a} = {b} for x.", _fraction(b + a)))


def _fraction(twice: int) -> str:
    return str(twice // 2) if twice % 2 == 0 else f"\\frac{{{twice}}}{{2}}"


class PlantingResponder(PipelineResponder):
    def __init__(self, doc_texts: list[str]) -> None:
        super().__init__()
        self.doc_texts = doc_texts
        self.answers = {q: a for i in range(DOCUMENTS) for q, a in operator_pair(i)}

    def __call__(self, request) -> str:
        user = request.messages[-1]["content"]
        if "suitable" in json.dumps(request.json_schema or {}):
            i = next(k for k, text in enumerate(self.doc_texts) if text[:60] in user)
            names = list(BENCHMARKS)
            questions = [JUNK[i % len(JUNK)], *(q for q, _ in operator_pair(i))]
            if i < len(names):
                questions.append(planted_item(names[i]))
            return json.dumps({"suitable": True, "questions": [
                {"question": q, "type": "new", "school_level": "high school"} for q in questions]})
        if request.json_schema is None and user in self.answers:
            value = self.answers[user]
            shown = value if "frac" not in value or len(user) % 2 else str(eval(re.sub(r"\\frac\{(\d+)\}\{(\d+)\}",
                                                                                      r"\1/\2", value)))
            return FORMATS[len(user) % len(FORMATS)].format(shown)
        return super().__call__(request)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/benchmarks (Minerva Math) is not beside the repo")
def test_the_export_holds_no_junk_no_benchmark_items_and_verified_answers(
        sample_dir: Path, tmp_path: Path) -> None:
    lines = (sample_dir / "openstax-algebra.jsonl").read_text().splitlines()[:DOCUMENTS]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    doc_texts = [json.loads(line)["text"] for line in lines]
    store = tmp_path / "store"
    benchmarks = [f"builtin:{n}" for n in list(BENCHMARKS)[:5]] + [str(BENCHMARKS["minerva_math"][0])]
    responder = PlantingResponder(doc_texts)
    with pipeline_server(lambda request: responder(request)) as server:
        overrides = {"filter.enabled": False, "generation.levels": [1], "orchestration.task_retries": 0,
                     "curation.benchmarks": benchmarks, **openai_overrides(server)}
        command = [sys.executable, "-m", "synthllm.cli", "run", str(corpus), "--store", str(store)]
        for key, value in overrides.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        env = command_env(tmp_path / "prefect")
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    exported = pl.read_parquet(store / "exports" / "synthllm-qa" / "plain" / "data.parquet")
    texts = set(exported["question"])
    assert not texts & set(JUNK)
    assert not texts & {planted_item(name) for name in BENCHMARKS}
    pairs = [operator_pair(i) for i in range(DOCUMENTS)]
    assert all(plus in texts and minus in texts for (plus, _), (minus, _) in pairs)
    planted = {q: normalize_answer(a).key for pair in pairs for q, a in pair}
    got = exported.filter(pl.col("question").is_in(list(planted)))
    matches = sum(normalize_answer(final).key == planted[q] for q, final in zip(got["question"], got["final_answer"]))
    assert matches >= 0.9 * len(planted), (matches, len(planted))

    card = (store / "exports" / "synthllm-qa" / "README.md").read_text()
    for name in BENCHMARKS:
        row = next((line for line in card.splitlines() if name in line and "|" in line), None)
        assert row is not None, f"{name} missing from the card"
    funnel = card[card.index("header"):] if "header" in card else card
    assert "header" in funnel and "not_self_contained" in card and "cut_off" in card
