#!/usr/bin/env bash
# Prompt-prefix cache benchmark: finserve with its prefix cache on and off
# against llama-server (its default prompt reuse), on the same generated
# model, threads, slots and context, driven by `finserve bench`, in one run.
#
#   scripts/prefix-bench.sh [THREADS] [ROUNDS] [MODEL]
#
# Workloads (loopback only, bounded):
#   single: 8 requests one after another, one ~1,000-token system prompt
#           and distinct ~50-token questions: the first misses, the rest
#           can hit (p50 is a hit, max the miss);
#   shared: the same, 16 requests, 4 concurrent;
#   turns:  conversations of 5 turns (each resends its history), as many
#           as the slots (4) and twice as many (8).
# Each round runs every server once, in turn; the table gives medians over
# rounds and the median of per-round ratios against llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-2}
MODEL=${3:-testdata/models/bench-q8_0.gguf}
PARALLEL=${PARALLEL:-4}
CTX=${CTX:-2048}                 # per sequence
SYSTEM_WORDS=${SYSTEM_WORDS:-650} # ~1,000 tokens with the bench vocabulary
QUESTION_WORDS=${QUESTION_WORDS:-32}
MAX_TOKENS=${MAX_TOKENS:-32}
CONVERSATIONS=${CONVERSATIONS:-8}
PORT=${PORT:-18183}

. scripts/servers.sh
prepare bench-results/prefix

start() { # name: start that server in the background
  case $1 in
    llama-server) start_llama_server llama-server.log ;;
    cache-on) start_finserve finserve-on.log ;;
    cache-off) start_finserve finserve-off.log -- --prefix-cache=false ;;
  esac
  wait_healthy "$1"
}

trap stop EXIT

b() { bin/finserve bench --allow-failures --url "http://127.0.0.1:$PORT/v1" --max-tokens "$MAX_TOKENS" --system-words "$SYSTEM_WORDS" \
  --question-words "$QUESTION_WORDS" --json "$@"; }

for r in $(seq 1 "$ROUNDS"); do
  for s in llama-server cache-on cache-off; do
    echo "== round $r: $s"
    start "$s"
    warm_up
    b --clients 1 --requests-per-client 8 >"$OUT/$s-single-$r.json"
    b --clients 4 --requests-per-client 4 >"$OUT/$s-shared-$r.json"
    if [ "$s" != cache-off ]; then
      b --clients "$PARALLEL" --requests-per-client 1 --turns 5 >"$OUT/$s-turns-$r.json"
      b --clients "$CONVERSATIONS" --requests-per-client 1 --turns 5 >"$OUT/$s-turns2x-$r.json"
    fi
    stop
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
from statistics import median as med
out, rounds = sys.argv[1], int(sys.argv[2])
def load(s, w): return [json.load(open(f"{out}/{s}-{w}-{r}.json"))["targets"][0]["levels"][0]["result"] for r in range(1, rounds + 1)]
S = {s: load(s, "single") for s in ("llama-server", "cache-on", "cache-off")}
print(f"one client, 8 requests with a shared system prompt: TTFT ms, medians of {rounds} rounds")
print(f"{'':18} {'llama-server':>12} {'cache on':>9} {'cache off':>9}")
for name, get in (("p50 (hits)", lambda x: 1000 * x["ttft"]["p50"]), ("max (the miss)", lambda x: 1000 * x["ttft"]["p99"])):
    v = {s: [get(x) for x in S[s]] for s in S}
    print(f"{name:18} {med(v['llama-server']):12.1f} {med(v['cache-on']):9.1f} {med(v['cache-off']):9.1f}")
hit = [a["ttft"]["p50"] / b["ttft"]["p50"] for a, b in zip(S["cache-on"], S["cache-off"])]
print(f"a hit costs {100 * med(hit):.0f}% of a miss (cache-on p50 / cache-off p50, per round)")
print(f"\nshared system prompt, 16 requests, 4 concurrent: medians of {rounds} rounds; ratio = median per-round x/llama-server")
R = {s: load(s, "shared") for s in ("llama-server", "cache-on", "cache-off")}
print(f"{'':18} {'llama-server':>12} {'cache on':>9} {'ratio':>6} {'cache off':>9} {'ratio':>6}")
for name, get in (("TTFT p50 ms", lambda x: 1000 * x["ttft"]["p50"]), ("TTFT p90 ms", lambda x: 1000 * x["ttft"]["p90"]),
                  ("E2E p50 s", lambda x: x["e2el"]["p50"]), ("output tok/s", lambda x: x["output_throughput"]),
                  ("prompt tokens", lambda x: x["prompt_tokens"]), ("cached tokens", lambda x: x["cached_tokens"])):
    v = {s: [get(x) for x in R[s]] for s in R}
    ratio = lambda s: med(a / b for a, b in zip(v[s], v["llama-server"])) if min(v["llama-server"]) > 0 else float("nan")
    print(f"{name:18} {med(v['llama-server']):12.1f} {med(v['cache-on']):9.1f} {ratio('cache-on'):6.2f} "
          f"{med(v['cache-off']):9.1f} {ratio('cache-off'):6.2f}")
fails = sum(x["failed"] for s in R for x in R[s])
for w in ("turns", "turns2x"):
    T = {s: load(s, w) for s in ("llama-server", "cache-on")}
    print(f"\nconversations of 5 turns, {T['cache-on'][0]['clients']} at once: TTFT p50 ms per turn")
    print(f"{'turn':>4} {'llama-server':>12} {'cache on':>9} {'ratio':>6}")
    for k in range(5):
        v = {s: [1000 * x["turn_ttft"][k]["p50"] for x in T[s]] for s in T}
        print(f"{k+1:4d} {med(v['llama-server']):12.1f} {med(v['cache-on']):9.1f} {med(a / b for a, b in zip(v['cache-on'], v['llama-server'])):6.2f}")
    for s in T:
        x = T[s]
        print(f"{s}: prompt tokens {med(y['prompt_tokens'] for y in x):.0f}, cached {med(y['cached_tokens'] for y in x):.0f}")
    fails += sum(x["failed"] for s in T for x in T[s])
if fails:
    print(f"\n{fails} requests failed")
PY
