"""Stage 1 filtering: prompts, rater replies, classifier rounds, resume and the Prefect flow.

The corpus is real: OpenStax algebra sections (mathematics) and FineWeb-Edu pages (almost all
something else), from data/sample. A scripted rater plays the LLM: it rates a document from what
the real prompt shows it (the first ``rater_chars`` characters), high when the text reads as
mathematics. Nothing here tells the classifier which source a document came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from synthllm import filtering as F
from synthllm.engines.base import ChatRequest, ChatResult, Completion
from synthllm.engines.client import LLM
from synthllm.engines.scripted import ScriptedEngine
from synthllm.ingest import expand_sources
from synthllm.prompts import PromptError, load_prompt
from synthllm.settings import load_settings
from synthllm.store import Store
from synthllm.engine_pool import POOL
from synthllm.stages import filtering as S
from synthllm.stages.base import Provenance
from synthllm.stages.rate import RateStage
from synthllm.stages.runner import rows_and_failures
from synthllm.ingest import ingest_file

MATH_WORDS = re.compile(
    r"\b(equations?|solve|solving|solutions?|numbers?|fractions?|variables?|expressions?|graphs?|integers?|"
    r"decimals?|algebra\w*|polynomials?|exponents?|ratios?|percent|slope|simplify|factor\w*|inequalit\w+|"
    r"functions?|multiply|divide|sum|product)\b",
    re.IGNORECASE,
)
MATH_SYMBOLS = re.compile(r"\\[A-Za-z]+|=|\d+\s*[-+×÷/*^]\s*\d+|\$")
DOCUMENT = re.compile(r"<document>\n(.*)\n</document>", re.DOTALL)
GARBAGE = "Sure! I think this document is quite good, maybe a 7?"


def math_signal(text: str) -> float:
    """Mathematical symbols and vocabulary per 1,000 characters."""
    return (len(MATH_SYMBOLS.findall(text)) + 3 * len(MATH_WORDS.findall(text))) / max(len(text), 1) * 1000


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def corpus(sample_dir: Path) -> dict[str, list[dict]]:
    """30 OpenStax sections + 40 FineWeb-Edu pages to filter, and other OpenStax sections held out."""
    algebra = read_jsonl(sample_dir / "openstax-algebra.jsonl")
    intermediate = read_jsonl(sample_dir / "openstax-intermediate-algebra.jsonl")
    web = read_jsonl(sample_dir / "fineweb-edu-sample.jsonl")
    return {
        "math": algebra[::6][:20] + intermediate[::8][:10],
        "web": web[:40],
        "held_out_math": algebra[1::6][:8],
    }


class CorpusLLM:
    """Scripted replies: ratings from the math signal of the shown document; examples from held-out sections."""

    def __init__(self, held_out_math: list[dict], garbage_for: tuple[str, ...] = ()) -> None:
        self.examples = [doc["text"][:1500] for doc in held_out_math]
        self.garbage_for = garbage_for
        self.calls = {"rate": 0, "write": 0}

    def __call__(self, request: ChatRequest) -> str:
        user = request.messages[-1]["content"]
        shown = DOCUMENT.search(user)
        if shown is None:
            self.calls["write"] += 1
            return self.examples[(request.seed or 0) % len(self.examples)]
        self.calls["rate"] += 1
        text = shown.group(1)
        if any(text.startswith(prefix) for prefix in self.garbage_for):
            return GARBAGE
        signal = math_signal(text)
        rating = 9 if signal >= 12 else 2
        return json.dumps({"relevance": rating, "clarity": 7, "language": 8, "rating": rating})


def ingest_corpus(store_url: str, tmp_path: Path, corpus: dict[str, list[dict]]) -> Store:
    source = tmp_path / "corpus.jsonl"
    source.write_text(
        "".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in corpus["math"] + corpus["web"]),
        encoding="utf-8",
    )
    settings = load_settings(store=store_url)
    store = Store(settings.store)
    for file in expand_sources([str(source)], settings.store):
        ingest_file(store, settings, "test-ingest", file)
    return store


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, corpus: dict[str, list[dict]]) -> CorpusLLM:
    """Every filtering task talks to the scripted rater through the real LLM client."""
    responder = CorpusLLM(corpus["held_out_math"])
    llms: dict[str, LLM] = {}

    def open_scripted(store: Store, engine_settings) -> LLM:
        if store.url not in llms:
            llms[store.url] = LLM(ScriptedEngine(responder), store, engine_settings)
        return llms[store.url]

    monkeypatch.setattr(POOL, "open", open_scripted)
    return responder


# --------------------------------------------------------------------------- prompts
def test_rate_prompt_puts_the_document_before_the_instructions() -> None:
    prompt = load_prompt("rate_document")
    assert prompt.version == "rate_document@1"
    document = "Solve {x}: 2x + 3 = 7. Braces {like these} stay as they are."
    messages = prompt.render(domain="chemistry", document=document)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("<document>\n" + document + "\n</document>")
    assert "chemistry" in user and "chemistry" in messages[0]["content"]
    assert set(prompt.schema["required"]) == {"relevance", "clarity", "language", "rating"}


def test_prompt_rendering_rejects_missing_and_unknown_values() -> None:
    prompt = load_prompt("write_reference_example")
    assert prompt.placeholders == {"domain", "kind", "level", "subtopic"}
    with pytest.raises(PromptError, match="missing values \\['level'\\]"):
        prompt.render(domain="mathematics", kind="exam paper", subtopic="sets")
    with pytest.raises(PromptError, match="unknown values \\['topic'\\]"):
        prompt.render(domain="mathematics", kind="exam paper", level="high school", subtopic="sets", topic="sets")
    with pytest.raises(PromptError, match="no prompt file"):
        load_prompt("no_such_prompt")


# --------------------------------------------------------------------------- pure logic
def test_parse_ratings_keeps_valid_replies_and_quarantines_the_rest() -> None:
    settings = load_settings()
    valid = ChatResult([Completion('{"relevance": 8, "clarity": 6, "language": 7, "rating": 7}', "stop",
                                   {"relevance": 8, "clarity": 6, "language": 7, "rating": 7})])
    low = ChatResult([Completion("{}", "stop", {"relevance": 2, "clarity": 6, "language": 7, "rating": 3})])
    broken = ChatResult([Completion(GARBAGE, "stop")], error="invalid_json: Expecting value")
    stage = RateStage(round_index=1)
    items = [{"doc_id": d} for d in ("a", "b", "c")]
    origins = [Provenance("rate_document@1", "m", "{}")] * 3
    rows, failures = rows_and_failures(stage, settings, items, [valid, broken, low], origins, "m")
    assert [(r["doc_id"], r["llm_rating"], r["kept"]) for r in rows] == [("a", 7.0, True), ("c", 3.0, False)]
    assert all(r["classifier_score"] is None and r["prompt_version"] == "rate_document@1" for r in rows)
    [failure] = failures
    assert (failure.stage, failure.item_id, failure.reason, failure.raw) == ("rate", "b", "invalid_json", GARBAGE)
    assert failure.source == "m"


def test_cold_start_examples_vary_and_empty_or_failed_ones_are_quarantined() -> None:
    settings = load_settings(overrides={"filter.cold_start_positives": 5}).filter
    specs = F.example_specs(settings)
    requests = F.example_requests(specs, settings)
    assert len({(s.kind, s.level) for s in specs}) == 5 and len({r.seed for r in requests}) == 5
    assert "exam paper" in requests[1].messages[-1]["content"] and requests[0].json_schema is None
    replies = [
        ChatResult([Completion("Solve 2x + 1 = 5. Subtract 1, divide by 2: x = 2.", "stop")]),
        ChatResult([Completion("   ", "stop")]),
        ChatResult([Completion("", None)], error="engine_unreachable: connection refused"),
        ChatResult([Completion("A long page cut short", "length")]),
        ChatResult([Completion("Solve 2x + 1 = 5. Subtract 1, divide by 2: x = 2.", "stop")]),
    ]
    examples, failures = F.parse_examples(specs, replies, "m")
    assert [(e["kind"], e["level"]) for e in examples] == [(s.kind, s.level) for s in (specs[0], specs[3])]
    assert all(e["doc_id"].startswith("synthetic-") for e in examples)
    assert [(f.item_id, f.reason) for f in failures] == [
        ("example-1", "empty_output"), ("example-2", "engine_unreachable"), ("example-4", "duplicate_output")
    ]


def test_cold_start_examples_cover_different_syllabus_subtopics() -> None:
    """Issue 12: with no syllabus the writer chose its topic and kept writing the same few."""
    settings = load_settings(overrides={"filter.cold_start_positives": 8}).filter
    requests = F.example_requests(F.example_specs(settings), settings)
    shown = [next(t for t in settings.syllabus if t in r.messages[-1]["content"]) for r in requests]
    assert len(set(shown)) == 8
    assert F.example_specs(settings) == F.example_specs(settings)  # seeded: reruns hit the cache
    reseeded = load_settings(overrides={"filter.cold_start_positives": 8, "filter.seed": 1}).filter
    assert [s.subtopic for s in F.example_specs(reseeded)] != [s.subtopic for s in F.example_specs(settings)]
    custom = load_settings(overrides={"filter.cold_start_positives": 4, "filter.syllabus": ["knot theory", "graph colouring"]}).filter
    assert sorted(s.subtopic for s in F.example_specs(custom)) == ["graph colouring"] * 2 + ["knot theory"] * 2


def test_models_score_on_the_rating_scale_and_are_versioned_by_their_data(corpus) -> None:
    settings = load_settings().filter
    math = {d["id"]: d["text"] for d in corpus["math"][:10]}
    web = {d["id"]: d["text"] for d in corpus["web"][:20]}
    cold = F.train_cold_start(math, web, settings)
    unseen_math = [d["text"] for d in corpus["math"][10:]]
    unseen_web = [d["text"] for d in corpus["web"][20:]]
    scores = cold.score(unseen_math + unseen_web)
    assert ((scores >= 1) & (scores <= 10)).all()
    assert np.median(scores[: len(unseen_math)]) > np.median(scores[len(unseen_math):])

    ratings = pl.DataFrame(
        {"doc_id": [*math, *web], "text": [*math.values(), *web.values()], "llm_rating": [9.0] * 10 + [2.0] * 20}
    )
    model = F.train_rating_model(ratings, 1, settings)
    again = F.train_rating_model(ratings.reverse(), 1, settings)
    changed = F.train_rating_model(ratings.with_columns(pl.col("llm_rating").reverse()), 1, settings)
    assert model.version == again.version != changed.version
    restored = F.FilterModel.from_bytes(model.to_bytes())
    np.testing.assert_allclose(restored.score(unseen_math), model.score(unseen_math))
    assert (model.score(unseen_math) > settings.threshold).mean() >= 0.8
    assert (model.score(unseen_web) <= settings.threshold).mean() >= 0.8
    with pytest.raises(F.FilterError, match="usable ratings"):
        F.train_rating_model(ratings.head(1), 1, settings)


def test_rating_sample_mixes_kept_and_fresh_documents_never_rated_twice(store_url, tmp_path, corpus) -> None:
    store = ingest_corpus(store_url, tmp_path, corpus)
    settings = load_settings(overrides={"filter.rate_sample_size": 10}).filter
    kept_ids = [d["id"] for d in corpus["math"][:8]]
    all_ids = [d["id"] for d in corpus["math"] + corpus["web"]]
    store.write_shard("document_scores", "r1-score-x-docs", [
        {"doc_id": d, "round": 1, "classifier_score": 9.0 if d in kept_ids else 2.0, "kept": d in kept_ids,
         "is_synthetic": False, "shard_id": "r1-score-x-docs", "run_id": "t"} for d in all_ids
    ])
    rated_before = corpus["web"][0]["id"]
    store.write_shard("document_scores", "r1-rate-x", [
        {"doc_id": rated_before, "round": 1, "llm_rating": 2.0, "kept": False, "is_synthetic": False,
         "shard_id": "r1-rate-x", "run_id": "t"},
        {"doc_id": kept_ids[0], "round": 1, "llm_rating": 9.0, "kept": True, "is_synthetic": False,
         "shard_id": "r1-rate-x", "run_id": "t"},
    ])
    sample = F.rating_sample(store, settings, 2)
    assert sample == F.rating_sample(store, settings, 2)
    assert len(sample) == len(set(sample)) == 10
    assert rated_before not in sample and kept_ids[0] not in sample
    assert set(sample[:5]) <= set(kept_ids[1:])
    assert not set(sample[5:]) & set(sample[:5])


# --------------------------------------------------------------------------- tasks and the flow
def precision_recall(store: Store, corpus) -> tuple[float, float]:
    kept = set(F.reference_documents(store)["doc_id"].to_list())
    math = {d["id"] for d in corpus["math"]}
    true_positives = len(kept & math)
    return true_positives / max(len(kept), 1), true_positives / len(math)


def test_malformed_ratings_go_to_failures(store_url, tmp_path, corpus, scripted) -> None:
    store = ingest_corpus(store_url, tmp_path, corpus)
    broken = corpus["web"][3]
    scripted.garbage_for = (broken["text"][:200],)
    settings = load_settings(store=store_url)
    mathematical = max(corpus["math"], key=lambda d: math_signal(d["text"][: settings.filter.rater_chars]))
    doc_ids = [mathematical["id"], broken["id"], corpus["web"][4]["id"], "no-such-document"]
    summary = S.rate_documents(store, settings, "run-1", 1, doc_ids)
    assert summary["rated"] == 2 and summary["failures"] == 2
    rows = store.read_table("document_scores", [summary["shard_id"]]).sort("llm_rating")
    assert rows["doc_id"].to_list() == [corpus["web"][4]["id"], mathematical["id"]]
    assert rows["llm_rating"].to_list() == [2.0, 9.0] and rows["kept"].to_list() == [False, True]
    failures = store.read_table("failures").filter(pl.col("stage") == "rate")
    by_doc = {row["item_id"]: row for row in failures.iter_rows(named=True)}
    assert (by_doc[broken["id"]]["reason"], by_doc[broken["id"]]["raw"]) == ("invalid_json", GARBAGE)
    assert by_doc["no-such-document"]["reason"] == "missing_document"
    calls = dict(scripted.calls)
    assert S.rate_documents(store, settings, "run-2", 1, doc_ids)["skipped"]
    assert scripted.calls == calls


def test_flow_keeps_mathematics_and_resumes_without_the_llm(prefect_harness, store_url, tmp_path, corpus, scripted):
    from flows.filter_references import filter_references_flow

    store = ingest_corpus(store_url, tmp_path, corpus)
    summary = filter_references_flow(store=store_url, rounds=2, rate_sample_size=16)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["examples"] == rounds[0]["examples_kept"] == load_settings().filter.cold_start_positives
    assert all(r["scored"] == 70 for r in rounds)
    assert [(r["new_ratings"], r["rated"], r["rate_failures"]) for r in rounds[1:]] == [(16, 16, 0)] * 2
    scores = store.read_table("document_scores")
    assert sorted(scores["round"].unique().to_list()) == [0, 1, 2]
    rated = scores.filter(pl.col("classifier_score").is_null())
    assert rated.height == 32 and rated["doc_id"].n_unique() == 32  # never rated twice
    assert all(store.exists(F.model_path(store, k)) for k in (0, 1, 2))
    precision, recall = precision_recall(store, corpus)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    # the classifier, not the rater, found part of the kept set, and found it right
    never_rated = set(F.reference_documents(store)["doc_id"].to_list()) - set(rated["doc_id"].to_list())
    assert len(never_rated) >= 3 and never_rated <= {d["id"] for d in corpus["math"]}

    calls = dict(scripted.calls)
    again = filter_references_flow(store=store_url, rounds=2, rate_sample_size=16)
    assert scripted.calls == calls
    assert [r["new_ratings"] for r in again["rounds"]] == [0, 0, 0]
    assert [(r["version"], r["kept"]) for r in again["rounds"]] == [(r["version"], r["kept"]) for r in rounds]
    assert store.read_table("document_scores").sort("doc_id", "round", "shard_id").equals(
        scores.sort("doc_id", "round", "shard_id")
    )

    fewer = filter_references_flow(store=store_url, rounds=1, rate_sample_size=16)
    assert scripted.calls == calls
    assert [r["round"] for r in fewer["rounds"]] == [0, 1]
    assert store.read_table("document_scores")["round"].max() == 1
    assert not store.exists(F.model_path(store, 2))
    assert fewer["reference_documents"] == F.round_counts(store, 1)["kept"]


def test_a_second_filter_run_on_a_store_waits_or_names_the_holder(prefect_harness, store_url, tmp_path, corpus,
                                                                   scripted):
    """Two filter runs on one store used to run at once: both asked the LLM for the same ratings,
    and each pruned as stale the shards the other wrote. Now they hold the store's ``filter`` lease."""
    from flows.filter_references import filter_references_flow
    from synthllm.lease import LeaseHeld, acquire

    store = ingest_corpus(store_url, tmp_path, corpus)
    with acquire(store, "filter", "run-z", ttl_s=30):
        with pytest.raises(LeaseHeld, match=r"lease 'filter' on store .* is held by run-z"):
            filter_references_flow(store=store_url, rounds=1, rate_sample_size=16,
                                   overrides={"orchestration.lease_wait_s": 0})
    assert scripted.calls == {"rate": 0, "write": 0} and not store.shard_ids("document_scores")


