# Shared by the side-by-side benchmarks (sourced): their results
# directory, starting the servers, waiting for the one on 127.0.0.1:$PORT
# to be healthy, and stopping it.

SID=${SID_ROOT_SH:-../shared/peers/sid-root.sh}

prepare() { # DIR: the results directory, emptied of old results; generates $MODEL if missing
  OUT=$1
  mkdir -p "$OUT"
  rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.prom
  [ -f "$MODEL" ] || bin/finserve model gen --preset bench --type q8_0 --out "$MODEL"
}

wait_healthy() { # name: until /ready (finserve; with $WAIT_KEY when keys are on) or, where there is none, /health (llama-server) answers 200
  local code auth=()
  [ -n "${WAIT_KEY:-}" ] && auth=(-H "Authorization: Bearer $WAIT_KEY")
  for _ in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "http://127.0.0.1:$PORT/ready" 2>/dev/null || true)
    [ "$code" = 200 ] && return 0
    [ "$code" = 404 ] && curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become healthy" >&2
  return 1
}

stop() {
  pkill -f -- "--port $PORT" 2>/dev/null || true
  pkill -f -- "--addr 127.0.0.1:$PORT" 2>/dev/null || true
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 || break
    sleep 0.1
  done
  sleep 1
}

warm_up() { # one short request, so that the first measured one finds the weights in memory
  bin/finserve bench --url "http://127.0.0.1:$PORT/v1" --clients 1 --requests-per-client 1 --max-tokens 8 >/dev/null
}

# Starting a server in the background, logging to $OUT/LOG; the caller sets
# MODEL, THREADS, PARALLEL, CTX (per sequence), PORT, OUT and SID.
start_llama_server() { # LOG
  "$SID" run llama-server -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np "$PARALLEL" -c $((CTX * PARALLEL)) \
    --host 127.0.0.1 --port "$PORT" --no-webui >"$OUT/$1" 2>&1 &
}

start_finserve() { # LOG [BINARY-PREFIX...] -- [SERVE-FLAGS...]: e.g. start_finserve f.log -- --prefix-cache=false
  local log=$1 cmd=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do cmd+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  [ ${#cmd[@]} -gt 0 ] || cmd=(bin/finserve)
  "${cmd[@]}" serve --model "$MODEL" --threads "$THREADS" --parallel "$PARALLEL" --ctx "$CTX" \
    --addr 127.0.0.1:"$PORT" "$@" >"$OUT/$log" 2>&1 &
}
