#!/usr/bin/env bash
# Cluster benchmark: the same load on herald standalone and on the one-machine
# cluster (deploy/local: 2 comets, 2 logics, 2 jobs over gRPC, etcd, Redis and each
# queue engine), measured in one run so the numbers compare as ratios.
#
#   scripts/bench-cluster.sh                      # standalone, redis, nats, kafka
#   scripts/bench-cluster.sh standalone kafka     # only these
#   N=5000 ROOM_RATE=20 scripts/bench-cluster.sh  # bigger room
#
# Load, per target: N clients per comet (WebSocket on the first, TCP on the second;
# standalone holds both groups on its one comet) in one room, then
#   room: ROOM_COUNT room pushes at ROOM_RATE/s, half through each logic;
#   keys: KEY_COUNT key pushes at KEY_RATE/s cycling over every client.
# Pushes go over 8 keep-alive connections per push process (each push waits for
# the queue's acknowledgement). Reported: pushes accepted and the push rate
# achieved, deliveries counted by the clients GRACE (5) seconds after the last
# push (at least once, so a redelivery can count twice), latency from the push
# request to the delivery.
# Writes bench-results/cluster.md (OUT to change the directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-2000}
ROOM_RATE=${ROOM_RATE:-20}
ROOM_COUNT=${ROOM_COUNT:-200}
KEY_RATE=${KEY_RATE:-2000}
KEY_COUNT=${KEY_COUNT:-20000}
GRACE=${GRACE:-5}
OUT=${OUT:-bench-results}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(standalone redis nats kafka)

cargo build --release -p herald
bin="$PWD/target/release/herald"
export CLUSTER_BIN="$bin"
export CLUSTER_DIR="${CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-bench-cluster}"
# The ports below are the cluster's defaults.
unset CLUSTER_BASE_PORT
work=$(mktemp -d)
mkdir -p "$OUT"
cluster=deploy/local/cluster.sh
standalone_pid=""

cleanup() {
  [ -z "$standalone_pid" ] || kill "$standalone_pid" 2>/dev/null || true
  "$cluster" clean >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Last "received" and latency figures a clients process printed.
received() { grep -o 'received [0-9]*' "$1" | tail -n 1 | awk '{print $2}'; }
latency() { grep -o 'p50 [0-9.]* ms p99 [0-9.]* ms' "$1" | tail -n 1 | awk '{print $2 " / " $5}'; }
accepted() { grep -o '^[0-9]* pushes accepted, [0-9]* failed' | awk '{s+=$1; f+=$4} END {print s+0 " (" f+0 " failed)"}'; }
# Pushes per second the two push processes achieved together.
push_rate() { grep -o '([0-9.]*/s)' | tr -d '(/s)' | awk '{s+=$1} END {printf "%.0f/s", s}'; }

# wait_connected OUT PID: until the clients process printed that all are connected.
wait_connected() {
  local i
  for i in $(seq 1 600); do
    grep -q ' in [0-9.]*s' "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { cat "$1" >&2; echo "clients exited" >&2; return 1; }
    sleep 0.1
  done
  echo "clients did not connect in 60 s" >&2
  return 1
}

wait_port() {
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# phase NAME TARGET: holds the clients, runs the pushes, records one table row.
# The clients run until the pushes are done and GRACE seconds more, then are
# signalled and print their final counts.
phase() {
  local name="$1" target="$2" ws_addr tcp_addr http1 http2 kind rate count
  if [ "$target" = standalone ]; then
    ws_addr=127.0.0.1:3102; tcp_addr=127.0.0.1:3101; http1=127.0.0.1:3111; http2=127.0.0.1:3111
  else
    ws_addr=127.0.0.1:3102; tcp_addr=127.0.0.1:3201; http1=127.0.0.1:3111; http2=127.0.0.1:3211
  fi
  if [ "$name" = room ]; then kind=room; rate=$ROOM_RATE; count=$ROOM_COUNT
  else kind=keys; rate=$KEY_RATE; count=$KEY_COUNT; fi
  "$bin" bench clients --target herald-ws --addr "$ws_addr" -n "$N" --first-mid 1 \
    --room bench://1 >"$work/a.out" 2>&1 &
  local a=$!
  "$bin" bench clients --target herald-tcp --addr "$tcp_addr" -n "$N" --first-mid $((N + 1)) \
    --room bench://1 >"$work/b.out" 2>&1 &
  local b=$!
  wait_connected "$work/a.out" "$a"
  wait_connected "$work/b.out" "$b"
  sleep 2
  "$bin" bench push --http "$http1" --kind "$kind" --room bench://1 --mids "1,$((2 * N))" \
    --rate $((rate / 2)) --count $((count / 2)) >"$work/p1.out" 2>&1 &
  local p1=$!
  "$bin" bench push --http "$http2" --kind "$kind" --room bench://1 --mids "1,$((2 * N))" \
    --rate $((rate / 2)) --count $((count / 2)) >"$work/p2.out" 2>&1 &
  local p2=$!
  wait "$p1" "$p2" || true
  sleep "$GRACE"
  kill -TERM "$a" "$b" 2>/dev/null || true
  wait "$a" "$b" || true
  local want
  if [ "$kind" = room ]; then want=$((count * 2 * N)); else want=$count; fi
  local got=$(( $(received "$work/a.out") + $(received "$work/b.out") ))
  printf '| %s | %s | %s/s × %s | %s | %s | %s of %s | %s | %s |\n' "$target" "$kind" "$rate" "$count" \
    "$(cat "$work/p1.out" "$work/p2.out" | accepted)" "$(cat "$work/p1.out" "$work/p2.out" | push_rate)" \
    "$got" "$want" "$(latency "$work/a.out")" "$(latency "$work/b.out")" >>"$work/rows.md"
  tail -n 1 "$work/rows.md"
}

for t in "${targets[@]}"; do
  echo "== $t"
  case "$t" in
    standalone)
      "$bin" standalone >"$work/standalone.log" 2>&1 &
      standalone_pid=$!
      wait_port 3111
      ;;
    redis | nats | kafka) "$cluster" up "$t" ;;
    *) echo "unknown target $t (standalone, redis, nats, kafka)" >&2; exit 2 ;;
  esac
  phase room "$t"
  phase keys "$t"
  if [ "$t" = standalone ]; then
    kill "$standalone_pid"; wait "$standalone_pid" 2>/dev/null || true; standalone_pid=""
  else
    "$cluster" clean >/dev/null
  fi
done

{
  echo "# Cluster benchmark"
  echo
  echo "$(date -u +%Y-%m-%d) on $(nproc) cores; N=$N clients per comet (WebSocket on comet 1, TCP on comet 2;"
  echo "standalone: both groups on its one comet); command: \`scripts/bench-cluster.sh ${targets[*]}\`."
  echo
  echo "| Target | Push | Offered | Accepted | Achieved | Deliveries | Latency p50 / p99, ms (WS clients) | Latency p50 / p99, ms (TCP clients) |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$work/rows.md"
} >"$OUT/cluster.md"
echo
cat "$OUT/cluster.md"
