#!/usr/bin/env bash
# Runs a finserve binary under valgrind through a model load, two engines
# (prefill and decode tests of `model bench`), their close and the
# model's, and fails if any invalid memory access happens inside llama.cpp
# or ggml. It guards the use-after-free that crashed llama_free on CUDA
# (issue 17; third_party/llama-cmake removes its cause from the system
# provider's build). Go's own runtime shows up in valgrind too (async
# preemption, vectorised reads past a C string's end, and goroutine stacks
# that memcheck takes for freed stack when a cgo call moves the stack
# pointer to a thread stack less than --max-stackframe away): only
# accesses whose innermost frame is llama.cpp or ggml code count, not the
# cgo glue named after the llama function it calls (_cgo_..._Cfunc_llama_*).
# The filter checks itself first on two logs in scripts/testdata.
#
#   scripts/check-close.sh bin/finserve-system
set -euo pipefail
bin=${1:?usage: scripts/check-close.sh FINSERVE_BINARY}
command -v valgrind >/dev/null || {
  echo "check-close: installing valgrind with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}

# invalid_in_llama LOG prints the innermost frame of each invalid access
# that is in llama.cpp or ggml. A libc replacement (memmove, strlen) is
# not the culprit: its caller is.
invalid_in_llama() {
  awk '
    /Invalid (read|write)/ { want = 1; next }
    want && /(at|by) 0x[0-9A-Fa-f]+:/ {
      if ($0 ~ /vg_replace_/) next
      want = 0
      if ($0 ~ /_cgo_|_Cfunc_|runtime\.|\.abi0|github\.com\//) next
      if ($0 ~ /(ggml|llama)/) print
      next
    }
    { want = 0 }
  ' "$1"
}
here=$(cd "$(dirname "$0")" && pwd)
[ -z "$(invalid_in_llama "$here/testdata/valgrind-go-stack.log")" ] \
  || { echo "check-close: the filter counts Go's own frames (testdata/valgrind-go-stack.log)"; exit 1; }
[ "$(invalid_in_llama "$here/testdata/valgrind-llama-uaf.log" | wc -l)" -eq 2 ] \
  || { echo "check-close: the filter misses llama.cpp/ggml frames (testdata/valgrind-llama-uaf.log)"; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" model gen --preset tiny --type q8_0 --out "$dir/tiny.gguf" >/dev/null 2>&1
valgrind --error-limit=no --log-file="$dir/valgrind.log" \
  "$bin" model bench "$dir/tiny.gguf" --pp 16 --tg 4 --npl 2 --npp 16 --ntg 4 --reps 1 --threads 1 >"$dir/bench.out" 2>&1 \
  || { cat "$dir/bench.out"; echo "check-close: the run failed under valgrind"; exit 1; }
# The frame after each "Invalid read/write" line is where it happened.
bad=$(invalid_in_llama "$dir/valgrind.log" | sed 's/^==[0-9]*== *//' | sort | uniq -c)
if [ -n "$bad" ]; then
  grep -B1 -A13 -F -f <(invalid_in_llama "$dir/valgrind.log") "$dir/valgrind.log" | head -60
  echo "check-close: invalid memory accesses inside llama.cpp/ggml:"
  echo "$bad"
  exit 1
fi
echo "check-close: $(grep -c '' "$dir/bench.out") lines of bench output, no invalid access inside llama.cpp or ggml ($(basename "$bin"))"
