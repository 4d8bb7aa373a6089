#!/usr/bin/env bash
# Start K independent `vllm serve` replicas on this machine, replica i on GPU(s) i*G..i*G+G-1
# and port BASE_PORT+i, wait until each answers /health, then print the engine section for
# the settings file (openai backend, one base_url per replica).
#
# Usage: infra/scripts/start-vllm-replicas.sh --model MODEL [--replicas K] [--gpus-per-replica G]
#          [--port BASE_PORT] [--host ADDRESS_IN_URLS] [--name SERVED_NAME] [--log-dir DIR]
#          [--timeout SECONDS] [-- extra `vllm serve` arguments]
#   K defaults to the number of GPUs nvidia-smi lists (divided by G); G defaults to 1 (G > 1
#   adds --tensor-parallel-size G); BASE_PORT 8000; ADDRESS_IN_URLS this host's name; the
#   served name defaults to MODEL and must equal engine.model; logs and pid files go to
#   DIR (default ./vllm-logs). Stop them with: kill $(cat DIR/*.pid)
#
# One server with --data-parallel-size K is the alternative: one URL, vLLM balances inside.
set -euo pipefail

model=""
replicas=""
gpus_per_replica=1
base_port=8000
advertise="$(hostname)"
served_name=""
log_dir="./vllm-logs"
timeout_s=1800
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="${2:?}"; shift 2 ;;
    --replicas) replicas="${2:?}"; shift 2 ;;
    --gpus-per-replica) gpus_per_replica="${2:?}"; shift 2 ;;
    --port) base_port="${2:?}"; shift 2 ;;
    --host) advertise="${2:?}"; shift 2 ;;
    --name) served_name="${2:?}"; shift 2 ;;
    --log-dir) log_dir="${2:?}"; shift 2 ;;
    --timeout) timeout_s="${2:?}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$model" ]] || { echo "--model is required" >&2; exit 2; }
served_name="${served_name:-$model}"
for number in "$gpus_per_replica" "$base_port" "$timeout_s"; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive number: $number" >&2; exit 2; }
done
if [[ -z "$replicas" ]]; then
  gpu_count="$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)"
  replicas=$(( gpu_count / gpus_per_replica ))
fi
[[ "$replicas" =~ ^[1-9][0-9]*$ ]] || { echo "no replicas to start (no GPUs found? pass --replicas)" >&2; exit 2; }
command -v vllm >/dev/null || { echo "vllm is not on PATH (pip install 'synthllm[vllm]')" >&2; exit 2; }

mkdir -p "$log_dir"
parallel_args=()
if (( gpus_per_replica > 1 )); then
  parallel_args=(--tensor-parallel-size "$gpus_per_replica")
fi

urls=()
for (( i = 0; i < replicas; i++ )); do
  first=$(( i * gpus_per_replica ))
  devices="$(seq -s, "$first" $(( first + gpus_per_replica - 1 )))"
  port=$(( base_port + i ))
  CUDA_VISIBLE_DEVICES="$devices" nohup vllm serve "$model" \
    --host 0.0.0.0 --port "$port" --served-model-name "$served_name" \
    "${parallel_args[@]}" "${extra[@]}" >"$log_dir/vllm-$i.log" 2>&1 &
  echo $! >"$log_dir/vllm-$i.pid"
  echo "replica $i: GPUs $devices, port $port, pid $!, log $log_dir/vllm-$i.log" >&2
  urls+=("http://$advertise:$port/v1")
done

deadline=$(( SECONDS + timeout_s ))
for (( i = 0; i < replicas; i++ )); do
  port=$(( base_port + i ))
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    if ! kill -0 "$(cat "$log_dir/vllm-$i.pid")" 2>/dev/null; then
      echo "replica $i exited; last lines of its log:" >&2
      tail -n 20 "$log_dir/vllm-$i.log" >&2
      exit 1
    fi
    if (( SECONDS > deadline )); then
      echo "replica $i not healthy after ${timeout_s}s (see $log_dir/vllm-$i.log)" >&2
      exit 1
    fi
    sleep 5
  done
  echo "replica $i healthy" >&2
done

echo "engine:"
echo "  backend: openai"
echo "  model: $served_name"
echo "  base_url:"
for url in "${urls[@]}"; do
  echo "    - $url"
done
