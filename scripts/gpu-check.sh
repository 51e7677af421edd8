#!/usr/bin/env bash
# End-to-end check of finserve on an NVIDIA GPU host, in two halves.
#
# Local half (here, with Go; CI runs it without a GPU):
#   scripts/gpu-check.sh stage [DIR]        (default DIR: gpu-carry, git-ignored)
# builds the system-provider binary for x86-64-v3 against llama.cpp built
# from the ollama module (make llama-lib), and stages into DIR: the binary,
# this script, the CMake recipe (third_party/llama-cmake), the module's
# llama/llama.cpp/{src,include} and ml/backend/ggml/ggml/{src,include,cmake}
# (about 12 MB) and an AML case. It then configures the staged recipe
# against the staged sources (CPU only), which proves the folder complete.
#
# Remote half (on the GPU host, from the copied folder; needs nvcc, CMake,
# a C++ compiler and curl; no Go, no network):
#   DIR/gpu-check.sh run [OUT]              (default OUT: DIR/out)
# 1. builds llama.cpp with the CUDA backend from the staged sources into
#    /tmp/finserve-llama-cuda (reused while /tmp still holds a build of the
#    same sources), for CUDA_ARCHS (default: the host's GPUs);
# 2. generates the 13b preset as q8_0 (/tmp, reused) once the libraries
#    exist (`model gen` links them);
# 3. `model inspect` (the placement plan) and `model bench` (pp512, tg128,
#    aggregate decode at 1, 8, 32 and 64 streams);
# 4. `serve --gpu-layers auto` with 64 slots and an audit log; `finserve
#    bench` short at 1, 8, 32 and 64 streams (128 tokens), chat at 8; one
#    AML case; SIGTERM while 16 streams run; `audit verify`;
# 5. writes OUT/report.md beside the bench reports and the serve log, and
#    exits non-zero on any crash, failed request or failed check.
# Settings (environment): CUDA_ARCHS, PARALLEL (64), CTX (1024 per
# sequence), JOBS (all cores), MODEL (a GGUF to use instead of the 13b
# preset), BW_GBS (the card's memory bandwidth in GB/s; known cards are
# looked up), PORT (18080), LEVELS (1,8,32,64).
#
# CPU_ONLY=1 LLAMA_PREFIX=P runs the remote half without a GPU, on the
# llama.cpp libraries already in P and on MODEL (the tiny preset when
# unset), with small settings: CI checks the whole flow that way.
set -euo pipefail

stage() {
  local dir=${1:-gpu-carry}
  cd "$(dirname "$0")/.."
  local root=$PWD
  eval "$(make -s env)"
  [ -f .tools/llama/lib/pkgconfig/llama.pc ] || make llama-lib
  PKG_CONFIG_PATH=$root/.tools/llama/lib/pkgconfig make build-system CPU_LEVEL=x86-64-v3 SYSTEM_BUILD_OUT=bin/finserve-gpu >/dev/null
  local ollama
  ollama=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/ollama/llama/llama.cpp" "$dir/ollama/ml/backend/ggml/ggml"
  cp bin/finserve-gpu "$dir/bin/finserve"
  cp scripts/gpu-check.sh "$dir/gpu-check.sh"
  cp -r third_party/llama-cmake "$dir/llama-cmake"
  cp aml/testdata/structuring.json "$dir/aml-case.json"
  cp -r "$ollama/llama/llama.cpp/src" "$ollama/llama/llama.cpp/include" "$dir/ollama/llama/llama.cpp/"
  cp -r "$ollama/ml/backend/ggml/ggml/src" "$ollama/ml/backend/ggml/ggml/include" "$ollama/ml/backend/ggml/ggml/cmake" "$dir/ollama/ml/backend/ggml/ggml/"
  chmod -R u+w "$dir" # the module cache is read-only
  # A module of its own, so that the project's `go test ./...` does not
  # walk into the staged llama.cpp sources (cgo packages) and build them.
  printf 'module finserve-gpu-carry\n\ngo 1.25\n' >"$dir/go.mod"
  # The staged recipe must configure against the staged sources alone.
  local probe
  probe=$(mktemp -d)
  if ! cmake -S "$dir/llama-cmake" -B "$probe" -DOLLAMA_DIR="$(realpath "$dir/ollama")" -DGGML_CUDA=OFF -DGGML_NATIVE=OFF >"$probe.log" 2>&1; then
    cat "$probe.log" >&2
    echo "gpu-check: the staged folder does not configure" >&2
    exit 1
  fi
  rm -rf "$probe" "$probe.log"
  echo "gpu-check: staged $(du -sh "$dir" | cut -f1) in $dir ($(du -sh "$dir/ollama" | cut -f1) of llama.cpp/ggml sources)."
  echo "Copy it to the GPU host and run: $dir/gpu-check.sh run"
}

