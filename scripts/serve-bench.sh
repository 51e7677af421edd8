#!/usr/bin/env bash
# Side-by-side serving benchmark: finserve (bundled and system provider)
# against llama-server from the Debian sid root, on the same generated
# model, threads, context and parallel slots, driven by the same client
# (`finserve bench`: streaming chat, ignore_eos, greedy), in one run.
#
#   scripts/serve-bench.sh [THREADS] [ROUNDS] [MODEL]
#
# Each round runs every server once, in turn, so that the machine's drift
# hits them alike; the table gives medians over rounds and the median of
# each round's finserve/llama-server ratio. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-3}
MODEL=${3:-testdata/models/bench-q8_0.gguf}
PARALLEL=${PARALLEL:-8}
CTX=${CTX:-1024}          # per sequence
MAX_TOKENS=${MAX_TOKENS:-128}
PER_CLIENT=${PER_CLIENT:-4}
CLIENTS=${CLIENTS:-1,8}
PORT=${PORT:-18181}

sid() { "$SID" run "$@"; }
. scripts/servers.sh
prepare bench-results/serve

sid make build-system >/dev/null

start() { # name: start that server in the background
  case $1 in
    llama-server) start_llama_server llama-server.log ;;
    bundled) start_finserve finserve-bundled.log ;;
    system) start_finserve finserve-system.log "$SID" run bin/finserve-system ;;
  esac
  wait_healthy "$1"
}

trap stop EXIT

for r in $(seq 1 "$ROUNDS"); do
  for s in llama-server bundled system; do
    echo "== round $r: $s"
    start "$s"
    warm_up
    # Prompt reuse off ("cache_prompt": false, honoured by both), then on
    # (both servers' default; make prefix-bench measures it in depth).
    bin/finserve bench --url "http://127.0.0.1:$PORT/v1" --clients "$CLIENTS" --requests-per-client "$PER_CLIENT" \
      --max-tokens "$MAX_TOKENS" --no-prompt-cache --json >"$OUT/$s-$r.json"
    bin/finserve bench --url "http://127.0.0.1:$PORT/v1" --clients "$CLIENTS" --requests-per-client "$PER_CLIENT" \
      --max-tokens "$MAX_TOKENS" --json >"$OUT/$s-$r-cached.json"
    stop
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median
for variant, title in (("", "prompt reuse off (cache_prompt: false)"), ("-cached", "prompt reuse on (the default of both)")):
  R = {s: [json.load(open(f"{out}/{s}-{r}{variant}.json")) for r in range(1, rounds + 1)] for s in ("llama-server", "bundled", "system")}
  print(f"\n{title}: medians of {rounds} interleaved rounds; ratio = median of per-round finserve/llama-server")
  print(f"{'clients':>7} {'metric':16} {'llama-server':>12} {'system':>9} {'ratio':>6} {'bundled':>9} {'ratio':>6}")
  for i, res in enumerate(R["llama-server"][0]):
      c = res["Clients"]
      for name, get in (("output tok/s", lambda x: x["OutputTPS"]), ("TTFT p50 ms", lambda x: 1000 * x["TTFT"]["P50"]),
                        ("TPOT p50 ms", lambda x: 1000 * x["TPOT"]["P50"])):
          v = {s: [get(R[s][r][i]) for r in range(rounds)] for s in R}
          fails = sum(R[s][r][i]["Failed"] for s in R for r in range(rounds))
          ratio = lambda s: med(v[s][r] / v["llama-server"][r] for r in range(rounds))
          print(f"{c:7d} {name:16} {med(v['llama-server']):12.1f} {med(v['system']):9.1f} {ratio('system'):6.2f} "
                f"{med(v['bundled']):9.1f} {ratio('bundled'):6.2f}" + (f"  ({fails} failed)" if fails else ""))
PY
