"""The stage contract: a stage defined outside the package (prompt file + class + registration) is
planned, run, covered on rerun and grouped in the diversity report, touching no other file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from flows.synthesize import synthesize_flow
from scripted_llm import PipelineResponder
from synthllm.curation.diversity import build_report, group_keys
from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.runs import Failure
from synthllm.settings import Settings, load_settings
from synthllm.stages.base import Provenance
from synthllm.stages.common import DocumentStage, excerpt, make_request, no_questions, question_rows, request_seed
from synthllm.stages.registry import registered, stage_names, waves
from synthllm.store import Store
from test_pipeline import OVERRIDES, ingest_sample, scripted

PROMPT = Path(__file__).parent / "data" / "prompts" / "level4_questions.yaml"


@pytest.fixture
def sample_store(store_url: str, sample_dir: Path) -> str:
    ingest_sample(store_url, sample_dir)
    return store_url


class Level4Stage(DocumentStage):
    """The worked example of docs/stages.md: proof questions, two per document."""

    name = "level4"
    prompt_name = str(PROMPT)
    table = "questions"
    item_column = "doc_ids[1]"
    row_filter = "level = 4"
    level = 4
    group_by = "doc"

    def enabled(self, settings: Settings) -> bool:
        return self.level in settings.generation.levels

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        gen = settings.generation
        return make_request(self.prompt(), gen.sampling, request_seed(gen.sampling.seed, self.name, item["doc_id"]),
                            domain=settings.filter.domain, document=excerpt(item["text"], gen.doc_chars))

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        built = question_rows(4, item["doc_id"], result.parsed, origin, [item["doc_id"]], limit=2)
        return built or no_questions(self.name, item["doc_id"], result.text)


def unit_vectors(texts: list[str]) -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(len(texts), 8))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class ProofResponder(PipelineResponder):
    def __call__(self, request: ChatRequest) -> str:
        user = request.messages[-1]["content"]
        if "ask for a proof" in user:
            word = user.split("<document>", 1)[1].split()[0]
            return ('{"questions": [{"question": "Prove that the method for %s always gives the same result."}, '
                    '{"question": "Show why %s cannot be applied to negative numbers."}]}') % (word, word)
        return super().__call__(request)


def test_an_extra_stage_is_planned_run_covered_and_grouped(prefect_harness, sample_store: str) -> None:
    overrides = {**OVERRIDES, "generation.levels": [1, 4], "generation.max_documents": 6}
    with registered(Level4Stage(), before="question_gate"):
        assert "level4" in stage_names()
        names = [[s.name for s in group] for group in waves(load_settings(overrides=overrides))]
        assert names[0] == ["level1", "level4"] and names[-1] == ["answer"]
        engine = scripted(sample_store, ProofResponder(), overrides)
        summary = synthesize_flow(store=sample_store, overrides=overrides)
        store = Store(sample_store)
        questions = store.read_table("questions")
        level4 = questions.filter(pl.col("level") == 4)
        assert level4.height == 12 and level4["prompt_version"].unique().to_list() == ["level4_questions@1"]
        stages = {s["stage"]: s for s in summary["stages"]}
        assert stages["level4"]["items"] == 6 and stages["level4"]["rows"] == 12
        answered = set(store.read_table("answers")["question_id"])
        assert set(level4["question_id"]) <= answered  # the gate passed them, answers followed

        calls = engine.calls
        again = synthesize_flow(store=sample_store, overrides=overrides)
        assert engine.calls == calls and "level4" not in {s["stage"] for s in again["stages"]}

        assert set(group_keys(level4)) == {f"doc:{d[0]}" for d in level4["doc_ids"]}
        report, _ = build_report(questions, store.read_table("concepts"), unit_vectors)
        row = next(r for r in report["levels"] if r["level"] == 4)
        assert row["questions"] == 12 and row["groups_with_pairs"] == 6
    assert "level4" not in stage_names()
    with pytest.raises(ValueError, match="unknown levels \\[4\\]"):
        load_settings(overrides={"generation.levels": [1, 4]})


def test_a_disabled_stage_passes_on_its_dependencies() -> None:
    """Without the gate, answers still wait for every question level (not run beside level 1)."""
    names = [[s.name for s in group] for group in waves(load_settings(overrides={"gate.enabled": False}))]
    assert names == [["concepts", "level1"], ["level2", "graph"], ["level3"], ["answer"]]
    only_level1 = waves(load_settings(overrides={"generation.levels": [1]}))
    assert [[s.name for s in group] for group in only_level1] == [["level1"], ["question_gate"], ["answer"]]
