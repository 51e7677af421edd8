#!/usr/bin/env bash
# The build steps of the container images (Dockerfile), kept in one script
# so that CI can run them directly on machines without a Docker engine:
# prerequisites, a portable-CPU build of finserve, a smoke run of the
# binary (version, a generated model served and answered), and the
# staging of what the runtime image holds into OUT.
#
#   CPU_LEVEL=x86-64-v3 scripts/container-build.sh OUT                  # CPU image: bundled llama.cpp
#   PROVIDER=system CUDA=1 LLAMA_PREFIX=/opt/finserve \
#     scripts/container-build.sh OUT                                     # CUDA image (needs nvcc)
#
# PROVIDER=system builds llama.cpp from the ollama module's sources with
# scripts/build-llama.sh into LLAMA_PREFIX (its libraries and backend
# modules are found there at run time, so the image keeps that path) and
# finserve against it; with CUDA=0 this is the CUDA image's build without
# its GPU backend, which is what CI can check.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/container-build.sh OUT}
CPU_LEVEL=${CPU_LEVEL:-x86-64-v3}
PROVIDER=${PROVIDER:-bundled}
CUDA=${CUDA:-0}

scripts/prereqs.sh
make -s headers
mkdir -p "$OUT/usr/local/bin" "$OUT/etc/finserve"
# Separate binary names: a portable build must not overwrite bin/finserve
# (-march=native) nor reuse its build cache entries for the wrong level.
case $PROVIDER in
  bundled)
    make -s build CPU_LEVEL="$CPU_LEVEL" GO_BUILD_OUT=bin/finserve-portable FIPS="${FIPS:-}"
    bin=bin/finserve-portable
    ;;
  system)
    LLAMA_PREFIX=$(realpath -m "${LLAMA_PREFIX:-.tools/llama}")
    CUDA=$CUDA CPU_LEVEL=$CPU_LEVEL scripts/build-llama.sh "$LLAMA_PREFIX"
    PKG_CONFIG_PATH="$LLAMA_PREFIX/lib/pkgconfig" make -s build-system CPU_LEVEL="$CPU_LEVEL" SYSTEM_BUILD_OUT=bin/finserve-system-portable FIPS="${FIPS:-}"
    bin=bin/finserve-system-portable
    mkdir -p "$OUT$LLAMA_PREFIX/lib"
    cp -a "$LLAMA_PREFIX"/lib/*.so* "$LLAMA_PREFIX/lib/ggml" "$OUT$LLAMA_PREFIX/lib/"
    ;;
  *) echo "container-build: PROVIDER must be bundled or system, not $PROVIDER" >&2; exit 2 ;;
esac
cp "$bin" "$OUT/usr/local/bin/finserve"
"$bin" aml config >"$OUT/etc/finserve/aml.yaml"
"$OUT/usr/local/bin/finserve" version

# Smoke: the staged binary serves a generated model and answers.
tmp=$(mktemp -d)
pid=
trap 'status=$?; [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ $status -ne 0 ] && cat "$tmp/serve.log" >&2; rm -rf "$tmp"' EXIT
"$OUT/usr/local/bin/finserve" model gen --preset tiny --type q8_0 --out "$tmp/tiny.gguf" >/dev/null
port=$((20000 + RANDOM % 10000))
"$OUT/usr/local/bin/finserve" serve --model "$tmp/tiny.gguf" --addr "127.0.0.1:$port" --threads 2 --ctx 1024 --parallel 1 \
  --log-format json --audit-log "$tmp/audit.jsonl" 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}' >/dev/null
curl -fsS "http://127.0.0.1:$port/v1/aml/score" -H 'Content-Type: application/json' \
  --data-binary @aml/testdata/salary.json >/dev/null
"$OUT/usr/local/bin/finserve" audit verify "$tmp/audit.jsonl"
echo "container-build: staged $(du -sh "$OUT" | cut -f1) into $OUT (provider $PROVIDER, CUDA=$CUDA, CPU level $CPU_LEVEL)"
