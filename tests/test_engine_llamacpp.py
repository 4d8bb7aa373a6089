"""The llamacpp backend on the real SmolLM2-135M GGUF, through the LLM client layer."""

from __future__ import annotations

import threading
import time

import pytest
from openai_pipeline import user

from synthllm.engines import LLM, make_engine
from synthllm.engines.base import RunStopped, clear_stop, request_stop
from synthllm.engines.client import RETRIED_REASONS
from synthllm.engines.llamacpp_backend import LlamaCppEngine
from synthllm.engines.registry import gguf_path
from synthllm.settings import EngineSettings
from synthllm.store import Store

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration

N_CTX = 512
QUESTIONS_SCHEMA = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}},
    "required": ["questions"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def settings() -> EngineSettings:
    return EngineSettings(backend="llamacpp", n_ctx=N_CTX, max_parse_retries=1, cache_flush_every=2)


def test_engine_is_loaded_once_per_settings(settings):
    engine = make_engine(settings)
    assert isinstance(engine, LlamaCppEngine) and engine.model_id == "smollm2-135m-instruct"
    assert make_engine(settings) is engine
    assert make_engine(settings.model_copy(update={"model": str(gguf_path(settings.model))})).model_id.endswith(".gguf")


def test_batch_with_schema_output_tokens_and_cache(settings, store_url):
    store = Store(store_url)
    requests = [
        user("What is 2 + 2? Answer in one short sentence.", temperature=0.0, max_tokens=24, seed=1),
        user("Name one prime number.", temperature=0.0, max_tokens=16, seed=2),
        user(
            "Write two short questions about fractions. Reply as JSON with a list 'questions'.",
            temperature=0.7,
            max_tokens=64,
            seed=3,
            json_schema=QUESTIONS_SCHEMA,
        ),
        user(" ".join(["long"] * (N_CTX + 50)), max_tokens=8),  # cannot fit the context
    ]
    llm = LLM(make_engine(settings), store, settings)
    results = llm.run(requests, stage="probe", shard_id="s0", run_id="r1")

    assert len(results) == 4
    too_long = results[3]
    assert too_long.error.startswith("prompt_too_long")
    for request, result in zip(requests[:3], results[:3]):
        assert result.ok or result.error.split(":")[0] in RETRIED_REASONS, result.error
        assert result.completions and result.prompt_tokens > 0
        assert 0 < result.completion_tokens <= request.max_tokens
    schema_result = results[2]
    if schema_result.ok:
        assert 1 <= len(schema_result.parsed["questions"]) <= 2
    else:  # the raw reply is kept for the failures table
        assert schema_result.text
    assert results[0].ok and "4" in results[0].text

    [usage] = store.read_table("llm_usage").to_dicts()
    assert usage["requests"] == 4 and usage["cached"] == 0
    assert usage["calls"] >= 4
    assert usage["prompt_tokens"] >= sum(r.prompt_tokens for r in results[:3])
    assert usage["completion_tokens"] >= sum(r.completion_tokens for r in results[:3])

    rerun = llm.run(requests, stage="probe", shard_id="s0", run_id="r2")
    assert [r.cached for r in rerun] == [r.ok for r in results]
    assert [r.text for r in rerun if r.cached] == [r.text for r in results if r.ok]
    [usage] = store.read_table("llm_usage").to_dicts()
    assert usage["cached"] == sum(r.ok for r in results)


def test_stop_request_ends_a_batch_within_seconds_and_rerun_resumes(settings, store_url):
    """A stop is seen between tokens: the batch ends mid-reply; finished replies are cached."""
    store = Store(store_url)
    short = [user(f"Name one prime number bigger than {i}.", temperature=0.0, max_tokens=48, seed=i) for i in (1, 2)]
    long_reply = user("Write a very long story about numbers.", temperature=0.7, max_tokens=N_CTX - 64, seed=3)
    llm = LLM(make_engine(settings), store, settings)
    outcome: dict = {}

    def run_batch() -> None:
        try:
            llm.run([short[0], long_reply, short[1]], stage="probe", shard_id="stop", run_id="r1")
        except RunStopped:
            outcome["stopped_at"] = time.perf_counter()

    thread = threading.Thread(target=run_batch)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not store.glob(store.path("cache", "llm", "probe", "stop", "*")) and time.monotonic() < deadline:
            time.sleep(0.02)  # the short reply is stored as soon as it is made: the long one has begun
        asked_at = time.perf_counter()
        request_stop()
        thread.join(60)
    finally:
        clear_stop()
    assert "stopped_at" in outcome and outcome["stopped_at"] - asked_at < 3

    rerun = llm.run(short, stage="probe", shard_id="stop", run_id="r2")
    assert [r.cached for r in rerun] == [True, False]
    [usage] = store.read_table("llm_usage", ["probe-stop"]).to_dicts()
    assert (usage["calls"], usage["cached"]) == (1, 1)
