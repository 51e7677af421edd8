#!/usr/bin/env bash
# Stage the llama.cpp and ggml headers of the bundled provider into
# third_party/include (git-ignored), from the ollama module in the Go module
# cache at the version go.mod requires. Nothing here is committed: the
# headers come from the module proxy like every other dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
go mod download github.com/ollama/ollama
dir=$(go list -m -f '{{.Dir}}' github.com/ollama/ollama)
out=third_party/include
rm -rf "$out"
mkdir -p "$out"
cp "$dir"/llama/llama.cpp/include/*.h "$dir"/ml/backend/ggml/ggml/include/*.h "$out"/
chmod u+w "$out"/*.h
echo "staged llama.cpp headers from $dir into $out"
