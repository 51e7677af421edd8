#!/usr/bin/env bash
# AML scoring benchmark: one case with 8 active features scored with exact
# Shapley values (256 coalitions, one prefix-tree Score call) against the
# naive way, the same 256 prompts as independent completions requests
# without prompt reuse (cache_prompt false, max_tokens 1), on finserve and
# on llama-server; then cases per second at concurrency 4 over distinct
# cases; the tree also with --unified-kv (cells shared, not copied).
# Loopback only, bounded. Results in bench-results/aml/.
#
#   scripts/aml-bench.sh [THREADS] [ROUNDS] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-2}
MODEL=${3:-testdata/models/bench-q8_0.gguf}
PARALLEL=${PARALLEL:-4}
CTX=${CTX:-1024}
CASES=${CASES:-8}
PORT=${PORT:-18185}

. scripts/servers.sh
prepare bench-results/aml
CASE=aml/testdata/eight.json
bin/finserve aml prompts "$CASE" | sed 's/}$/,"max_tokens":1,"cache_prompt":false,"temperature":0}/' >"$OUT/naive.jsonl"
echo "coalition prompts: $(wc -l <"$OUT/naive.jsonl")"
mkdir -p "$OUT/cases"
for i in $(seq 1 "$CASES"); do
  sed -e "s/\"CASE-CN-EIGHT-001\"/\"CASE-$i\"/" -e "s/\"amount\": \"30000\", \"currency\": \"HKD\"/\"amount\": \"$((30000 + 700 * i))\", \"currency\": \"HKD\"/" \
    "$CASE" >"$OUT/cases/$i.json"
done
trap stop EXIT

aml() { # FILE: seconds for one AML request (its response kept)
  curl -sf -o "$OUT/last.json" -w '%{time_total}\n' -H 'Content-Type: application/json' \
    --data-binary @"$1" "http://127.0.0.1:$PORT/v1/aml/score"
}
naive() { # seconds for the 256 completions at concurrency PARALLEL
  local t0 t1
  t0=$(date +%s.%N)
  xargs -P "$PARALLEL" -d '\n' -I{} curl -sf -o /dev/null -H 'Content-Type: application/json' \
    --data-binary '{}' "http://127.0.0.1:$PORT/v1/completions" <"$OUT/naive.jsonl"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
throughput() { # seconds for CASES distinct cases at concurrency PARALLEL
  local t0 t1
  t0=$(date +%s.%N)
  ls "$OUT"/cases/*.json | xargs -P "$PARALLEL" -I{} curl -sf -o /dev/null -H 'Content-Type: application/json' \
    --data-binary @{} "http://127.0.0.1:$PORT/v1/aml/score"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: finserve"
  start_finserve finserve-$r.log
  wait_healthy finserve
  echo "cold $(aml "$CASE")" >>"$OUT/finserve-$r.txt" # the first request on a fresh server
  cp "$OUT/last.json" "$OUT/decision-$r.json"
  for _ in 1 2 3; do echo "warm $(aml "$CASE")" >>"$OUT/finserve-$r.txt"; done
  echo "naive $(naive)" >>"$OUT/finserve-$r.txt"
  echo "cases $(throughput)" >>"$OUT/finserve-$r.txt"
  stop
  echo "== round $r: finserve --unified-kv"
  start_finserve finserve-unified-$r.log -- --unified-kv
  wait_healthy finserve-unified
  echo "cold $(aml "$CASE")" >>"$OUT/unified-$r.txt"
  for _ in 1 2 3; do echo "warm $(aml "$CASE")" >>"$OUT/unified-$r.txt"; done
  echo "cases $(throughput)" >>"$OUT/unified-$r.txt"
  stop
  echo "== round $r: llama-server"
  start_llama_server llama-server-$r.log
  wait_healthy llama-server
  echo "naive $(naive)" >>"$OUT/llama-server-$r.txt"
  stop
done

python3 - "$OUT" "$ROUNDS" "$CASES" <<'PY'
import json, statistics, sys
out, rounds, cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(name):
    d = {}
    for line in open(f"{out}/{name}"):
        k, v = line.split()
        d.setdefault(k, []).append(float(v))
    return d
rows = []
for r in range(1, rounds + 1):
    f, l, u = read(f"finserve-{r}.txt"), read(f"llama-server-{r}.txt"), read(f"unified-{r}.txt")
    warm = statistics.median(f["warm"])
    uwarm = statistics.median(u["warm"])
    rows.append((f["cold"][0], warm, f["naive"][0], l["naive"][0], cases / f["cases"][0], u["cold"][0], uwarm, cases / u["cases"][0]))
    print(f"round {r}: --unified-kv tree cold {u['cold'][0]:.3f}s warm {uwarm:.3f}s, naive/cold {f['naive'][0]/u['cold'][0]:.1f}, "
          f"{cases / u['cases'][0]:.2f} cases/s")
    print(f"round {r}: tree cold {f['cold'][0]:.3f}s warm {warm:.3f}s | naive finserve {f['naive'][0]:.2f}s "
          f"llama-server {l['naive'][0]:.2f}s | ratios naive/cold {f['naive'][0]/f['cold'][0]:.1f} "
          f"naive/warm {f['naive'][0]/warm:.1f} llama-server-naive/cold {l['naive'][0]/f['cold'][0]:.1f} | "
          f"{cases / f['cases'][0]:.2f} cases/s at concurrency 4")
d = json.load(open(f"{out}/decision-1.json"))
ex = d["explanation"]
print(f"decision: players {ex['players']}, coalitions {ex['coalitions']}, evaluated tokens {ex['evaluated_tokens']} "
      f"of {ex['naive_tokens']} ({ex['naive_tokens']/ex['evaluated_tokens']:.1f}x fewer), f_x {ex['f_x']:.4f}, f_baseline {ex['f_baseline']:.4f}")
med = lambda i: statistics.median(x[i] for x in rows)
print(f"medians: cold {med(0):.3f}s, warm {med(1):.3f}s, naive finserve {med(2):.2f}s, naive llama-server {med(3):.2f}s, "
      f"naive/cold {statistics.median(x[2]/x[0] for x in rows):.1f}x, naive/warm {statistics.median(x[2]/x[1] for x in rows):.1f}x, "
      f"llama-server naive/cold {statistics.median(x[3]/x[0] for x in rows):.1f}x, {med(4):.2f} cases/s; "
      f"--unified-kv cold {med(5):.3f}s warm {med(6):.3f}s naive/cold {statistics.median(x[2]/x[5] for x in rows):.1f}x {med(7):.2f} cases/s")
PY
