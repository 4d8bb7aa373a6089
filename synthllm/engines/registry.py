"""Model registry and engine factory: ``EngineSettings`` in, the configured backend out.

Why one engine per process and settings: loading weights is the expensive part (and vLLM holds
the GPU for the process's life), so every task of a worker process shares one instance.
Backends are imported only when chosen, so a machine without vLLM runs the other two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from synthllm.engines.base import Engine
from synthllm.engines.convert_gguf import SMOLLM2_NAME, smollm2_gguf_path
from synthllm.settings import EngineSettings

# Models shipped as Python packages (no download at run time): registry name -> GGUF locator.
EMBEDDED_GGUF: dict[str, Callable[[], Path]] = {SMOLLM2_NAME: smollm2_gguf_path}

_engines: dict[tuple[str, str], Engine] = {}
_engines_lock = threading.Lock()


def gguf_path(model: str) -> Path:
    """The GGUF file of a registry name (e.g. ``smollm2-135m-instruct``) or of a ``.gguf`` path."""
    if model in EMBEDDED_GGUF:
        return EMBEDDED_GGUF[model]()
    path = Path(model).expanduser()
    if path.suffix.lower() != ".gguf":
        raise ValueError(
            f"llamacpp backend: unknown model {model!r}; use a registry name "
            f"({', '.join(sorted(EMBEDDED_GGUF))}) or a path to a .gguf file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"llamacpp backend: GGUF file not found: {path}")
    return path.resolve()


def gguf_model_id(model: str) -> str:
    """Provenance name of a GGUF model: the registry name, or the file name (not the folder it sits in)."""
    return model if model in EMBEDDED_GGUF else Path(model).name


def make_engine(settings: EngineSettings) -> Engine:
    """The process's engine for these settings, created on first use."""
    key = (settings.model_dump_json(exclude={"api_key"}), settings.api_key.get_secret_value())
    with _engines_lock:
        if key not in _engines:
            _engines[key] = _create_engine(settings)
        return _engines[key]


def _create_engine(settings: EngineSettings) -> Engine:
    if settings.backend == "llamacpp":
        from synthllm.engines.llamacpp_backend import LlamaCppEngine

        return LlamaCppEngine(settings)
    if settings.backend == "openai":
        from synthllm.engines.openai_backend import OpenAIEngine

        return OpenAIEngine(settings)
    if settings.backend == "vllm":
        from synthllm.engines.vllm_backend import VLLMEngine

        return VLLMEngine(settings)
    if settings.backend == "standin":
        from synthllm.engines.standin import StandInEngine

        return StandInEngine(settings)
    raise ValueError(f"unknown engine backend {settings.backend!r}")


def engine_model_id(settings: EngineSettings) -> str:
    """The ``model_id`` an engine for these settings reports, without loading any weights
    (planning needs it in the flow process, which may hold no engine)."""
    if settings.backend == "llamacpp":
        return gguf_model_id(settings.model)
    if settings.backend == "vllm":
        from synthllm.engines.vllm_backend import model_id

        return model_id(settings.model)
    if settings.backend == "standin":
        return f"standin:{settings.model}"
    return settings.model
