"""LLM client layer on the scripted engine: structured output, retries, cache, resume, usage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from synthllm.engines import (
    LLM,
    ChatRequest,
    ChatResult,
    Completion,
    ScriptedEngine,
    usage_summary,
)
from synthllm.engines.base import RunStopped, clear_stop, request_stop
from synthllm.engines.client import retry_seed
from synthllm.settings import EngineSettings
from synthllm.store import Store, StoreError

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer"},
        "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["answer"],
    "additionalProperties": False,
}


def settings(**overrides) -> EngineSettings:
    return EngineSettings(**{"max_parse_retries": 2, "cache_flush_every": 2, **overrides})


def ask(question: str, *, seed: int | None = 7, schema=SCHEMA, **kwargs) -> ChatRequest:
    return ChatRequest.of(
        [{"role": "user", "content": question}], seed=seed, json_schema=schema, **{"temperature": 0.7, **kwargs}
    )


def question_of(request: ChatRequest) -> str:
    return request.messages[-1]["content"]


def answer_with_number(request: ChatRequest) -> str:
    """A valid reply that depends on the question: '12' -> {"answer": 12}."""
    return json.dumps({"answer": int(question_of(request))})


def run(llm: LLM, requests: list[ChatRequest], shard_id: str = "s1", run_id: str = "run-a") -> list[ChatResult]:
    return llm.run(requests, stage="level1", shard_id=shard_id, run_id=run_id)


@pytest.fixture
def store(store_url: str) -> Store:
    return Store(store_url)


def test_valid_json_is_parsed_with_whitespace_and_fence_tolerated(store):
    replies = {"1": ' \n{"answer": 1}\n ', "2": '```json\n{"answer": 2, "steps": ["a"]}\n```', "3": '{"answer": 3}'}
    engine = ScriptedEngine(lambda request: replies[question_of(request)])
    results = run(LLM(engine, store, settings()), [ask(q) for q in replies])
    assert [r.parsed for r in results] == [{"answer": 1}, {"answer": 2, "steps": ["a"]}, {"answer": 3}]
    assert all(r.ok and r.attempts == 1 and not r.cached for r in results)
    assert engine.calls == 3


def test_schema_mismatch_retried_with_new_seeds_then_recorded_with_raw_text(store):
    engine = ScriptedEngine(lambda request: '{"answer": "many"}')
    [result] = run(LLM(engine, store, settings(max_parse_retries=2)), [ask("5", seed=11)])
    assert not result.ok
    assert result.error.startswith("schema_mismatch: ")
    assert result.text == '{"answer": "many"}'
    assert result.attempts == 3
    assert [r.seed for r in engine.requests] == [11, retry_seed(11, 1), retry_seed(11, 2)]
    assert len({r.seed for r in engine.requests}) == 3


def test_only_failed_items_are_retried_and_a_retry_can_succeed(store):
    def responder(request: ChatRequest) -> str:
        if question_of(request) == "2" and request.seed == 7:
            return '{"answer": 2'  # cut JSON on the first try only
        return answer_with_number(request)

    engine = ScriptedEngine(responder)
    results = run(LLM(engine, store, settings()), [ask("1"), ask("2"), ask("3")])
    assert [r.parsed for r in results] == [{"answer": 1}, {"answer": 2}, {"answer": 3}]
    assert [r.attempts for r in results] == [1, 2, 1]
    assert [question_of(r) for r in engine.requests] == ["1", "2", "3", "2"]


def test_invalid_json_error_names_the_reason(store):
    engine = ScriptedEngine(lambda request: "The answer is 4.")
    [result] = run(LLM(engine, store, settings(max_parse_retries=0)), [ask("4")])
    assert result.error.startswith("invalid_json: ")
    assert result.text == "The answer is 4."
    assert engine.calls == 1


def test_truncated_output_is_retried_then_reported(store):
    long_reply = json.dumps({"answer": 1, "steps": ["x" * 200]})
    engine = ScriptedEngine(lambda request: long_reply)
    results = run(
        LLM(engine, store, settings(max_parse_retries=1)),
        [ask("1", max_tokens=8), ask("free text", schema=None, max_tokens=8)],
    )
    for result in results:
        assert result.error.startswith("truncated: ")
        assert result.finish_reason == "length"
        assert result.attempts == 2
    assert engine.calls == 4


def test_complete_json_padded_to_max_tokens_is_accepted(store):
    engine = ScriptedEngine(lambda request: '{"answer": 9}' + " " * 100)
    [result] = run(LLM(engine, store, settings()), [ask("9", max_tokens=10)])
    assert result.ok and result.parsed == {"answer": 9} and result.finish_reason == "length"


def test_greedy_requests_are_not_retried(store):
    engine = ScriptedEngine(lambda request: "not json")
    [result] = run(LLM(engine, store, settings(max_parse_retries=3)), [ask("1", temperature=0.0)])
    assert result.error.startswith("invalid_json") and engine.calls == 1


def test_n_completions_keep_the_valid_ones(store):
    replies = iter(['{"answer": "x"}', '{"answer": 2}', "oops", "no", "nope", "never"])
    engine = ScriptedEngine(lambda request: next(replies))
    ok, failed = run(LLM(engine, store, settings(max_parse_retries=0)), [ask("2", n=3), ask("3", n=3)])
    assert ok.ok and [c.parsed for c in ok.completions] == [{"answer": 2}]
    assert not failed.ok and [c.text for c in failed.completions] == ["no", "nope", "never"]
    assert failed.error.startswith("invalid_json")


def test_rerun_is_answered_from_the_cache(store):
    requests = [ask(str(i)) for i in range(5)] + [ask("bad")]

    def responder(request: ChatRequest) -> str:
        return "garbage" if question_of(request) == "bad" else answer_with_number(request)

    first = run(LLM(ScriptedEngine(responder), store, settings(max_parse_retries=0)), requests)
    rerun_engine = ScriptedEngine(responder)
    second = run(LLM(rerun_engine, store, settings(max_parse_retries=0)), requests, run_id="run-b")
    assert [r.parsed for r in second] == [r.parsed for r in first]
    assert [r.cached for r in second] == [True] * 5 + [False]
    # only the failed item (never cached) is asked again
    assert [question_of(r) for r in rerun_engine.requests] == ["bad"]
    # 5 valid results were flushed in parts of 2; the finished shard compacted them to one file
    files = store.glob(store.path("cache", "llm", "level1", "s1", "*"))
    assert [f.rsplit("/", 1)[1].split("-")[0] for f in files] == ["shard"]


def test_cache_key_covers_sampling_and_model(store):
    engine = ScriptedEngine(answer_with_number)
    run(LLM(engine, store, settings()), [ask("1")])
    run(LLM(engine, store, settings()), [ask("1", seed=8), ask("1", max_tokens=99), ask("1", schema=None)])
    other_model = ScriptedEngine(answer_with_number, model_id="other")
    run(LLM(other_model, store, settings()), [ask("1")])
    assert engine.calls == 4
    assert other_model.calls == 1


def test_identical_requests_are_sent_once(store):
    engine = ScriptedEngine(answer_with_number)
    results = run(LLM(engine, store, settings()), [ask("3"), ask("3"), ask("4")])
    assert [r.parsed for r in results] == [{"answer": 3}, {"answer": 3}, {"answer": 4}]
    assert results[0] is not results[1]
    assert engine.calls == 2


class BatchOnly:
    """An engine written elsewhere: ``generate(requests)`` without ``on_result``."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine, self.backend, self.model_id = engine, engine.backend, engine.model_id

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.engine.generate(requests)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("wrap", "stored"),
    [
        (lambda engine: engine, 5),  # every result is cached as it is made
        (BatchOnly, 4),  # chunks of 2: the crash hit the third chunk, so 4 results were stored
    ],
    ids=["on_result", "batch_only"],
)
def test_engine_exception_keeps_finished_results_and_rerun_resumes(store, wrap, stored):
    calls_before_crash = 5

    def dying(request: ChatRequest) -> str:
        if dying.calls == calls_before_crash:
            raise ConnectionError("engine died")
        dying.calls += 1
        return answer_with_number(request)

    dying.calls = 0
    requests = [ask(str(i)) for i in range(10)]
    with pytest.raises(ConnectionError):
        run(LLM(wrap(ScriptedEngine(dying)), store, settings()), requests)
    resumed = ScriptedEngine(answer_with_number)
    results = run(LLM(resumed, store, settings()), requests)
    assert [r.parsed["answer"] for r in results] == list(range(10))
    assert sum(r.cached for r in results) == stored
    assert resumed.calls == 10 - stored


