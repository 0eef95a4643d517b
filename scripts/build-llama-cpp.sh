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
# Before the download: pip prepares the sdist's metadata, which needs cmake (without it, it would
# try to build cmake from source).
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }
if [ ! -d "$SRC" ]; then
  [ -f "$SRC.tar.gz" ] || python3 -m pip download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$LCP_VERSION" -d "$PEER_DIR/dl"
  tar xzf "$SRC.tar.gz" -C "$PEER_DIR/dl"
fi
# No AMX: with -march=native on a CPU that has it, ggml's AMX matrix kernels run without asking
# the kernel for the tile state (arch_prctl) and die with SIGILL at the first batched product.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$OUT" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  $ISA -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$OUT" --target $TARGETS -j "$JOBS" >/dev/null
echo "$OUT"
