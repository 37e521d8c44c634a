#!/usr/bin/env bash
# Muster's DNS interface and NSD (a reference authoritative server) side by side, serving the same
# records: three instances of users@1.2.0 (A, and SRV with the nodes' A records as additional).
# dnsperf, 20 clients, alternated rounds; prints queries/s, average latency and the ratio.
# Usage: crates/muster-bench/dns-compare.sh [rounds] [seconds]   (needs nsd and dnsperf: apt-get
# install nsd dnsperf; BIN=path uses that muster binary instead of building one)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
seconds=${2:-10}
[ -n "${BIN:-}" ] || { cargo build --release -q -p muster; BIN=./target/release/muster; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

http=$(free_port); mdns=$(free_port); ndns=$(free_port)
"$BIN" serve --listen "127.0.0.1:$http" --dns "127.0.0.1:$mdns" >/dev/null 2>&1 &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/health" >/dev/null && break; sleep 0.05; done
for i in 1 2 3; do
  curl -sf -X PUT "http://127.0.0.1:$http/v1/nodes/users-$i" -H 'content-type: application/json' \
    -d "{\"address\":\"10.0.0.$i:8080\",\"services\":[{\"name\":\"users\",\"version\":\"1.2.0\"}],\"ttlMs\":3600000}" >/dev/null
done

cat > "$tmp/muster.zone" <<ZONE
\$ORIGIN muster.
\$TTL 5
@ IN SOA ns.muster. hostmaster.muster. 1 3600 600 86400 5
@ IN NS ns.muster.
ns IN A 127.0.0.1
users.service IN A 10.0.0.1
users.service IN A 10.0.0.2
users.service IN A 10.0.0.3
_users._tcp.service IN SRV 1 1 8080 users-1.node.muster.
_users._tcp.service IN SRV 1 1 8080 users-2.node.muster.
_users._tcp.service IN SRV 1 1 8080 users-3.node.muster.
users-1.node IN A 10.0.0.1
users-2.node IN A 10.0.0.2
users-3.node IN A 10.0.0.3
ZONE
cat > "$tmp/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$ndns
  server-count: 1
  zonesdir: "$tmp"
  database: ""
  zonelistfile: "$tmp/zone.list"
  pidfile: "$tmp/nsd.pid"
  xfrdfile: "$tmp/xfrd.state"
  username: ""
  logfile: "$tmp/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: muster.
  zonefile: muster.zone
CONF
nsd -d -c "$tmp/nsd.conf" &
sleep 1
printf 'users.service.muster. A\n' > "$tmp/a.txt"
printf '_users._tcp.service.muster. SRV\n' > "$tmp/srv.txt"
for port in $mdns $ndns; do dig +short -p "$port" @127.0.0.1 users.service.muster. A | sort | tr '\n' ' '; echo "(port $port)"; done

perf() { # <port> <file>: "qps latency-ms"
  dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$seconds" -c 20 -T 2 -q 200 2>/dev/null |
    awk '/Queries per second/ {q=$4} /Average Latency/ {l=$4*1000} END {printf "%.0f %.2f", q, l}'
}
echo "# $(date -u +%F) · $(git rev-parse --short HEAD) · dnsperf -c 20 -T 2 -q 200 -l $seconds · $rounds rounds"
echo "| query | round | Muster q/s (avg ms) | NSD 4.6 q/s (avg ms) | ratio |"
echo "|---|---|---|---|---|"
for kind in a srv; do
  for round in $(seq "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then m=$(perf "$mdns" "$tmp/$kind.txt"); n=$(perf "$ndns" "$tmp/$kind.txt")
    else n=$(perf "$ndns" "$tmp/$kind.txt"); m=$(perf "$mdns" "$tmp/$kind.txt"); fi
    set -- $m $n
    echo "| ${kind^^} | $round | $1 ($2) | $3 ($4) | $(python3 -c "print(f'{$1/$3:.2f}')") |"
  done
done
