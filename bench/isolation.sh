#!/usr/bin/env bash
# The prefix-cache timing side channel, measured: for each of several long prompts, tenant A
# sends it (cold), tenant B sends the very same prompt, then A repeats it. B must get no cached
# tokens and a cold-prefill TTFT; A's repeat gets the hit. TTFT and cached tokens come from the
# ledger (/v1/requests). Results land in bench/results/.
#   bench/isolation.sh [MODEL.gguf]      PROMPTS=5 REPEAT=40
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROMPTS=${PROMPTS:-5}; REPEAT=${REPEAT:-40}
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/isolation-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
DB="sqlite://$RES/ledger.db"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

key() { "$SLUICE" keys create --tenant "$1" --database-url "$DB" --audit-secret-file "$RES/audit.key" | awk '/^key:/ {print $2}'; }
"$SLUICE" serve --model "$MODEL" --served-model-name m --port 18088 --threads 2 --database-url "$DB" \
  --audit-secret-file "$RES/audit.key" >"$RES/sluice.log" 2>&1 & pids+=($!)
for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18088/ready >/dev/null && break; sleep 0.5; done
KA=$(key a); KB=$(key b)
send() { # key prompt
  curl -sf http://127.0.0.1:18088/v1/completions -H "authorization: Bearer $1" -H 'content-type: application/json' \
    -d "{\"model\":\"m\",\"prompt\":\"$2\",\"max_tokens\":1,\"temperature\":0,\"stream\":true}" >/dev/null
}
for i in $(seq 1 "$PROMPTS"); do
  P=$(for _ in $(seq 1 "$REPEAT"); do printf 'Ledger entry %s: the quick brown fox jumps over the lazy dog. ' "$i"; done)
  send "$KA" "$P"; send "$KB" "$P"; send "$KA" "$P"
done
sleep 1
curl -sf "http://127.0.0.1:18088/v1/requests?limit=1000" -H "authorization: Bearer $KA" >"$RES/a.json"
curl -sf "http://127.0.0.1:18088/v1/requests?limit=1000" -H "authorization: Bearer $KB" >"$RES/b.json"
python3 - "$RES" <<'PY' | tee "$RES/summary.txt"
import json, statistics, sys
res = sys.argv[1]
a = sorted(json.load(open(f"{res}/a.json"))["data"], key=lambda r: r["created_ms"])
b = sorted(json.load(open(f"{res}/b.json"))["data"], key=lambda r: r["created_ms"])
cold, warm = a[0::2], a[1::2]
rows = [("A first (cold)", cold), ("B same prompt", b), ("A repeat", warm)]
print(f"{'request':<16} {'n':>3} {'prompt tok':>10} {'cached tok':>10} {'TTFT p50 ms':>12} {'TTFT min':>9} {'TTFT max':>9}")
for name, rs in rows:
    t = [r["ttft_ms"] for r in rs]
    print(f"{name:<16} {len(rs):>3} {rs[0]['prompt_tokens']:>10} {sum(r['cached_tokens'] for r in rs):>10} "
          f"{statistics.median(t):>12.1f} {min(t):>9.1f} {max(t):>9.1f}")
m = {name: statistics.median(r["ttft_ms"] for r in rs) for name, rs in rows}
print(f"B / A-cold TTFT = {m['B same prompt'] / m['A first (cold)']:.2f}   A-repeat / A-cold = {m['A repeat'] / m['A first (cold)']:.2f}")
PY
