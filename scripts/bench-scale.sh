#!/usr/bin/env bash
# 100,000 concurrent connections on one machine: a one-machine cluster
# (deploy/local/cluster.sh with COMETS comets, each under the open-file limit; 2
# logics, 2 jobs, etcd, Redis and the queue engine) and `herald bench scale`,
# whose clients are spread over the comets, over worker processes (each under the
# open-file limit too) and over loopback source addresses. Measured:
#   - memory: the comets' RSS and the kernel's (slab, TCP buffers) per connection;
#   - heartbeats: the comets' CPU over HEARTBEAT_WINDOW seconds with every client
#     sending one every HEARTBEAT seconds (goim's JavaScript client: 30);
#   - a room push to all N (ROOM_PUSHES of them, one at a time), push/all without
#     a speed (ALL_PUSHES) and with SPEED: time from the request to each client's
#     receipt (p50, p99, p99.9, the last client), CPU, and nothing lost;
#   - a projection to 1,000,000 connections from the per-connection costs.
#
#   scripts/bench-scale.sh                 # 100,000 connections, 6 comets, NATS
#   N=20000 COMETS=2 scripts/bench-scale.sh
#
# Writes $OUT/scale.md and scale.json (OUT defaults to bench-results). The cluster
# runs on CLUSTER_BASE_PORT (default 5100: beside a standalone herald on the
# default ports) with its state in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-100000}
COMETS=${COMETS:-6}
QUEUE=${QUEUE:-nats}
HEARTBEAT=${HEARTBEAT:-30}
HEARTBEAT_WINDOW=${HEARTBEAT_WINDOW:-60}
ROOM_PUSHES=${ROOM_PUSHES:-5}
ALL_PUSHES=${ALL_PUSHES:-3}
SPEED=${SPEED:-50000}
OUT=${OUT:-bench-results}
base=${CLUSTER_BASE_PORT:-5100}

die() { echo "bench-scale.sh: $*" >&2; exit 1; }

# Every process may hold as many files as the machine allows; each comet holds
# N / COMETS clients and needs room for its own files and connections too.
ulimit -n "$(ulimit -Hn)"
files=$(ulimit -n)
per_comet=$(( (N + COMETS - 1) / COMETS ))
if (( per_comet + 1000 > files )); then
  die "$per_comet clients per comet do not fit in $files open files: raise COMETS (at least $(( (N + files - 1001) / (files - 1000) )))"
fi

# The cluster listens on fixed ports (base+1 to base+25992). Keep the kernel's
# ephemeral ports above them, so that no outgoing connection (a client, a gRPC or
# engine connection) holds one of them when its process starts. (scripts/bench.sh
# widens the range down to 1024.)
read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
top=$((base + 25992))
if (( lo <= top )); then
  if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
    echo "$((top + 1)) $(( hi > top + 1000 ? hi : 65000 ))" > /proc/sys/net/ipv4/ip_local_port_range
    echo "ephemeral ports now $(cat /proc/sys/net/ipv4/ip_local_port_range) (above the cluster's)"
  else
    die "the ephemeral port range ($lo-$hi) overlaps the cluster's ports ($((base + 1))-$top): set net.ipv4.ip_local_port_range to start above $top, or CLUSTER_BASE_PORT lower"
  fi
fi

cargo build --release -p herald
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/herald"
export CLUSTER_BIN="$bin" CLUSTER_COMETS="$COMETS" CLUSTER_BASE_PORT="$base"
CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/herald-scale.XXXXXX")
export CLUSTER_DIR
cluster=deploy/local/cluster.sh
trap '"$cluster" clean >/dev/null 2>&1 || true' EXIT

"$cluster" up "$QUEUE"
shift_by=$((base - 3100))
addrs=() comet_pids=() other_pids=()
for ((k = 1; k <= COMETS; k++)); do
  addrs+=("127.0.0.1:$((3002 + k * 100 + shift_by))")
  comet_pids+=("$(cat "$CLUSTER_DIR/comet$k.pid")")
done
for p in logic1 logic2 job1 job2 etcd redis nats kafka; do
  [ -f "$CLUSTER_DIR/$p.pid" ] && other_pids+=("$(cat "$CLUSTER_DIR/$p.pid")")
done
join() { local IFS=,; echo "$*"; }

"$bin" bench scale -n "$N" \
  --addr "$(join "${addrs[@]}")" \
  --http "127.0.0.1:$((3111 + shift_by))" \
  --comet-pid "$(join "${comet_pids[@]}")" \
  --other-pid "$(join "${other_pids[@]}")" \
  --heartbeat-secs "$HEARTBEAT" --heartbeat-window "$HEARTBEAT_WINDOW" \
  --room-pushes "$ROOM_PUSHES" --all-pushes "$ALL_PUSHES" --speed "$SPEED" \
  --out "$OUT"
echo
cat "$OUT/scale.md"
