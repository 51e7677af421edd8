#!/usr/bin/env bash
# Runs a finserve binary under valgrind through a model load, two engines
# (prefill and decode tests of `model bench`), their close and the
# model's, and fails if any invalid memory access happens inside llama.cpp
# or ggml. It guards the use-after-free that crashed llama_free on CUDA
# (issue 17; third_party/llama-cmake removes its cause from the system
# provider's build). Go's own runtime shows up in valgrind too (async
# preemption, vectorised reads past a C string's end): only accesses whose
# innermost frame is in llama.cpp or ggml count.
#
#   scripts/check-close.sh bin/finserve-system
set -euo pipefail
bin=${1:?usage: scripts/check-close.sh FINSERVE_BINARY}
command -v valgrind >/dev/null || {
  echo "check-close: installing valgrind with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" model gen --preset tiny --type q8_0 --out "$dir/tiny.gguf" >/dev/null 2>&1
valgrind --error-limit=no --log-file="$dir/valgrind.log" \
  "$bin" model bench "$dir/tiny.gguf" --pp 16 --tg 4 --npl 2 --npp 16 --ntg 4 --reps 1 --threads 1 >"$dir/bench.out" 2>&1 \
  || { cat "$dir/bench.out"; echo "check-close: the run failed under valgrind"; exit 1; }
# The frame after each "Invalid read/write" line is where it happened.
bad=$(awk '/Invalid (read|write)/ {getline; if ($0 ~ /(ggml|llama)/) print}' "$dir/valgrind.log" | sort | uniq -c)
if [ -n "$bad" ]; then
  grep -A14 -E 'Invalid (read|write)' "$dir/valgrind.log" | grep -B1 -A13 -E 'at 0x[0-9A-F]+: .*(ggml|llama)' | head -60
  echo "check-close: invalid memory accesses inside llama.cpp/ggml:"
  echo "$bad"
  exit 1
fi
echo "check-close: $(grep -c '' "$dir/bench.out") lines of bench output, no invalid access inside llama.cpp or ggml ($(basename "$bin"))"
