#!/usr/bin/env bash
# Soak (loopback, bounded): finserve with a key file and an audit log on a
# generated model, `finserve soak` with 64 clients for 10 minutes mixing
# tiers, disconnecting streams, an over-rate key and AML scoring; then the
# audit log is verified. Writes bench-results/soak/.
#
#   scripts/soak.sh [THREADS] [DURATION] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
DURATION=${2:-10m}
MODEL=${3:-testdata/models/bench-q8_0.gguf}
PARALLEL=${PARALLEL:-8}
CTX=${CTX:-2048}
CLIENTS=${CLIENTS:-64}
PORT=${PORT:-18186}

. scripts/servers.sh
prepare bench-results/soak
keys=$OUT/keys.json
rm -f "$keys" "$OUT/audit.jsonl" "$OUT/audit.jsonl.head" "$OUT/audit.jsonl.key"
KEY=$(bin/finserve keys add soak --tiers realtime,standard,batch --file "$keys" 2>/dev/null)
RATE_KEY=$(bin/finserve keys add slow --tiers realtime --rate 5 --file "$keys" 2>/dev/null)
trap stop EXIT
start_finserve finserve.log -- --api-keys "$keys" --audit-log "$OUT/audit.jsonl" --log-format json
WAIT_KEY=$KEY wait_healthy finserve
bin/finserve soak --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --duration "$DURATION" --key "$KEY" --rate-key "$RATE_KEY" \
  --aml-case aml/testdata/salary.json --json "$OUT/soak.json" | tee "$OUT/soak.txt"
bin/finserve audit verify "$OUT/audit.jsonl" | tee -a "$OUT/soak.txt"
if grep -q -e "$KEY" -e "$RATE_KEY" "$OUT/finserve.log"; then
  echo "soak: an API key appears in the server log" | tee -a "$OUT/soak.txt"
  exit 1
fi
