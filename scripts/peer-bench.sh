#!/usr/bin/env bash
# Side-by-side engine benchmark: finserve (bundled and system provider)
# against llama-bench and llama-batched-bench from the Debian sid root, on
# the same generated model files, threads and shapes, in one run.
#
#   scripts/peer-bench.sh [THREADS] [REPS] [ROUNDS]
#
# Each round runs every tool once per model, the tools interleaved, so that
# the machine's load drifts over all of them alike; the table reports the
# median over rounds of each tool and of each round's finserve/peer ratio.
# Needs ../shared/peers/sid-root.sh (set up once with `sid-root.sh setup`)
# and bin/finserve (make build). Writes results to bench-results/ and prints
# a table of tokens/s with finserve/peer ratios. These machines are shared
# and noisy: compare ratios from one run, not absolute numbers across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
REPS=${2:-5}
ROUNDS=${3:-3}
SID=${SID_ROOT_SH:-../shared/peers/sid-root.sh}
OUT=bench-results
MODELS=testdata/models
mkdir -p "$OUT" "$MODELS"

sid() { "$SID" run "$@"; }

# llama-batched-bench and llama-quantize live in llama.cpp-tools(-extra).
if ! sid sh -c 'command -v llama-batched-bench >/dev/null'; then
  echo "installing llama.cpp-tools-extra in the sid root"
  sid sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends llama.cpp-tools-extra >/dev/null'
fi

# Models: the bench preset as q8_0 (written by finserve) and Q4_K_M
# (quantized from f32 by llama-quantize until finserve has its own).
[ -f $MODELS/bench-q8_0.gguf ] || bin/finserve model gen --preset bench --type q8_0 --out $MODELS/bench-q8_0.gguf
if [ ! -f $MODELS/bench-q4_k_m.gguf ]; then
  [ -f $MODELS/bench-f32.gguf ] || bin/finserve model gen --preset bench --type f32 --out $MODELS/bench-f32.gguf
  sid llama-quantize $MODELS/bench-f32.gguf $MODELS/bench-q4_k_m.gguf Q4_K_M "$THREADS" >/dev/null 2>&1
fi

# The system-provider build, inside the sid root.
sid make build-system >/dev/null

NPL=1,4,8,16
rm -f "$OUT"/*.json "$OUT"/*.jsonl
for r in $(seq 1 "$ROUNDS"); do
  for m in q8_0 q4_k_m; do
    f=$MODELS/bench-$m.gguf
    echo "== round $r, $m: llama-bench, llama-batched-bench, finserve bundled, finserve system"
    sid llama-bench -m "$f" -t "$THREADS" -p 512 -n 128 -r "$REPS" -o json > "$OUT/$m-$r-llama-bench.json" 2>/dev/null
    sid llama-batched-bench -m "$f" -t "$THREADS" -c 8192 -b 2048 -ub 512 -npp 128 -ntg 128 -npl $NPL \
      --output-format jsonl 2>/dev/null | grep '^{' > "$OUT/$m-$r-batched-bench.jsonl"
    bin/finserve model bench "$f" --threads "$THREADS" --reps "$REPS" --npl $NPL --json > "$OUT/$m-$r-finserve-bundled.json" 2>/dev/null
    sid bin/finserve-system model bench "$f" --threads "$THREADS" --reps "$REPS" --npl $NPL --json > "$OUT/$m-$r-finserve-system.json" 2>/dev/null
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def peer(m, r):
    res = {}
    for x in json.load(open(f"{out}/{m}-{r}-llama-bench.json")):
        res[f"pp{x['n_prompt']}" if x["n_prompt"] else f"tg{x['n_gen']}"] = x["avg_ts"]
    for line in open(f"{out}/{m}-{r}-batched-bench.jsonl"):
        x = json.loads(line)
        res[f"npl={x['pl']} tg{x['tg']}"] = x["speed_tg"]
    return res
def ours(m, r, prov):
    return {x["Test"]: x["Mean"] for x in json.load(open(f"{out}/{m}-{r}-finserve-{prov}.json"))}
med = statistics.median
print(f"tokens/s, medians of {rounds} interleaved rounds; ratio = median of per-round finserve/peer")
print(f"{'model':8} {'test':14} {'llama.cpp':>10} {'system':>9} {'ratio':>6} {'bundled':>9} {'ratio':>6}")
for m in ("q8_0", "q4_k_m"):
    P = [peer(m, r) for r in range(1, rounds + 1)]
    S = [ours(m, r, "system") for r in range(1, rounds + 1)]
    B = [ours(m, r, "bundled") for r in range(1, rounds + 1)]
    for t in P[0]:
        p = med(x[t] for x in P)
        s, b = med(x[t] for x in S), med(x[t] for x in B)
        rs = med(S[i][t] / P[i][t] for i in range(rounds))
        rb = med(B[i][t] / P[i][t] for i in range(rounds))
        print(f"{m:8} {t:14} {p:10.1f} {s:9.1f} {rs:6.2f} {b:9.1f} {rb:6.2f}")
PY
