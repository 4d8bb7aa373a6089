#!/usr/bin/env bash
# Create (or update) what synthllm's deployments need on a Prefect server:
#   - work pool synthllm-cpu (process)  for ingest, curation, export, scaling fits and
#                                       generation against vLLM servers
#   - work pool synthllm-gpu (process)  for the in-process vLLM engine, one worker per GPU
#   - global concurrency limit "gpu"    (= orchestration.gpu_concurrency_limit): shard tasks of
#                                       generation hold one slot while they run, so no more
#                                       shards than GPUs (or replicas) are in flight
#   - tag concurrency limit "gpu"       (optional, --tag-limit): every task tagged gpu, which
#                                       also covers the filter stage's LLM rating tasks
#
# Usage: infra/scripts/setup-pools.sh --gpus N [--tag-limit] [--slots M]
#   N: GPUs in the cluster (in-process vLLM), or vLLM server replicas (openai backend).
#   M: slots of the "gpu" limit when they should differ from N (default N).
# Runs against the API in PREFECT_API_URL. Safe to run again: existing pools are kept as they
# are, existing limits get the new size.
set -euo pipefail

gpus=""
slots=""
tag_limit=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) gpus="${2:?--gpus needs a number}"; shift 2 ;;
    --slots) slots="${2:?--slots needs a number}"; shift 2 ;;
    --tag-limit) tag_limit=true; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then
  echo "--gpus N is required (a positive number: GPUs, or vLLM replicas)" >&2
  exit 2
fi
slots="${slots:-$gpus}"
if ! [[ "$slots" =~ ^[1-9][0-9]*$ ]]; then
  echo "--slots must be a positive number" >&2
  exit 2
fi

export PREFECT_SERVER_ANALYTICS_ENABLED=false
prefect_cli=(prefect --no-prompt)

ensure_pool() {
  local pool="$1"
  if "${prefect_cli[@]}" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists (kept)"
  else
    "${prefect_cli[@]}" work-pool create "$pool" --type process
  fi
}

ensure_pool synthllm-cpu
ensure_pool synthllm-gpu

if "${prefect_cli[@]}" gcl inspect gpu >/dev/null 2>&1; then
  "${prefect_cli[@]}" gcl update gpu --limit "$slots"
else
  "${prefect_cli[@]}" gcl create gpu --limit "$slots"
fi

if [[ "$tag_limit" == true ]]; then
  # Stored as the global limit "tag:gpu", separate from "gpu" above; creating it again resizes it.
  "${prefect_cli[@]}" concurrency-limit create gpu "$slots"
fi

"${prefect_cli[@]}" work-pool ls
"${prefect_cli[@]}" gcl ls
