#!/usr/bin/env bash
# Muster and r-nacos side by side: the same three workloads (resolve, heartbeat, registration of
# fresh nodes; 100 instances over 10 services seeded first; wrk -t2 -c64 --latency) against a fresh
# `muster serve` (embedded store) and, when RNACOS points at an r-nacos binary, a fresh r-nacos
# (its own data directory, instance timeouts raised so nothing expires during the run), in
# interleaved rounds (the order flips every round), then the ratios per round and their median.
#
# Usage: RNACOS=/path/to/rnacos crates/muster-bench/compare.sh [rounds] [seconds]
#   BIN=path      a muster binary (default: builds ./target/release/muster)
#   RNACOS=path   r-nacos 0.8.8 (`cargo install rnacos --version 0.8.8 --root DIR`); not a dependency
#                 of the project and not built by CI. Without it only Muster is measured.
# Needs wrk and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
seconds=${2:-8}
[ -n "${BIN:-}" ] || { cargo build --release -q -p muster; BIN=./target/release/muster; }
wrkdir=crates/muster-bench/wrk
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$out"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# `measure <system> <round> <workload> <wrk args...>`: one wrk run, its figures appended to results.
measure() {
  local system=$1 round=$2 workload=$3
  shift 3
  wrk -t2 -c64 -d"${seconds}s" --latency "$@" > "$out/wrk.txt"
  python3 - "$out/wrk.txt" "$system" "$round" "$workload" >> "$out/results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(r"^\s+%s\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors:.*", text)
print(sys.argv[2], sys.argv[3], sys.argv[4], rate, ms("50%"), ms("99%"), bad.group(1) if bad else 0, sep="\t")
PY
}

run_muster() {
  local round=$1 port
  port=$(free_port)
  "$BIN" serve --listen "127.0.0.1:$port" --max-instances-per-service 1000000 >/dev/null 2>&1 &
  local pid=$!
  local base="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.05; done
  for i in $(seq 0 99); do
    curl -sf -X PUT "$base/v1/nodes/bench-$i" -H 'content-type: application/json' \
      -d "{\"address\":\"10.0.$((i / 250)).$((i % 250 + 1)):8080\",\"services\":[{\"name\":\"svc-$((i % 10))\",\"version\":\"1.$((i % 3)).0\"}],\"ttlMs\":3600000}" >/dev/null
  done
  measure muster "$round" resolve "$base/v1/services/svc-3/instances"
  measure muster "$round" resolve-seed "$base/resolve/svc-3"
  measure muster "$round" heartbeat -s "$wrkdir/heartbeat.lua" "$base"
  measure muster "$round" register -s "$wrkdir/register.lua" "$base"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_rnacos() {
  local round=$1 port grpc console data
  port=$(free_port); grpc=$(free_port); console=$(free_port)
  data="$out/rnacos-$round"
  mkdir -p "$data"
  (cd "$data" && RUST_LOG="${RNACOS_LOG:-warn}" RNACOS_HTTP_PORT=$port RNACOS_GRPC_PORT=$grpc \
    RNACOS_HTTP_CONSOLE_PORT=$console RNACOS_RAFT_NODE_ADDR="127.0.0.1:$grpc" RNACOS_DATA_DIR="$data/d" \
    RNACOS_CONFIG_DB_DIR="$data/d" RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND=3600 \
    RNACOS_NAMING_HEALTH_TIMEOUT_SECOND=3600 exec "$RNACOS" >"$data/log" 2>&1) &
  local pid=$!
  local base="http://127.0.0.1:$port"
  for _ in $(seq 200); do curl -sf "$base/nacos/v1/ns/instance/list?serviceName=svc-0" >/dev/null && break; sleep 0.05; done
  for i in $(seq 0 99); do
    curl -sf -X POST "$base/nacos/v1/ns/instance?serviceName=svc-$((i % 10))&ip=10.0.$((i / 250)).$((i % 250 + 1))&port=8080&ephemeral=true&metadata=%7B%22version%22%3A%221.$((i % 3)).0%22%7D" >/dev/null
  done
  measure r-nacos "$round" resolve "$base/nacos/v1/ns/instance/list?serviceName=svc-3"
  measure r-nacos "$round" heartbeat -s "$wrkdir/nacos-beat.lua" "$base"
  measure r-nacos "$round" register -s "$wrkdir/nacos-register.lua" "$base"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "# $(date -u +%F) · $(git rev-parse --short HEAD) · $(nproc) cores · wrk -t2 -c64 -d${seconds}s · $rounds rounds"
for round in $(seq "$rounds"); do
  if [ -n "${RNACOS:-}" ] && [ $((round % 2)) -eq 0 ]; then run_rnacos "$round"; fi
  run_muster "$round"
  if [ -n "${RNACOS:-}" ] && [ $((round % 2)) -eq 1 ]; then run_rnacos "$round"; fi
  echo "round $round done" >&2
done

python3 - "$out/results" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
data = {}
for system, rnd, workload, rate, p50, p99, bad in rows:
    data[(system, workload, int(rnd))] = (float(rate), float(p50), float(p99), int(bad))
rounds = sorted({int(r[1]) for r in rows})
peer = {"resolve": "resolve", "resolve-seed": "resolve", "heartbeat": "heartbeat", "register": "register"}
print("| workload | round | Muster req/s (p99 ms) | r-nacos req/s (p99 ms) | ratio | p99 no worse |")
print("|---|---|---|---|---|---|")
for workload in ["resolve", "resolve-seed", "heartbeat", "register"]:
    ratios = []
    for r in rounds:
        m = data.get(("muster", workload, r))
        n = data.get(("r-nacos", peer[workload], r))
        if m is None:
            continue
        bad = f" ({m[3]} non-2xx)" if m[3] else ""
        if n is None:
            print(f"| {workload} | {r} | {m[0]:,.0f} ({m[2]:.2f}){bad} | — | — | — |")
            continue
        ratio = m[0] / n[0]
        ratios.append(ratio)
        nbad = f" ({n[3]} non-2xx)" if n[3] else ""
        print(f"| {workload} | {r} | {m[0]:,.0f} ({m[2]:.2f}){bad} | {n[0]:,.0f} ({n[2]:.2f}){nbad} | {ratio:.2f} | {'yes' if m[2] <= n[2] else 'no'} |")
    if ratios:
        print(f"| {workload} | median | | | **{statistics.median(ratios):.2f}** | |")
seed = [data[("muster", "resolve-seed", r)][0] / data[("muster", "resolve", r)][0] for r in rounds if ("muster", "resolve", r) in data]
if seed:
    print(f"\nseed-003 resolve / v1 resolve, median over rounds: {statistics.median(seed):.2f}")
PY
