#!/usr/bin/env bash
# Prompt processing (pp) and single-stream decode (tg) of Sluice and llama.cpp on the same GGUF
# and thread count, run back to back, median of REPS runs each, with the ratios.
#   bench/speed.sh [MODEL.gguf]    THREADS=2 PP=512 TG=128 REPS=3 NUMERICS=reference
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}; PP=${PP:-512}; TG=${TG:-128}; REPS=${REPS:-3}; NUMERICS=${NUMERICS:-reference}
LLAMA=$("$ROOT/scripts/build-llama-cpp.sh" | tail -n1)/bin
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$ROOT/bench/results"
OUT=$ROOT/bench/results/speed-$(date +%Y%m%dT%H%M%S).json
ours=$("$ROOT/target/release/sluice" bench-model --model "$MODEL" --threads "$THREADS" --prompt "$PP" \
  --generate "$TG" --reps "$REPS" --numerics "$NUMERICS" 2>/dev/null)
peer=$("$LLAMA/llama-bench" -m "$MODEL" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" -o json 2>/dev/null)
python3 - "$ours" "$peer" "$OUT" <<'PY'
import json, sys
ours, peer, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
pp = next(r["avg_ts"] for r in peer if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in peer if r["n_gen"] > 0 and r["n_prompt"] == 0)
res = {"model": ours["model"], "threads": ours["threads"],
       "sluice": {"pp_tok_s": ours["pp_tok_s"], "tg_tok_s": ours["tg_tok_s"]},
       "llama_cpp": {"pp_tok_s": pp, "tg_tok_s": tg},
       "ratio": {"pp": ours["pp_tok_s"] / pp, "tg": ours["tg_tok_s"] / tg}}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
print(f"| {res['model']} | t={res['threads']} | pp{ours['pp_tokens']} tok/s | tg{ours['tg_tokens']} tok/s |", file=sys.stderr)
print(f"| sluice    | | {ours['pp_tok_s']:.1f} | {ours['tg_tok_s']:.1f} |", file=sys.stderr)
print(f"| llama.cpp | | {pp:.1f} | {tg:.1f} |", file=sys.stderr)
print(f"| ratio     | | {res['ratio']['pp']:.2f}x | {res['ratio']['tg']:.2f}x |", file=sys.stderr)
PY
