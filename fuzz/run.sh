#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), two at a time, starting from the
# committed seeds; prints how long each ran and whether it found anything.
#   fuzz/run.sh [SECONDS]      needs: rustup nightly toolchain, cargo install cargo-fuzz, models/ fetched
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-600}
export SLUICE_MODELS_DIR=${SLUICE_MODELS_DIR:-$(cd .. && pwd)/models}
cargo +nightly fuzz build -O
run() {
  mkdir -p "corpus/$1"
  local seeds=(); [ -d "seeds/$1" ] && seeds=("seeds/$1")
  local t0=$SECONDS
  if cargo +nightly fuzz run -O "$1" "corpus/$1" "${seeds[@]}" -- -max_total_time="$SECS" -rss_limit_mb=4096 >"run-$1.log" 2>&1; then
    echo "$1: ran $((SECONDS - t0)) s, no crash ($(grep -o 'cov: [0-9]*' "run-$1.log" | tail -1))"
  else
    echo "$1: FAILED after $((SECONDS - t0)) s; see fuzz/run-$1.log and fuzz/artifacts/$1"
  fi
}
run gguf & run tokenizer & wait
run chat_template & run request_json & wait
