"""LLM engines behind one batch interface (see docs/engines.md).

Stages build :class:`ChatRequest` lists and call :meth:`LLM.run`; :func:`make_engine` picks the
backend (``llamacpp``, ``openai`` or ``vllm``) from ``EngineSettings``. :func:`request_stop` ends
every batch of the process soon (``LLM.run`` then raises :class:`RunStopped`).
"""

from synthllm.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    Engine,
    EngineAuthError,
    RunStopped,
    clear_stop,
    request_stop,
    stop_requested,
)
from synthllm.engines.client import LLM, usage_summary
from synthllm.engines.registry import make_engine
from synthllm.engines.scripted import ScriptedEngine

__all__ = [
    "LLM",
    "ChatRequest",
    "ChatResult",
    "Completion",
    "Engine",
    "EngineAuthError",
    "RunStopped",
    "ScriptedEngine",
    "clear_stop",
    "make_engine",
    "request_stop",
    "stop_requested",
    "usage_summary",
]
