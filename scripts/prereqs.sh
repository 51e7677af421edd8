#!/usr/bin/env bash
# Install what building finserve needs when it is missing: a C/C++ compiler
# (Debian packages) and Go (from the Go module proxy's toolchain module,
# into .tools/go). Idempotent and quiet when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
GO_WANT=${GO_WANT:-1.26.8}

need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc)
command -v g++ >/dev/null || need_pkgs+=(g++)
command -v make >/dev/null || need_pkgs+=(make)
command -v curl >/dev/null || need_pkgs+=(curl ca-certificates)
command -v unzip >/dev/null || need_pkgs+=(unzip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "prereqs: installing ${need_pkgs[*]} with apt-get"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

go_ok() {
  command -v go >/dev/null || return 1
  local v
  v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  # want >= 1.26
  [ "$(printf '%s\n%s\n' "1.26" "$v" | sort -V | head -1)" = "1.26" ]
}
if ! go_ok; then
  arch=$(uname -m); case "$arch" in x86_64) arch=amd64;; aarch64) arch=arm64;; esac
  url="${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-go${GO_WANT}.linux-${arch}.zip"
  echo "prereqs: installing Go ${GO_WANT} from the Go module proxy into .tools/go"
  tmp=$(mktemp -d)
  curl -fsSL "$url" -o "$tmp/go.zip"
  rm -rf .tools/go .tools/golang.org
  mkdir -p .tools
  unzip -q "$tmp/go.zip" -d .tools
  mv ".tools/golang.org/toolchain@v0.0.1-go${GO_WANT}.linux-${arch}" .tools/go
  rm -rf .tools/golang.org "$tmp"
  chmod +x .tools/go/bin/* .tools/go/pkg/tool/*/* 2>/dev/null || true
fi
