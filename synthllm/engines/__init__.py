"""LLM engines behind one batch interface (see docs/engines.md).

Stages build :class:`ChatRequest` lists and call :meth:`LLM.run`; :func:`make_engine` picks the
backend (``llamacpp``, ``openai`` or ``vllm``) from ``EngineSettings``.
"""

from synthllm.engines.base import ChatRequest, ChatResult, Completion, Engine
from synthllm.engines.client import LLM, usage_summary
from synthllm.engines.registry import make_engine
from synthllm.engines.scripted import ScriptedEngine

__all__ = ["ChatRequest", "ChatResult", "Completion", "Engine", "LLM", "make_engine", "ScriptedEngine", "usage_summary"]
