#!/usr/bin/env bash
# Admission + settlement overhead, side by side in one run: the same small requests through a
# gateway without a store (no keys, no limits, no ledger) and through gateways with API keys,
# limits and the ledger on SQLite and on PostgreSQL (loopback), all in front of one fast mock
# upstream. Alternating one-second slices. Results land in bench/results/.
# The governed tenant has rate limits (requests and tokens per minute, requests in flight) set
# high enough that nothing is refused, so every check runs; BUDGET_USD_PER_DAY=N adds a daily
# budget (admission then reserves in the store).
#   bench/ledger.sh      RATE=2000 SECONDS_PER_SIDE=6 [BUDGET_USD_PER_DAY=1000]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-2000}; SECS=${SECONDS_PER_SIDE:-6}
cargo build -q --release -p sluice --manifest-path "$ROOT/Cargo.toml"
SLUICE=$ROOT/target/release/sluice
RES=$ROOT/bench/results/ledger-$(date +%Y%m%dT%H%M%S)
mkdir -p "$RES"
PG_BASE=$("$ROOT/scripts/postgres.sh" start)
PG_URL=${PG_BASE%/*}/bench_$$
"$ROOT/scripts/postgres.sh" psql -qc "CREATE DATABASE bench_$$" >/dev/null 2>&1 || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.25; done; echo "not ready: $1" >&2; exit 1; }

"$SLUICE" mock-upstream --port 18091 --tokens 4 >"$RES/mock.log" 2>&1 & pids+=($!)
gateway() { # name port [database_url]
  { echo "[server]"; echo "port = $2"
    [ -n "${3:-}" ] && { echo "[store]"; echo "database_url = \"$3\""; echo "[audit]"; echo "secret_file = \"$RES/$1-audit.key\""; }
    echo "[backends.mock]"; echo 'kind = "openai"'; echo 'base_url = "http://127.0.0.1:18091/v1"'
    echo 'price = { input = 0.15, output = 0.60 }'
    echo "[models.m]"; echo 'targets = ["mock"]'; } >"$RES/$1.toml"
  "$SLUICE" serve --config "$RES/$1.toml" >"$RES/$1.log" 2>&1 & pids+=($!)
  wait_ready "http://127.0.0.1:$2/ready"
}
key() { "$SLUICE" keys create --tenant bench --role admin --database-url "$1" --audit-secret-file "$RES/$2-audit.key" | awk '/^key:/ {print $2}'; }
limits() { # port key
  local budget=""; [ -n "${BUDGET_USD_PER_DAY:-}" ] && budget=", \"usd_per_day\": $BUDGET_USD_PER_DAY"
  curl -sf -X PUT "http://127.0.0.1:$1/admin/limits" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
    -d "{\"scope\": \"tenant\", \"tenant\": \"bench\", \"rpm\": 100000000, \"tpm\": 1000000000000, \"concurrent\": 100000$budget}" >/dev/null
}
gateway plain 18095
gateway sqlite 18096 "sqlite://$RES/ledger.db"
gateway postgres 18097 "$PG_URL"
SQLITE_KEY=$(key "sqlite://$RES/ledger.db" sqlite)
PG_KEY=$(key "$PG_URL" postgres)
limits 18096 "$SQLITE_KEY"; limits 18097 "$PG_KEY"
for side in "sqlite 18096 $SQLITE_KEY" "postgres 18097 $PG_KEY"; do
  set -- $side
  echo "== no store vs $1" >&2
  "$SLUICE" bench-gateway --direct 127.0.0.1:18095 --gateway "127.0.0.1:$2" --gateway-api-key "$3" --labels "plain,$1" \
    --model m --rate "$RATE" --seconds "$SECS" --closed-connections 16 --stream-rate 200 --json "$RES/$1.json"
done
echo "results: $RES" >&2
