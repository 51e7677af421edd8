#!/usr/bin/env bash
# Build llama.cpp as shared libraries, from the sources the ollama module
# pinned in go.mod carries, for finserve's system provider (`make
# build-system`): the way to a CUDA-enabled finserve (CUDA=1, needs nvcc),
# and on CPU the check that this build works end to end.
#
#   [CUDA=1] [CPU_LEVEL=x86-64-v3] [CUDA_ARCHS="80;90"] scripts/build-llama.sh PREFIX
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig make build-system
#
# CPU_LEVEL sets the CPU backend's instruction sets (x86-64-v2, -v3, -v4;
# ignored off x86); the backend refuses to load on a CPU without them rather
# than crash. CUDA_ARCHS defaults to ggml's list (Turing to Ada, PTX for
# newer GPUs); "native" builds for the GPUs of the build machine.
# Incremental: the CMake build folder PREFIX.build is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath -m "${1:?usage: scripts/build-llama.sh PREFIX}")
CPU_LEVEL=${CPU_LEVEL:-x86-64-v3}
CUDA=${CUDA:-0}
BUILD=${LLAMA_BUILD_DIR:-$PREFIX.build}

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v pkg-config >/dev/null || need+=(pkgconf)
if [ ${#need[@]} -gt 0 ]; then
  echo "build-llama: installing ${need[*]} with apt-get"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/prereqs.sh
eval "$(make -s env)"
ollama=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)
[ -d "$ollama" ] || go mod download github.com/ollama/ollama
ollama=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)

args=(-DOLLAMA_DIR="$ollama" -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF)
if [ "$(uname -m)" = x86_64 ]; then
  case $CPU_LEVEL in
    x86-64-v2) feats="SSE42" ;;
    x86-64-v3) feats="SSE42 AVX AVX2 BMI2 FMA F16C" ;;
    x86-64-v4) feats="SSE42 AVX AVX2 BMI2 FMA F16C AVX512" ;;
    *) echo "build-llama: CPU_LEVEL must be x86-64-v2, x86-64-v3 or x86-64-v4, not $CPU_LEVEL" >&2; exit 2 ;;
  esac
  for f in $feats; do args+=("-DGGML_$f=ON"); done
fi
case $CUDA in
  1)
    command -v nvcc >/dev/null || { echo "build-llama: CUDA=1 needs nvcc (an NVIDIA CUDA devel image or toolkit)" >&2; exit 2; }
    args+=(-DGGML_CUDA=ON)
    [ -n "${CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS")
    ;;
  0) args+=(-DGGML_CUDA=OFF) ;;
  *) echo "build-llama: CUDA must be 0 or 1" >&2; exit 2 ;;
esac

mkdir -p "$BUILD"
cmake -S third_party/llama-cmake -B "$BUILD" "${args[@]}" >"$BUILD/configure.log" 2>&1 \
  || { cat "$BUILD/configure.log" >&2; exit 1; }
# Not the calling make's flags: its jobserver and directory messages.
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
cmake --install "$BUILD" >/dev/null
echo "build-llama: installed into $PREFIX (CUDA=$CUDA, CPU level $CPU_LEVEL); backends: $(cd "$PREFIX/lib/ggml" && echo *.so)"
echo "build-llama: PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig make build-system"
