#!/usr/bin/env bash
# Regenerates the embedding golden file with sentence-transformers (dev-only; CI reads the
# committed file). Makes its own virtual environment (torch is large) outside the repository.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$HOME/.cache/sluice-peers/st-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "sentence-transformers==${ST_VERSION:-6.2.0}"
DIR=$("$ROOT/scripts/fetch-models.sh" minilm)
"$VENV/bin/python" "$ROOT/scripts/golden/make_embeddings_golden.py" "$DIR"