bandwidth() { # GB/s of the first GPU, from its name (vendor data sheets)
  local name=$1
  case $name in
    *H200*) echo 4800 ;;
    *H100*NVL*) echo 3900 ;;
    *H100*PCIe*) echo 2000 ;;
    *H100*) echo 3350 ;;
    *H20*) echo 4000 ;;
    *B200*) echo 8000 ;;
    *A100*80GB*) echo 2039 ;;
    *A100*) echo 1555 ;;
    *L40S* | *L40*) echo 864 ;;
    *A10*) echo 600 ;;
    *L4*) echo 300 ;;
    *) echo 0 ;;
  esac
}

run() {
  local here
  here=$(cd "$(dirname "$0")" && pwd)
  local out=${1:-$here/out}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  local prefix=/tmp/finserve-llama-cuda jobs=${JOBS:-$(nproc)} port=${PORT:-18080}
  local parallel=${PARALLEL:-64} ctx=${CTX:-1024} levels=${LEVELS:-1,8,32,64} cpu=${CPU_ONLY:-0}
  if [ "$cpu" = 1 ]; then
    prefix=${LLAMA_PREFIX:?CPU_ONLY=1 needs LLAMA_PREFIX, a llama.cpp install (make llama-lib: .tools/llama)}
    parallel=${PARALLEL:-4} ctx=${CTX:-2048} levels=${LEVELS:-1,4}
  fi
  local fin=$here/bin/finserve failures=0 t0=$SECONDS
  exec > >(tee "$out/gpu-check.log") 2>&1
  pid= bpid= # global: the EXIT trap stops what is still running
  trap 'for p in ${bpid:-} ${pid:-}; do kill "$p" 2>/dev/null || true; done' EXIT
  fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
  # requests that failed, from the report (bench also exits 1 on them)
  failed() { grep -q '"failed": [1-9]' "$1/report.json" 2>/dev/null || [ ! -f "$1/report.json" ]; }
  step() { echo; echo "== $* ($((SECONDS - t0)) s)"; }

  step "host"
  if [ "$cpu" = 1 ]; then
    echo "CPU only (CPU_ONLY=1), $(nproc) cores" | tee "$out/gpus.csv"
  else
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free,compute_cap --format=csv,noheader | tee "$out/gpus.csv"
    command -v nvcc >/dev/null || { echo "gpu-check: nvcc not found"; exit 2; }
    command -v cmake >/dev/null || { echo "gpu-check: cmake not found"; exit 2; }
    nvcc --version | tail -1
  fi
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)

  step "llama.cpp with CUDA into $prefix"
  local stamp
  stamp=$(cd "$here" && find llama-cmake ollama -type f -printf '%P %s\n' | sort | cksum | cut -d' ' -f1)-${CUDA_ARCHS:-native}
  if [ "$cpu" = 1 ]; then
    echo "CPU only: the libraries in $prefix"
  elif [ -f "$prefix/lib/libllama.so" ] && [ "$(cat "$prefix/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "reusing the build in $prefix"
  else
    local b0=$SECONDS
    cmake -S "$here/llama-cmake" -B "$prefix.build" "${gen[@]}" -DOLLAMA_DIR="$here/ollama" -DCMAKE_INSTALL_PREFIX="$prefix" \
      -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-native}" \
      -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON >"$out/cmake-configure.log" 2>&1 \
      || { tail -30 "$out/cmake-configure.log"; exit 1; }
    cmake --build "$prefix.build" -j "$jobs" >"$out/cmake-build.log" 2>&1 || { tail -40 "$out/cmake-build.log"; exit 1; }
    cmake --install "$prefix.build" >/dev/null
    echo "$stamp" >"$prefix/.stamp"
    echo "built in $((SECONDS - b0)) s with $jobs jobs"
  fi
  export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  "$fin" version | tee "$out/version.txt"
  [ "$cpu" = 1 ] || grep -q CUDA "$out/version.txt" || fail "finserve does not see a CUDA device"

  step "model"
  local preset=13b
  [ "$cpu" = 1 ] && preset=tiny
  local model=${MODEL:-/tmp/finserve-$preset-q8_0.gguf}
  if [ -z "${MODEL:-}" ] && [ ! -f "$model" ]; then
    "$fin" model gen --preset $preset --type q8_0 --out "$model"
  fi
  "$fin" model inspect "$model" --parallel "$parallel" --ctx "$ctx" --gpu-layers auto | tee "$out/inspect.txt"

  step "model bench"
  "$fin" model bench "$model" --gpu-layers auto --pp 512 --tg 128 --npl "$levels" --npp 128 --ntg 128 --reps 3 2>"$out/model-bench.log" \
    | tee "$out/model-bench.txt" || fail "model bench exited $?"

  step "serve"
  local audit=$out/audit.jsonl
  rm -f "$audit" "$audit.head" "$audit.key"
  "$fin" serve --model "$model" --model-id gpu-check --addr "127.0.0.1:$port" --gpu-layers auto \
    --parallel "$parallel" --ctx "$ctx" --audit-log "$audit" --shutdown-grace 120s --log-format json >"$out/serve.log" 2>&1 &
  pid=$!
  local ready=0
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  [ $ready = 1 ] || { tail -30 "$out/serve.log"; fail "serve did not become ready"; exit 1; }
  grep '"placement' "$out/serve.log" | head -5 || true
  local url=http://127.0.0.1:$port/v1
  "$fin" bench --url "$url" --clients 1 --requests-per-client 1 --max-tokens 8 >/dev/null # warm-up
  step "bench short at $levels streams"
  "$fin" bench --url "$url" --workload short --concurrency "$levels" --max-tokens 128 --requests-per-client 2 \
    --out "$out/bench-short" | tee "$out/bench-short.txt" || fail "bench short exited $?"
  failed "$out/bench-short" && fail "requests failed in bench short"
  step "bench chat at 8"
  "$fin" bench --url "$url" --workload chat --concurrency 8 --requests-per-client 1 --out "$out/bench-chat" \
    | tee "$out/bench-chat.txt" || fail "bench chat exited $?"
  failed "$out/bench-chat" && fail "requests failed in bench chat"
  step "AML case"
  local code
  code=$(curl -s -o "$out/aml.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$here/aml-case.json" "$url/aml/score")
  echo "AML: HTTP $code, $(head -c 300 "$out/aml.json")"
  [ "$code" = 200 ] || fail "AML case answered $code"
  step "SIGTERM while 16 streams run"
  "$fin" bench --url "$url" --concurrency 16 --requests-per-client 1 --max-tokens 512 --allow-failures --out "$out/bench-sigterm" >"$out/bench-sigterm.txt" 2>&1 &
  bpid=$!
  for _ in $(seq 1 400); do # until streams run
    curl -s "http://127.0.0.1:$port/metrics" | grep -q '^finserve_num_requests_running [1-9]' && break
    sleep 0.05
  done
  kill -TERM "$pid"
  local src=0 brc=0
  wait "$pid" || src=$?
  wait "$bpid" || brc=$?
  echo "serve exited $src after SIGTERM; the streams' client exited $brc"
  [ $src = 0 ] || fail "serve exited $src after SIGTERM"
  { [ $brc = 0 ] && ! failed "$out/bench-sigterm"; } || fail "requests failed across the SIGTERM (see bench-sigterm.txt)"
  pid= bpid=
  grep -qi 'panic\|SIGSEGV\|fatal error' "$out/serve.log" && fail "the serve log shows a crash"
  step "audit verify"
  "$fin" audit verify "$audit" || fail "audit verify"

  step "report"
  report "$out" "$model" "$failures" $((SECONDS - t0))
  [ "$failures" = 0 ] || { echo "gpu-check: $failures check(s) failed"; exit 1; }
  echo "gpu-check: all checks passed in $((SECONDS - t0)) s; report in $out/report.md"
}

