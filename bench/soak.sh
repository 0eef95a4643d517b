#!/usr/bin/env bash
# Memory soak: `sluice serve` under `sluice bench` at concurrency 16 for about DURATION seconds,
# sampling the server's resident memory every 10 s. Prints the samples and the growth between
# the first sample after warm-up and the last.
#   bench/soak.sh [MODEL.gguf]     DURATION=600 KV=512MiB KV_DTYPE=f16 NUMERICS=reference
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
DURATION=${DURATION:-600}; KV=${KV:-512MiB}; KV_DTYPE=${KV_DTYPE:-f16}; NUMERICS=${NUMERICS:-reference}
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/soak-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
"$SLUICE" serve --model "$MODEL" --served-model-name m --port 18090 --threads 2 --kv-cache-memory "$KV" --kv-cache-dtype "$KV_DTYPE" --numerics "$NUMERICS" >"$RES/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18090/ready >/dev/null && break; sleep 0.5; done
rss() { awk '/VmRSS/ {print $2}' /proc/$SERVER/status; }
echo "rss_kib_at_start $(rss)" | tee "$RES/rss.txt"
# Back-to-back runs of 160 requests until DURATION seconds have passed (however fast the
# server is), each run's table appended to bench.txt.
end=$((SECONDS + DURATION))
(
  run=0
  while [ "$SECONDS" -lt "$end" ]; do
    run=$((run + 1))
    "$SLUICE" bench --url http://127.0.0.1:18090 --model m --concurrency 16 --num-requests 160 \
      --prompt-tokens 96 --prompt-spread 0.5 --output-tokens 128 --output-spread 0.5 --ignore-eos \
      --json "$RES/bench-$run.json" 2>>"$RES/bench.txt" || exit 1
  done
) &
BENCH=$!
t=0
while kill -0 $BENCH 2>/dev/null; do
  sleep 10; t=$((t + 10))
  echo "t=${t}s rss_kib $(rss)" | tee -a "$RES/rss.txt"
done
wait $BENCH || echo "a bench run failed (see $RES/bench.txt)" >&2
grep -E '^\| c=' "$RES/bench.txt" | awk -F'|' '{ok += $3; err += $4} END {print NR " runs, " ok " requests ok, " err " errors"}'
grep -E '^\| c=' "$RES/bench.txt" | tail -1
echo "rss_kib_at_end $(rss)" | tee -a "$RES/rss.txt"
echo "results in $RES" >&2
