#!/usr/bin/env bash
# Latency-tier benchmark: realtime chat TTFT on an idle server and beside
# a saturating batch load, finserve (tiers) against llama-server (one FIFO
# queue), same generated model, threads, slots and context, in one run.
#
#   scripts/tier-bench.sh [THREADS] [ROUNDS] [MODEL]
#
# Workloads (loopback only, bounded), driven by `finserve bench`:
#   idle:      RT_REQUESTS realtime chats one after another (distinct
#              ~RT_WORDS-word questions, RT_TOKENS tokens each);
#   saturated: the same while BG closed-loop batch streams (~BG_WORDS-word
#              prompts, BG_TOKENS tokens each) keep every slot busy and
#              the queue full. finserve gets them at /tiers/realtime/v1
#              and /tiers/batch/v1; llama-server at /v1 (it has no tiers).
#              llama-server queues each realtime request behind the batch
#              ones, so it gets only PEER_SAT_REQUESTS of them.
# Each round runs every server once, in turn; the table gives medians over
# rounds. Target: finserve's saturated realtime p99 TTFT <= 1.5x its idle p99.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-2}
MODEL=${3:-testdata/models/bench-q8_0.gguf}
PARALLEL=${PARALLEL:-4}
CTX=${CTX:-2048}
RT_REQUESTS=${RT_REQUESTS:-30}
RT_WORDS=${RT_WORDS:-48}
RT_TOKENS=${RT_TOKENS:-16}
BG=${BG:-16}
BG_WORDS=${BG_WORDS:-200}
BG_TOKENS=${BG_TOKENS:-128}
PEER_SAT_REQUESTS=${PEER_SAT_REQUESTS:-4}
PORT=${PORT:-18184}

. scripts/servers.sh
prepare bench-results/tiers

start() { # name: start that server in the background
  case $1 in
    llama-server) start_llama_server llama-server.log ;;
    finserve) start_finserve finserve.log ;;
  esac
  wait_healthy "$1"
}

trap stop EXIT
base="http://127.0.0.1:$PORT"

for r in $(seq 1 "$ROUNDS"); do
  for s in llama-server finserve; do
    echo "== round $r: $s"
    start "$s"
    warm_up
    rt=$base/v1 bg=$base/v1 sat=$PEER_SAT_REQUESTS
    if [ "$s" = finserve ]; then rt=$base/tiers/realtime/v1 bg=$base/tiers/batch/v1 sat=$RT_REQUESTS; fi
    b() { bin/finserve bench --allow-failures --url "$rt" --clients 1 --max-tokens "$RT_TOKENS" --question-words "$RT_WORDS" --json "$@"; }
    # distinct questions per run: no prefix-cache hits between them
    b --requests-per-client "$RT_REQUESTS" --seed $((2 * r)) >"$OUT/$s-idle-$r.json"
    b --requests-per-client "$sat" --seed $((2 * r + 1)) --background "$BG" --background-url "$bg" \
      --background-words "$BG_WORDS" --background-max-tokens "$BG_TOKENS" >"$OUT/$s-saturated-$r.json"
    if [ "$s" = finserve ]; then curl -s "$base/metrics" >"$OUT/finserve-metrics-$r.prom"; grep -E "^finserve_tier_(preemptions|paused_steps|rejections)_total" "$OUT/finserve-metrics-$r.prom" >"$OUT/finserve-metrics-$r.txt" || true; fi
    stop
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
from statistics import median as med
out, rounds = sys.argv[1], int(sys.argv[2])
def load(s, w): return [json.load(open(f"{out}/{s}-{w}-{r}.json"))["targets"][0]["levels"][0]["result"] for r in range(1, rounds + 1)]
servers = ("llama-server", "finserve")
D = {(s, w): load(s, w) for s in servers for w in ("idle", "saturated")}
print(f"realtime chat TTFT (ms), medians of {rounds} rounds")
print(f"{'':14} {'idle p50':>9} {'idle p99':>9} {'sat p50':>9} {'sat p99':>9} {'sat/idle p99':>12} {'n sat':>6} {'batch tok/s':>11} {'failed':>6}")
for s in servers:
    idle, sat = D[(s, "idle")], D[(s, "saturated")]
    ratio = med(b["ttft"]["p99"] / a["ttft"]["p99"] for a, b in zip(idle, sat))
    bg = med(x["background"]["output_throughput"] for x in sat)
    failed = sum(x["failed"] for x in idle + sat) + sum(x["background"]["failed"] for x in sat)
    print(f"{s:14} {med(1000*x['ttft']['p50'] for x in idle):9.1f} {med(1000*x['ttft']['p99'] for x in idle):9.1f} "
          f"{med(1000*x['ttft']['p50'] for x in sat):9.1f} {med(1000*x['ttft']['p99'] for x in sat):9.1f} {ratio:12.2f} "
          f"{sat[0]['requests']:6d} {bg:11.1f} {failed:6d}")
f, l = D[("finserve", "saturated")], D[("llama-server", "saturated")]
print(f"saturated realtime TTFT, finserve / llama-server: p50 {med(a['ttft']['p50'] / b['ttft']['p50'] for a, b in zip(f, l)):.3f}, "
      f"p99 {med(a['ttft']['p99'] / b['ttft']['p99'] for a, b in zip(f, l)):.3f}")
print(f"background batch output tok/s, finserve / llama-server: {med(a['background']['output_throughput'] / b['background']['output_throughput'] for a, b in zip(f, l)):.2f}")
PY
for f in "$OUT"/finserve-metrics-*.txt; do echo "$f:"; cat "$f"; done