report() { # OUT MODEL FAILURES SECONDS
  local out=$1 model=$2 failures=$3 secs=$4
  local gpu bw bytes tg pp
  gpu=$(head -1 "$out/gpus.csv" | cut -d, -f1 | sed 's/^ *//')
  bw=${BW_GBS:-$(bandwidth "$gpu")}
  bytes=$(stat -c %s "$model")
  pp=$(awk '$1 == "pp512" {print $2}' "$out/model-bench.txt")
  tg=$(awk '$1 == "tg128" {print $2}' "$out/model-bench.txt")
  {
    echo "# finserve GPU check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); took $secs s; failed checks: $failures"
    echo "- GPUs (name, driver, memory, free, compute capability): $(tr '\n' ';' <"$out/gpus.csv")"
    echo "- finserve: $(head -1 "$out/version.txt")"
    echo "- model: $model ($((bytes / 1000000)) MB)"
    echo
    echo "## Engine (model bench)"
    echo
    echo '```'
    cat "$out/model-bench.txt"
    echo '```'
    if [ -n "$tg" ] && [ "$bw" != 0 ]; then
      awk -v b="$bytes" -v t="$tg" -v bw="$bw" -v pp="$pp" 'BEGIN {
        printf "\n- single-stream decode: %.1f t/s x %.2f GB = %.0f GB/s, %.0f%% of the card'"'"'s %d GB/s (target >= 45%%)\n", t, b/1e9, t*b/1e9, 100*t*b/1e9/bw, bw
        printf "- prefill pp512: %s t/s (target >= 6000)\n", pp }'
    fi
    if [ -f "$out/bench-short/report.md" ]; then
      echo
      awk -F'|' '$2 ~ /^ *[0-9]+ *$/ && $3 ~ /[0-9]/ {
          load = $2 + 0; tps[load] = $6 + 0; ttft[load] = $8 + 0; n[++k] = load }
        END {
          if (k == 0) exit
          one = tps[n[1]]
          for (i = 1; i <= k; i++)
            printf "- serving, %d streams: %.1f output t/s (%.1fx the %d-stream rate), TTFT p50 %.0f ms\n", n[i], tps[n[i]], one ? tps[n[i]] / one : 0, n[1], ttft[n[i]]
          print "- targets (H200 class, 13B q8_0): output at 64 streams >= 10x one stream; TTFT p50 at 32 streams < 250 ms"
        }' "$out/bench-short/report.md"
    fi
    echo
    echo "## Placement"
    echo
    echo '```'
    sed -n '/^placement/,$p' "$out/inspect.txt"
    echo '```'
    for b in short chat sigterm; do
      echo
      echo "## Serving: $b"
      echo
      [ -f "$out/bench-$b/report.md" ] && sed 's/^#/##/' "$out/bench-$b/report.md" || cat "$out/bench-$b.txt"
    done
    echo
    echo "## AML"
    echo
    echo '```'
    head -c 2000 "$out/aml.json"
    echo
    echo '```'
  } >"$out/report.md"
}

case ${1:-} in
  stage) shift; stage "$@" ;;
  run) shift; run "$@" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
