#!/usr/bin/env bash
# Serving benchmark, side by side in one run: `sluice bench` against `sluice serve` and against
# llama.cpp's llama-server (same GGUF, 2 threads, continuous batching), then the shared-prefix
# workload against Sluice with and without prefix caching. Results land in bench/results/.
#   bench/serving.sh [MODEL.gguf]     N=32 N16=96 PROMPT=96 OUT=128 NUMERICS=reference
# Concurrency 1 runs N requests, then concurrency 16 runs N16 (six waves: with only two, the
# ramp-up and the last wave's tail, run below 16 at once, weigh on the steady-state figure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
N=${N:-32}; N16=${N16:-96}; PROMPT=${PROMPT:-96}; OUT=${OUT:-128}; NUMERICS=${NUMERICS:-reference}
LLAMA=$("$ROOT/scripts/build-llama-cpp.sh" | tail -n1)/bin
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/serving-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; echo "not ready: $1" >&2; exit 1; }

"$SLUICE" serve --model "$MODEL" --served-model-name m --port 18080 --threads 2 --numerics "$NUMERICS" >"$RES/sluice.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18080/ready
# Concurrency 1 then 16 against one server (the first run warms it up).
sweep() {
  for c in 1 16; do
    n=$N; [ "$c" = 16 ] && n=$N16
    "$SLUICE" bench --url "$1" --model m --concurrency "$c" --num-requests "$n" \
      --prompt-tokens "$PROMPT" --output-tokens "$OUT" --ignore-eos --json "$RES/$2-c$c.json"
  done
}
echo "== sluice" >&2
sweep http://127.0.0.1:18080 sluice
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

LD_LIBRARY_PATH=$LLAMA "$LLAMA/llama-server" -m "$MODEL" --host 127.0.0.1 --port 18081 -t 2 -tb 2 -np 32 \
  -c 32768 --cont-batching >"$RES/llama.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18081/health
echo "== llama.cpp" >&2
sweep http://127.0.0.1:18081 llama
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

for mode in cache nocache; do
  flag=""; [ "$mode" = nocache ] && flag="--no-prefix-cache"
  "$SLUICE" serve --model "$MODEL" --served-model-name m --port 18082 --threads 2 --numerics "$NUMERICS" $flag >"$RES/prefix-$mode.log" 2>&1 & pids+=($!)
  wait_ready http://127.0.0.1:18082/ready
  echo "== shared prefix, $mode" >&2
  "$SLUICE" bench --url http://127.0.0.1:18082 --model m --concurrency 16 --num-requests 64 \
    --shared-prefix-tokens 1000 --prompt-tokens 50 --output-tokens 16 --ignore-eos --json "$RES/prefix-$mode.json"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
echo "results in $RES" >&2
