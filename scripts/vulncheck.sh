#!/usr/bin/env bash
# govulncheck without reaching vuln.go.dev: the Go vulnerability database's
# OSV records come from the Go module proxy (module golang.org/x/vulndb),
# are indexed locally with its own indexdb tool, and govulncheck (also
# from the proxy) reads them with -db file://. Exits non-zero when a
# vulnerability reachable from finserve's code is not among the reviewed
# exceptions in deploy/vuln-exceptions.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VULN=${VULN:-v1.9.0}
VULNDB=${VULNDB:-v0.0.0-20261105234957-e22db6528018}
eval "$(make -s env)"
src=$(go mod download -json "golang.org/x/vulndb@$VULNDB" | sed -n 's/.*"Dir": "\(.*\)",*$/\1/p')
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
GOFLAGS=-mod=mod go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB" -vulns "$src/data/osv" -out "$db/db"
echo "vulncheck: database golang.org/x/vulndb@$VULNDB ($(ls "$src/data/osv" | wc -l) records)"
go run "golang.org/x/vuln/cmd/govulncheck@$VULN" -db "file://$db/db" ./... >"$db/report.txt" 2>&1 || true
found=$(grep -oE '^Vulnerability #[0-9]+: GO-[0-9]+-[0-9]+' "$db/report.txt" | awk '{print $3}' | sort -u)
if ! grep -q -e '^Your code is affected' -e '^No vulnerabilities found' "$db/report.txt"; then
  cat "$db/report.txt"
  echo "vulncheck: govulncheck did not finish" >&2
  exit 1
fi
new=()
for id in $found; do
  grep -q "^$id " deploy/vuln-exceptions.txt || new+=("$id")
done
echo "vulncheck: $(echo "$found" | grep -c . || true) reachable, ${#new[@]} not among the reviewed exceptions"
if [ ${#new[@]} -gt 0 ]; then
  cat "$db/report.txt"
  echo "vulncheck: unreviewed: ${new[*]}" >&2
  exit 1
fi