def test_process_killed_mid_batch_resumes_from_flushed_parts(store):
    """A real kill (os._exit, no cleanup): parts flushed before it are reused by the rerun."""
    script = textwrap.dedent(
        f"""
        import json, os
        import synthllm.engines.cache
        from synthllm.engines import LLM, ChatRequest, ScriptedEngine
        from synthllm.settings import EngineSettings
        from synthllm.store import Store, StoreError

        synthllm.engines.cache.MIN_FLUSH_GAP_S = 0.0  # a part every cache_flush_every replies, however fast

        calls = 0
        def responder(request):
            global calls
            calls += 1
            if calls == 6:
                os._exit(9)
            return json.dumps({{"answer": int(request.messages[-1]["content"])}})

        requests = [ChatRequest.of([{{"role": "user", "content": str(i)}}], seed=7, temperature=0.7,
                                   json_schema=json.loads({json.dumps(SCHEMA)!r})) for i in range(9)]
        llm = LLM(ScriptedEngine(responder), Store({store.url!r}), EngineSettings(cache_flush_every=2))
        llm.run(requests, stage="level1", shard_id="s1", run_id="killed")
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    resumed = ScriptedEngine(answer_with_number)
    results = run(LLM(resumed, store, settings()), [ask(str(i)) for i in range(9)])
    assert [r.parsed["answer"] for r in results] == list(range(9))
    assert sum(r.cached for r in results) == 4
    assert [question_of(r) for r in resumed.requests] == [str(i) for i in range(4, 9)]


def test_engine_errors_pass_through_without_retry(store):
    class DeadServer(ScriptedEngine):
        def generate(self, requests):
            self.calls += len(requests)
            return [ChatResult(error="engine_unreachable: connection refused") for _ in requests]

    engine = DeadServer(answer_with_number)
    results = run(LLM(engine, store, settings()), [ask("1"), ask("2")])
    assert [r.error for r in results] == ["engine_unreachable: connection refused"] * 2
    assert engine.calls == 2
    assert store.glob(store.path("cache", "llm", "level1", "s1", "*")) == []


def test_usage_row_counts_calls_retries_cache_and_tokens(store):
    def responder(request: ChatRequest) -> str:
        return "garbage" if question_of(request) == "bad" else answer_with_number(request)

    requests = [ask("1"), ask("22"), ask("bad")]
    engine = ScriptedEngine(responder)
    run(LLM(engine, store, settings(max_parse_retries=1)), requests, run_id="run-a")
    [row] = store.read_table("llm_usage").to_dicts()
    assert row["stage"] == "level1" and row["shard_id"] == "level1-s1" and row["run_id"] == "run-a"
    assert (row["backend"], row["model"]) == ("scripted", "scripted")
    assert (row["requests"], row["calls"], row["cached"], row["failures"]) == (3, 4, 0, 1)
    expected_completion_tokens = sum(-(-len(responder(r)) // 4) for r in engine.requests)
    assert row["completion_tokens"] == expected_completion_tokens
    assert row["prompt_tokens"] == 4  # one token per question (1-3 chars), 4 calls
    assert row["seconds"] > 0

    run(LLM(ScriptedEngine(responder), store, settings(max_parse_retries=1)), requests, shard_id="s2", run_id="run-b")
    run(LLM(ScriptedEngine(responder), store, settings(max_parse_retries=1)), requests, shard_id="s2", run_id="run-c")
    # one row per (stage, shard): run-c's row replaces run-b's
    summary = usage_summary(store).sort("run_id")
    assert summary["run_id"].to_list() == ["run-a", "run-c"]
    assert summary["calls"].to_list() == [4, 2]  # run-c: 2 cache hits, the bad item retried
    assert summary["cached"].to_list() == [0, 2]
    assert summary["failures"].to_list() == [1, 1]


def test_without_a_store_nothing_is_written_or_cached(tmp_path):
    engine = ScriptedEngine(answer_with_number)
    llm = LLM(engine, None, settings())
    assert run(llm, [ask("1")])[0].parsed == {"answer": 1}
    assert run(llm, [ask("1")])[0].cached is False
    assert engine.calls == 2


def test_bad_input_fails_before_any_engine_call(store):
    engine = ScriptedEngine(answer_with_number)
    with pytest.raises(ValueError, match="invalid json_schema"):
        run(LLM(engine, store, settings()), [ask("1", schema={"type": "no-such-type"})])
    with pytest.raises(StoreError, match="invalid shard id"):
        run(LLM(engine, store, settings()), [ask("1")], shard_id="a/b")
    assert engine.calls == 0


def test_engine_breaking_the_length_contract_is_an_error(store):
    class Short(ScriptedEngine):
        def generate(self, requests):
            return [ChatResult(completions=[Completion("{}", "stop")])]

    with pytest.raises(RuntimeError, match="returned 1 results for 2 requests"):
        run(LLM(Short(answer_with_number), store, settings()), [ask("1"), ask("2")])


# --------------------------------------------------------------------------- cache: flushing, compaction, bad files
def cache_files(store: Store, shard_id: str = "s1") -> list[str]:
    return [f.rsplit("/", 1)[1] for f in store.glob(store.path("cache", "llm", "level1", shard_id, "*"))]


def test_cache_flushes_on_time_while_replies_are_slow(any_store):
    """Fewer than cache_flush_every replies still reach the store within cache_flush_interval_s."""
    seen_in_store: list[int] = []

    def slow(request: ChatRequest) -> str:
        if question_of(request) == "3":  # the third reply is slow: the first two must be stored meanwhile
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not cache_files(any_store):
                time.sleep(0.05)
            parts = any_store.glob(any_store.path("cache", "llm", "level1", "s1", "part-*.parquet"))
            seen_in_store.append(sum(any_store.read_parquet_file(p).num_rows for p in parts))
        return answer_with_number(request)

    engine = ScriptedEngine(slow)
    llm = LLM(engine, any_store, settings(cache_flush_every=100, cache_flush_interval_s=0.2))
    run(llm, [ask("1"), ask("2"), ask("3")])
    assert seen_in_store == [2]


def test_fast_replies_are_flushed_in_few_large_parts(any_store):
    """Thousands of replies a second: parts are MIN_FLUSH_GAP_S apart, not one per cache_flush_every
    replies (each part is an S3 request), and none is lost."""
    from synthllm.engines.cache import MIN_FLUSH_GAP_S, ResponseCache

    cache = ResponseCache(any_store, "level1", "s1", "model", flush_every=2, flush_interval_s=30)
    reply = ChatResult(completions=[Completion(text="{}", finish_reason="stop")])
    started = time.monotonic()
    for i in range(400):
        cache.put(f"k{i}", reply)
    elapsed = time.monotonic() - started
    cache.close()
    parts = cache_files(any_store)
    assert len(parts) <= 2 + elapsed / MIN_FLUSH_GAP_S < 200, (len(parts), elapsed)
    rows = sum(any_store.read_parquet_file(any_store.path("cache", "llm", "level1", "s1", p)).num_rows for p in parts)
    assert rows == 400


def test_finished_shard_is_compacted_and_a_rerun_adds_to_it(any_store):
    engine = ScriptedEngine(answer_with_number)
    run(LLM(engine, any_store, settings()), [ask(str(i)) for i in range(5)])
    [first] = cache_files(any_store)
    assert first.startswith("shard-")
    results = run(LLM(engine, any_store, settings()), [ask(str(i)) for i in range(8)], run_id="run-b")
    assert [r.cached for r in results] == [True] * 5 + [False] * 3
    [second] = cache_files(any_store)
    assert second.startswith("shard-") and second != first
    assert any_store.read_parquet_file(any_store.path("cache", "llm", "level1", "s1", second)).num_rows == 8
    assert engine.calls == 8


def test_interrupted_compaction_leaves_readable_duplicates(any_store):
    """Parts and the compacted file side by side (killed between write and delete): deduped by key."""
    engine = ScriptedEngine(answer_with_number)
    requests = [ask(str(i)) for i in range(4)]
    llm = LLM(engine, any_store, settings())
    run(llm, requests)
    folder = any_store.path("cache", "llm", "level1", "s1")
    [compacted] = any_store.glob(f"{folder}/*")
    any_store.write_bytes(f"{folder}/part-copy.parquet", any_store.read_bytes(compacted))
    results = run(llm, requests, run_id="run-b")
    assert all(r.cached for r in results) and engine.calls == 4
    assert len(cache_files(any_store)) == 1


def test_corrupt_cache_part_is_a_recorded_miss(any_store):
    engine = ScriptedEngine(answer_with_number)
    requests = [ask(str(i)) for i in range(4)]
    run(LLM(engine, any_store, settings()), requests[:2])
    folder = any_store.path("cache", "llm", "level1", "s1")
    [good] = any_store.glob(f"{folder}/*")
    data = any_store.read_bytes(good)
    bad = f"{folder}/part-truncated.parquet"
    any_store.write_bytes(bad, data[: len(data) // 2])

    problems: list = []
    llm = LLM(engine, any_store, settings())
    results = llm.run(requests, stage="level1", shard_id="s1", run_id="run-b", problems=problems)
    assert [r.parsed["answer"] for r in results] == [0, 1, 2, 3]
    assert [r.cached for r in results] == [True, True, False, False]
    [problem] = problems
    assert (problem.stage, problem.reason, problem.source) == ("level1", "cache_unreadable", bad)
    assert bad in problem.detail
    # kept for inspection under another name, out of every later lookup
    assert min(cache_files(any_store)) == "part-truncated.parquet.corrupt"
    problems = []
    llm.run(requests, stage="level1", shard_id="s1", run_id="run-c", problems=problems)
    assert problems == [] and engine.calls == 4


# --------------------------------------------------------------------------- stopping a run
@pytest.fixture
def stop_flag():
    yield request_stop
    clear_stop()


def test_stop_request_mid_batch_keeps_received_replies_and_rerun_resumes(store, stop_flag):
    def stop_after_third(request: ChatRequest) -> str:
        if question_of(request) == "2":
            stop_flag()  # a signal handler would call this from the main thread
        return answer_with_number(request)

    engine = ScriptedEngine(stop_after_third)
    requests = [ask(str(i)) for i in range(10)]
    with pytest.raises(RunStopped, match="stop requested"):
        run(LLM(engine, store, settings(cache_flush_every=100)), requests)
    assert engine.calls == 3
    clear_stop()
    resumed = ScriptedEngine(answer_with_number)
    results = run(LLM(resumed, store, settings()), requests, run_id="run-b")
    assert [r.cached for r in results] == [True] * 3 + [False] * 7
    assert [question_of(r) for r in resumed.requests] == [str(i) for i in range(3, 10)]


def test_stop_requested_before_a_run_makes_no_engine_call(store, stop_flag):
    stop_flag()
    engine = BatchOnly(ScriptedEngine(answer_with_number))
    with pytest.raises(RunStopped):
        run(LLM(engine, store, settings()), [ask("1")])
    assert engine.engine.calls == 0


def test_request_key_hashes_the_same_text_as_stable_hash() -> None:
    """Keys of stored caches stay valid: the key is stable_hash of the request's parts, though the
    schema's JSON is cached by identity; an equal schema in another object gives the same key,
    a different schema another key."""
    from synthllm.engines.cache import request_key
    from synthllm.store import stable_hash

    request = ChatRequest.of([{"role": "user", "content": "héllo \"x\""}], seed=7, n=2, json_schema=SCHEMA)
    parts = ("standin", "m", [dict(m) for m in request.messages], float(request.temperature),
             float(request.top_p), request.max_tokens, request.n, request.seed, request.json_schema)
    assert request_key("standin", "m", request) == stable_hash(*parts, length=32)
    copy = ChatRequest.of(list(request.messages), seed=7, n=2, json_schema=json.loads(json.dumps(SCHEMA)))
    assert request_key("standin", "m", copy) == request_key("standin", "m", request)
    other = ChatRequest.of(list(request.messages), seed=7, n=2, json_schema={**SCHEMA, "required": []})
    assert request_key("standin", "m", other) != request_key("standin", "m", request)
    unconstrained = ChatRequest.of(list(request.messages), seed=7, n=2)
    assert request_key("standin", "m", unconstrained) == stable_hash(*parts[:-1], None, length=32)
