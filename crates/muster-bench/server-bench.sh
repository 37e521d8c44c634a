#!/usr/bin/env bash
# Benchmarks a running `muster serve` (release build) on the embedded store with wrk:
# resolve (100 instances over 10 services, 64 connections), heartbeats, registrations.
# Usage: crates/muster-bench/server-bench.sh [seconds]   (needs wrk: apt-get install wrk)
# SECURE=1 runs the same with access control and TLS on: a self-signed certificate (openssl) and a
# node-scoped token (write on services svc-* of nodes bench-*, reg-* of reg-*) on every request;
# ACL=1 or TLS=1 turns on one of the two.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-10}
[ -n "${BIN:-}" ] || cargo build --release -q -p muster
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tmp=$(mktemp -d)
extra=()
curl_args=(-sf)
wrk_args=()
scheme=http
if [ -n "${SECURE:-}" ]; then ACL=1; TLS=1; fi
if [ -n "${TLS:-}" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  extra+=(--tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem")
  curl_args+=(--cacert "$tmp/cert.pem")
  scheme=https
  echo "# TLS on"
fi
if [ -n "${ACL:-}" ]; then
  secret="mst_bench_$(openssl rand -hex 16)"
  cat > "$tmp/muster.toml" <<TOML
[acl]
enabled = true
[[acl.tokens]]
name = "bench"
secret = "$secret"
rules = [
  { services = "svc-*", nodes = "bench-*", access = "write" },
  { services = "reg-*", nodes = "reg-*", access = "write" },
]
TOML
  extra+=(--config "$tmp/muster.toml")
  curl_args+=(-H "Authorization: Bearer $secret")
  wrk_args=(-H "Authorization: Bearer $secret")
  echo "# access control on (node-scoped token on every request)"
fi
base="$scheme://127.0.0.1:$port"
${BIN:-./target/release/muster} serve --listen "127.0.0.1:$port" --max-instances-per-service 100000 "${extra[@]}" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl "${curl_args[@]}" "$base/health" >/dev/null && break; sleep 0.1; done
for i in $(seq 0 99); do
  curl "${curl_args[@]}" -X PUT "$base/v1/nodes/bench-$i" -H 'content-type: application/json' \
    -d "{\"address\":\"10.0.$((i / 250)).$((i % 250 + 1)):8080\",\"services\":[{\"name\":\"svc-$((i % 10))\",\"version\":\"1.$((i % 3)).0\"}],\"ttlMs\":600000}" >/dev/null
done
echo "## resolve: GET /v1/services/svc-3/instances (10 of 100 instances), 64 connections, ${seconds}s"
wrk -t2 -c64 -d"${seconds}s" --latency "${wrk_args[@]}" "$base/v1/services/svc-3/instances" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
echo "## resolve, seed-003 route: GET /resolve/svc-3"
wrk -t2 -c64 -d"${seconds}s" --latency "${wrk_args[@]}" "$base/resolve/svc-3" | grep -E "Requests/sec|50%|99%|Non-2xx"
echo "## heartbeats: PUT /v1/nodes/{id}/heartbeat over 100 nodes, 64 connections"
wrk -t2 -c64 -d"${seconds}s" --latency "${wrk_args[@]}" -s crates/muster-bench/wrk/heartbeat.lua "$base" | grep -E "Requests/sec|50%|99%|Non-2xx"
echo "## registrations: PUT /v1/nodes/{new id}, 64 connections"
wrk -t2 -c64 -d"${seconds}s" --latency "${wrk_args[@]}" -s crates/muster-bench/wrk/register.lua "$base" | grep -E "Requests/sec|50%|99%|Non-2xx"
echo "## server resident memory after the run: $(ps -o rss= -p $server) KiB with $(curl "${curl_args[@]}" "$base/v1/nodes" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))') nodes"