def test_a_filter_run_whose_lease_was_taken_prunes_nothing(prefect_harness, store_url, tmp_path, corpus, scripted,
                                                           monkeypatch):
    """A filter run that stalled past ``lease_ttl_s`` while another took its lease stops before it
    prunes a round or trains on it: what the new holder writes stays."""
    import time

    from flows.filter_references import filter_references_flow
    from synthllm.lease import LeaseLost, LeaseRecord, holder, lease_path

    store = ingest_corpus(store_url, tmp_path, corpus)
    thief = LeaseRecord("filter", "run-z", "tz", "2024-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00")
    rate = CorpusLLM.__call__

    def stalled(self: CorpusLLM, request: ChatRequest) -> str:
        if self.calls["rate"] == 0 and DOCUMENT.search(request.messages[-1]["content"]):
            store.write_bytes(lease_path(store, "filter"), thief.encode())
            time.sleep(1.5)  # renewals every 0.2 s notice it
        return rate(self, request)

    monkeypatch.setattr(CorpusLLM, "__call__", stalled)
    with pytest.raises(LeaseLost, match=r"lease 'filter' on store .* was lost \(taken over by run-z\)"):
        filter_references_flow(store=store_url, rounds=1, rate_sample_size=16,
                               overrides={"orchestration.lease_ttl_s": 0.6})
    assert scripted.calls["rate"] > 0 and not store.exists(F.model_path(store, 1))  # round 1 not trained
    assert holder(store, "filter").owner == "run-z"
