#!/usr/bin/env bash
# Regenerates the golden files with llama.cpp as the reference (dev-only; CI reads the committed files).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(FLAVOR=reference "$ROOT/scripts/build-llama-cpp.sh" | tail -n1)
PEER_DIR=${PEER_DIR:-$HOME/.cache/sluice-peers}
python3 -m pip install -q numpy diskcache jinja2 typing_extensions
"$ROOT/scripts/fetch-models.sh" smollm2 gemma3 >/dev/null
LLAMA_CPP_LIB_PATH=$BUILD/bin PYTHONPATH=$PEER_DIR/dl/llama_cpp_python-${LCP_VERSION:-0.3.36} \
  python3 "$ROOT/scripts/golden/make_golden.py"
