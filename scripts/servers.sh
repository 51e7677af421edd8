# Shared by the side-by-side benchmarks (sourced): waiting for the server
# on 127.0.0.1:$PORT to be healthy, and stopping it.

wait_healthy() { # name
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
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
