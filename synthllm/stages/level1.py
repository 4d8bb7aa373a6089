"""Level 1: questions drawn from one document (with the model's "not suitable" gate)."""

from __future__ import annotations

from typing import Any

from synthllm.engines.base import ChatRequest, ChatResult
from synthllm.runs import Failure
from synthllm.settings import Settings
from synthllm.stages.base import Provenance
from synthllm.stages.common import DocumentStage, excerpt, make_request, no_questions, question_rows, request_seed


class Level1Stage(DocumentStage):
    name = "level1"
    prompt_name = "level1_questions"
    table = "questions"
    item_column = "doc_ids[1]"
    row_filter = "level = 1"
    level = 1
    group_by = "doc"

    def enabled(self, settings: Settings) -> bool:
        return self.level in settings.generation.levels

    def options_key(self, settings: Settings) -> Any:
        return [settings.generation.doc_chars, settings.generation.l1_max_questions, settings.filter.domain]

    def request(self, item: dict[str, Any], settings: Settings) -> ChatRequest:
        gen = settings.generation
        return make_request(
            self.prompt(), gen.sampling, request_seed(gen.sampling.seed, self.name, item["doc_id"]),
            limits={"questions": gen.l1_max_questions}, domain=settings.filter.domain,
            document=excerpt(item["text"], gen.doc_chars), max_questions=gen.l1_max_questions,
        )

    def rows(self, item: dict[str, Any], result: ChatResult, origin: Provenance,
             settings: Settings) -> list[dict[str, Any]] | Failure:
        doc_id = item["doc_id"]
        if not result.parsed.get("suitable", True):
            return Failure(self.name, doc_id, "not_suitable", "the model judged the document unsuitable", result.text)
        built = question_rows(1, doc_id, result.parsed, origin, [doc_id], limit=settings.generation.l1_max_questions)
        return built or no_questions(self.name, doc_id, result.text)
