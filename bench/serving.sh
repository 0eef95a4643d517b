#!/usr/bin/env bash
# Serving benchmark, side by side in one run: `sluice bench` against `sluice serve` and against
# llama.cpp's llama-server (same GGUF, 2 threads, continuous batching), then the shared-prefix
# workload against Sluice with and without prefix caching. Results land in bench/results/.
#   bench/serving.sh [MODEL.gguf]     N=32 N16=96 PROMPT=96 OUT=128 NUMERICS=reference KV_DTYPE=f16 ROUNDS=2
# Concurrency 1 runs N requests, then concurrency 16 runs N16 (six waves: with only two, the
# ramp-up and the last wave's tail, run below 16 at once, weigh on the steady-state figure).
# ROUNDS alternates the two that many times and the summary takes medians: on a shared machine
# one run of either can land in a slow spell, which moves their ratio by half a point.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
N=${N:-32}; N16=${N16:-96}; PROMPT=${PROMPT:-96}; OUT=${OUT:-128}; NUMERICS=${NUMERICS:-reference}; KV_DTYPE=${KV_DTYPE:-f16}; ROUNDS=${ROUNDS:-2}
LLAMA=$("$ROOT/scripts/build-llama-cpp.sh" | tail -n1)/bin
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/serving-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; echo "not ready: $1" >&2; exit 1; }

"$SLUICE" serve --model "$MODEL" --served-model-name m --port 18080 --threads 2 --numerics "$NUMERICS" --kv-cache-dtype "$KV_DTYPE" >"$RES/sluice.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18080/ready
# Concurrency 1 then 16 against one server, ROUNDS times (the first run warms it up). Every
# run has prompts of its own (its own seed): with one seed, a later run's prompts would repeat
# an earlier one's and hit the server's prompt cache.
sweep() {
  for r in $(seq 1 "$ROUNDS"); do
    for c in 1 16; do
      n=$N; [ "$c" = 16 ] && n=$N16
      "$SLUICE" bench --url "$1" --model m --concurrency "$c" --num-requests "$n" --seed $((10 * r + c)) \
        --prompt-tokens "$PROMPT" --output-tokens "$OUT" --ignore-eos --json "$RES/$2-c$c-r$r.json"
    done
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
  "$SLUICE" serve --model "$MODEL" --served-model-name m --port 18082 --threads 2 --numerics "$NUMERICS" --kv-cache-dtype "$KV_DTYPE" $flag >"$RES/prefix-$mode.log" 2>&1 & pids+=($!)
  wait_ready http://127.0.0.1:18082/ready
  echo "== shared prefix, $mode" >&2
  "$SLUICE" bench --url http://127.0.0.1:18082 --model m --concurrency 16 --num-requests 64 \
    --shared-prefix-tokens 1000 --prompt-tokens 50 --output-tokens 16 --ignore-eos --json "$RES/prefix-$mode.json"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
# Medians over the rounds, the ratios the README quotes, and the shared-prefix TTFT ratio.
python3 - "$RES" <<'PY' | tee "$RES/summary.txt"
import glob, json, statistics, sys
res = sys.argv[1]
def first(path):
    return json.load(open(path))["results"][0]
def median(server, c, key):
    return statistics.median(key(first(p)) for p in sorted(glob.glob(f"{res}/{server}-c{c}-r*.json")))
out = lambda r: r["output_token_throughput"]
p99 = lambda r: r["ttft_s"]["p99"] * 1000
s1, s16, l1, l16 = median("sluice", 1, out), median("sluice", 16, out), median("llama", 1, out), median("llama", 16, out)
print(f"output tok/s (median of rounds): sluice c1 {s1:.1f}  c16 {s16:.1f}  ({s16 / s1:.2f}x)")
print(f"                                 llama  c1 {l1:.1f}  c16 {l16:.1f}  ({l16 / l1:.2f}x)")
print(f"sluice / llama: c1 {s1 / l1:.2f}x  c16 {s16 / l16:.2f}x")
print(f"TTFT p99 at c16 (ms): sluice {median('sluice', 16, p99):.0f}  llama {median('llama', 16, p99):.0f}")
cache, nocache = (first(f"{res}/prefix-{m}.json")["ttft_s"]["p50"] for m in ("cache", "nocache"))
print(f"shared prefix TTFT p50: {cache * 1000:.0f} ms cached vs {nocache * 1000:.0f} ms without = {cache / nocache:.2f}")
PY
echo "results in $RES" >&2
