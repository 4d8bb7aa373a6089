"""The process's engines, as the stages open them: the registry's one engine per settings, or one
installed by hand, wrapped in an :class:`LLM` for the store at hand.

Loading weights is the expensive part (vLLM holds the GPU for the process's life), so every
shard task of a worker process shares one engine (``registry.make_engine`` caches it). In-process
engines (one model in this process's memory) serve one batch at a time; shard tasks on other
threads wait for it, while servers behind the ``openai`` backend take batches in parallel.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

from synthllm.engines.base import Engine
from synthllm.engines.client import LLM
from synthllm.engines.registry import engine_model_id, make_engine
from synthllm.settings import EngineSettings
from synthllm.store import Store, stable_hash

IN_PROCESS_BACKENDS = ("llamacpp", "vllm")


def _key(engine_settings: EngineSettings) -> str:
    return stable_hash(engine_settings.model_dump(mode="json", exclude={"api_key"}))


class EnginePool:
    """Engines installed by hand take precedence over the registry's; one batch lock per in-process engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed: dict[str, Engine] = {}
        self._batch_locks: dict[int, threading.Lock] = {}

    def install(self, engine_settings: EngineSettings, engine: Engine) -> Engine:
        """Serve ``engine_settings`` with an engine built elsewhere (a scripted engine in tests, an
        engine shared with other code in a notebook)."""
        with self._lock:
            self._installed[_key(engine_settings)] = engine
        return engine

    def engine(self, engine_settings: EngineSettings) -> Engine:
        with self._lock:
            installed = self._installed.get(_key(engine_settings))
        return installed if installed is not None else make_engine(engine_settings)

    def open(self, store: Store, engine_settings: EngineSettings) -> LLM:
        return LLM(self.engine(engine_settings), store, engine_settings)

    def model_id(self, store: Store, engine_settings: EngineSettings) -> str:
        """The model id rows carry: an installed engine's own, else the registry's answer, which
        loads nothing (planning runs where no engine may be)."""
        with self._lock:
            installed = self._installed.get(_key(engine_settings))
        return installed.model_id if installed is not None else engine_model_id(engine_settings)

    def batch_slot(self, llm: LLM) -> AbstractContextManager:
        """Held while a batch runs on an in-process engine; a no-op for servers."""
        if llm.engine.backend not in IN_PROCESS_BACKENDS:
            return nullcontext()
        with self._lock:
            return self._batch_locks.setdefault(id(llm.engine), threading.Lock())


POOL = EnginePool()
install_engine = POOL.install
model_id = POOL.model_id
