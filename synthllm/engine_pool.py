"""The process's engines: one :class:`LLM` per (store, engine settings), opened on first use.

Loading weights is the expensive part (vLLM holds the GPU for the process's life), so every
shard task of a worker process shares one instance. In-process engines (one model in this
process's memory) serve one batch at a time; shard tasks on other threads wait for it, while
servers behind the ``openai`` backend take batches in parallel.
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


class EnginePool:
    """One cache of open engines with one lock; the batch lock of an in-process engine lives beside it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._llms: dict[str, LLM] = {}
        self._batch_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def key(store: Store, engine_settings: EngineSettings) -> str:
        return stable_hash(engine_settings.model_dump(mode="json", exclude={"api_key"}), store.url)

    def install(self, store: Store, engine_settings: EngineSettings, engine: Engine) -> LLM:
        """Serve ``engine_settings`` with an engine object built elsewhere (a scripted engine in
        tests, an engine shared with other code in a notebook)."""
        llm = LLM(engine, store, engine_settings)
        with self._lock:
            self._llms[self.key(store, engine_settings)] = llm
        return llm

    def open(self, store: Store, engine_settings: EngineSettings) -> LLM:
        key = self.key(store, engine_settings)
        with self._lock:
            if key not in self._llms:
                self._llms[key] = LLM(make_engine(engine_settings), store, engine_settings)
            return self._llms[key]

    def model_id(self, store: Store, engine_settings: EngineSettings) -> str:
        """The model id rows carry: the open engine's own, else the registry's answer, which loads
        nothing (planning runs where no engine may be)."""
        with self._lock:
            llm = self._llms.get(self.key(store, engine_settings))
        return llm.engine.model_id if llm is not None else engine_model_id(engine_settings)

    def batch_slot(self, llm: LLM) -> AbstractContextManager:
        """Held while a batch runs on an in-process engine; a no-op for servers."""
        if llm.engine.backend not in IN_PROCESS_BACKENDS:
            return nullcontext()
        with self._lock:
            return self._batch_locks.setdefault(str(id(llm)), threading.Lock())


POOL = EnginePool()
install_engine = POOL.install
model_id = POOL.model_id
