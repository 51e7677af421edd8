#!/usr/bin/env bash
# Side-by-side engine benchmark: finserve (bundled and system provider)
# against llama-bench and llama-batched-bench from the Debian sid root, on
# the same generated model files, threads and shapes, in one run.
#
#   scripts/peer-bench.sh [THREADS] [REPS]
#
# Needs ../shared/peers/sid-root.sh (set up once with `sid-root.sh setup`)
# and bin/finserve (make build). Writes results to bench-results/ and prints
# a table of tokens/s with finserve/peer ratios. These machines are shared
# and noisy: compare ratios from one run, not absolute numbers across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
REPS=${2:-5}
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
for m in q8_0 q4_k_m; do
  f=$MODELS/bench-$m.gguf
  echo "== $m: llama-bench"
  sid llama-bench -m "$f" -t "$THREADS" -p 512 -n 128 -r "$REPS" -o json > "$OUT/$m-llama-bench.json" 2>/dev/null
  echo "== $m: llama-batched-bench"
  sid llama-batched-bench -m "$f" -t "$THREADS" -c 8192 -b 2048 -ub 512 -npp 128 -ntg 128 -npl $NPL \
    --output-format jsonl 2>/dev/null | grep '^{' > "$OUT/$m-batched-bench.jsonl"
  echo "== $m: finserve (bundled)"
  bin/finserve model bench "$f" --threads "$THREADS" --reps "$REPS" --npl $NPL --json > "$OUT/$m-finserve-bundled.json"
  echo "== $m: finserve (system)"
  sid bin/finserve-system model bench "$f" --threads "$THREADS" --reps "$REPS" --npl $NPL --json > "$OUT/$m-finserve-system.json" 2>/dev/null
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(p):
    with open(p) as f:
        return f.read()
print(f"{'model':8} {'test':14} {'llama.cpp':>10} {'system':>10} {'ratio':>6} {'bundled':>10} {'ratio':>6}")
for m in ("q8_0", "q4_k_m"):
    peer = {}
    for r in json.loads(load(f"{out}/{m}-llama-bench.json")):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        peer[test] = r["avg_ts"]
    for line in load(f"{out}/{m}-batched-bench.jsonl").splitlines():
        r = json.loads(line)
        peer[f"npl={r['pl']} tg{r['tg']}"] = r["speed_tg"]
    ours = {}
    for prov in ("system", "bundled"):
        for r in json.loads(load(f"{out}/{m}-finserve-{prov}.json")):
            ours.setdefault(r["Test"], {})[prov] = r["Mean"]
    for test, p in peer.items():
        s = ours.get(test, {}).get("system", float("nan"))
        b = ours.get(test, {}).get("bundled", float("nan"))
        print(f"{m:8} {test:14} {p:10.1f} {s:10.1f} {s/p:6.2f} {b:10.1f} {b/p:6.2f}")
PY
