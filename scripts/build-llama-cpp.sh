#!/usr/bin/env bash
# Builds llama.cpp (the reference and the peer) from the source vendored in the PyPI sdist of
# llama-cpp-python: shared libraries (for the Python bindings that regenerate golden files),
# llama-server and llama-bench (for side-by-side benchmarks). Dev-only; CI never runs it.
# Prints the build folder last.   PEER_DIR (default: $HOME/.cache/sluice-peers)
#
# FLAVOR=peer (default): tuned for this machine (-march=native), for benchmarks.
# FLAVOR=reference: the numerical reference for golden files: a portable AVX2+FMA build (no
# AVX-512), so its arithmetic is the same on every x86-64-v3 machine and the golden files do not
# depend on where they were made. Shared library only.
set -euo pipefail
PEER_DIR=${PEER_DIR:-$HOME/.cache/sluice-peers}
LCP_VERSION=${LCP_VERSION:-0.3.36}
JOBS=${JOBS:-2}
FLAVOR=${FLAVOR:-peer}
case "$FLAVOR" in
  peer) OUT=$PEER_DIR/build-shared; TARGETS="llama llama-server llama-bench"
        ISA="-DGGML_NATIVE=ON" ;;
  reference) OUT=$PEER_DIR/build-reference; TARGETS="llama"
        ISA="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF" ;;
  *) echo "FLAVOR must be peer or reference" >&2; exit 2 ;;
esac
if [ -f "$OUT/bin/libllama.so" ] && { [ "$FLAVOR" = reference ] || [ -x "$OUT/bin/llama-bench" ]; }; then
  echo "$OUT"; exit 0
fi
mkdir -p "$PEER_DIR/dl"
SRC=$PEER_DIR/dl/llama_cpp_python-$LCP_VERSION
if [ ! -d "$SRC" ]; then
  # pip fetches the sdist, then fails preparing its metadata (it would build cmake from source);
  # the downloaded archive is all we need, so take it from pip's unpack folder.
  TMPDIR_DL=$(mktemp -d)
  TMPDIR="$TMPDIR_DL" python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    "llama-cpp-python==$LCP_VERSION" -d "$PEER_DIR/dl" >/dev/null 2>&1 || true
  [ -f "$SRC.tar.gz" ] || cp "$TMPDIR_DL"/pip-unpack-*/"llama_cpp_python-$LCP_VERSION.tar.gz" "$PEER_DIR/dl/"
  rm -rf "$TMPDIR_DL"
  tar xzf "$SRC.tar.gz" -C "$PEER_DIR/dl"
fi
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$OUT" -DCMAKE_BUILD_TYPE=Release \
  $ISA -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$OUT" --target $TARGETS -j "$JOBS" >/dev/null
echo "$OUT"
