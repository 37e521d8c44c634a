#!/usr/bin/env bash
# The cost of logging at the default level: resolve throughput of `muster serve` (release build) with
# RUST_LOG=off and with RUST_LOG=info, alternating, after a warm-up. Needs wrk.
# Usage: crates/muster-bench/log-cost.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
cargo build --release -q -p muster
run() {
  local port base server
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  env "RUST_LOG=$1" ./target/release/muster serve --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done
  for i in $(seq 0 99); do
    curl -sf -X PUT "$base/v1/nodes/bench-$i" -H 'content-type: application/json' \
      -d "{\"address\":\"10.0.0.$((i + 1)):8080\",\"services\":[{\"name\":\"svc-$((i % 10))\",\"version\":\"1.$((i % 3)).0\"}],\"ttlMs\":600000}" >/dev/null
  done
  wrk -t2 -c64 -d3s "$base/v1/services/svc-3/instances" >/dev/null
  echo "RUST_LOG=$1 $(wrk -t2 -c64 -d8s "$base/v1/services/svc-3/instances" | grep Requests/sec)"
  kill "$server"
  wait "$server" 2>/dev/null || true
}
for _ in $(seq "$rounds"); do run off; run info; done
