#!/usr/bin/env bash
# Gateway overhead, side by side in one run: the same small chat requests straight to a fast
# mock upstream and through `sluice serve --config` in front of it (alternating one-second
# slices): open-loop latency at RATE req/s, the highest closed-loop rate, streamed TTFT.
# Results land in bench/results/.
#   bench/gateway.sh      RATE=2000 SECONDS_PER_SIDE=6 CLOSED=16,64 LOG=info
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-2000}; SECS=${SECONDS_PER_SIDE:-6}; CLOSED=${CLOSED:-16,64}; LOG=${LOG:-info}
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/gateway-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.25; done; echo "not ready: $1" >&2; exit 1; }

cat >"$RES/gateway.toml" <<TOML
[server]
port = 18095
[backends.mock]
kind = "openai"
base_url = "http://127.0.0.1:18091/v1"
[models.m]
targets = ["mock"]
TOML
"$SLUICE" mock-upstream --port 18091 --tokens 4 >"$RES/mock.log" 2>&1 & pids+=($!)
RUST_LOG=$LOG "$SLUICE" serve --config "$RES/gateway.toml" >"$RES/gateway.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18095/ready
"$SLUICE" bench-gateway --direct 127.0.0.1:18091 --gateway 127.0.0.1:18095 --model m \
  --rate "$RATE" --seconds "$SECS" --closed-connections "$CLOSED" --json "$RES/results.json"
echo "results: $RES/results.json (gateway log lines: $(wc -l <"$RES/gateway.log"))" >&2
