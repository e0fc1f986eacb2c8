#!/usr/bin/env bash
# A whole herald cluster on one machine, on loopback: etcd, Redis, the queue engine
# and 2 comets, 2 logics, 2 jobs as separate processes, from the configurations
# next to this script.
#
#   deploy/local/cluster.sh up [redis|nats|kafka]   start everything (queue: redis)
#   deploy/local/cluster.sh status                  what runs, and where
#   deploy/local/cluster.sh kill NAME               SIGKILL one process (a crash)
#   deploy/local/cluster.sh start NAME              start it again
#   deploy/local/cluster.sh pause NAME              SIGSTOP (hung: connections stay open)
#   deploy/local/cluster.sh resume NAME             SIGCONT
#   deploy/local/cluster.sh logs NAME               follow its log
#   deploy/local/cluster.sh down                    stop everything, keep the data
#   deploy/local/cluster.sh clean                   stop everything, delete the data
#   deploy/local/cluster.sh --help                  this text, with the ports in use
#
# (Variables named HERALD_* are herald configuration overrides, hence the
# CLUSTER_* names of this script's own settings.)
#
# NAME is an engine (etcd, redis, nats, kafka) or a process (comet1, comet2,
# logic1, logic2, job1, job2; with CLUSTER_COMETS=N, N comets: comet1 to cometN,
# N up to 9, the third and later configured as comet1 or comet2 with their own
# ports and zone). Engines are installed when missing (Debian packages;
# tansu, the Kafka-compatible broker, from crates.io). The herald binary is
# $CLUSTER_BIN, or target/release/herald (built when missing). State, logs and
# engine data live in $CLUSTER_DIR (default: ${TMPDIR:-/tmp}/herald-local, or
# herald-local-<base> with another CLUSTER_BASE_PORT).
#
# Ports, with the default CLUSTER_BASE_PORT=3100: comets TCP 3101/3201, WebSocket
# 3102/3202 (path /sub), gRPC 3109/3209, metrics 3129/3229 (comet K: 3K01, 3K02,
# 3K09, 3K29); logics HTTP 3111/3211,
# gRPC 3119/3219; jobs metrics 3139/3239; etcd 23790 (peers 23800), Redis 26379
# (store db 0, queue db 1), NATS 24222, Kafka 29092. These are standalone's ports
# too (TCP 3101, WebSocket 3102, HTTP 3111): CLUSTER_BASE_PORT=4100 moves every
# port, the engines' included, up by 1000 (comets 4101/4201, logics 4111/4211, etcd
# 24790, ...), so the cluster runs beside a standalone herald or another cluster
# (bases a multiple of 1000 apart never share a port). Give every command of one
# cluster the same base.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/engines.sh
. "$root/scripts/engines.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# Every port is its default (base 3100) shifted by base - 3100.
base="${CLUSTER_BASE_PORT:-3100}"
[[ "$base" =~ ^[0-9]{1,5}$ ]] || die "CLUSTER_BASE_PORT must be a number, not '$base'"
base=$((10#$base))
shift_by=$((base - 3100))
# The lowest port is comet1's TCP (3101), the highest Kafka's (29092).
if ((3101 + shift_by < 1024 || 29092 + shift_by > 65535)); then
  die "CLUSTER_BASE_PORT must be between 1023 and 39543 (the cluster's ports span base+1 to base+25992), not $base"
fi
# port DEFAULT: the port that has DEFAULT at base 3100.
port() { echo $(($1 + shift_by)); }

if [ "$base" = 3100 ]; then
  state="${CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-local}"
else
  state="${CLUSTER_DIR:-${TMPDIR:-/tmp}/herald-local-$base}"
fi
# The number of comets: CLUSTER_COMETS, else what the running cluster was
# started with, else 2.
comets="${CLUSTER_COMETS:-$(cat "$state/comets" 2>/dev/null || echo 2)}"
[[ "$comets" =~ ^[1-9]$ ]] || die "CLUSTER_COMETS must be 1 to 9, not '$comets'"
processes=()
for ((k = 1; k <= comets; k++)); do processes+=("comet$k"); done
processes+=(logic1 logic2 job1 job2)

pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }

running() {
  local pid
  pid="$(pid_of "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# port_open PORT: whether something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The port that tells NAME is up.
port_of() {
  case "$1" in
    etcd) port 23790 ;; redis) port 26379 ;; nats) port 24222 ;; kafka) port 29092 ;;
    comet[1-9]) port $((3009 + ${1#comet} * 100)) ;; logic1) port 3111 ;; logic2) port 3211 ;;
    job1) port 3139 ;; job2) port 3239 ;;
    *) die "unknown name: $1 (engines: etcd redis nats kafka; processes: ${processes[*]})" ;;
  esac
}

# The base the processes in $state were started with (3100 before any was).
running_base() { cat "$state/base_port" 2>/dev/null || echo 3100; }

# Refuses to mix bases: a process started with another base is on other ports.
same_base() {
  local n
  [ "$(running_base)" = "$base" ] && return 0
  for n in etcd redis nats kafka "${processes[@]}"; do
    if running "$n"; then
      die "the cluster in $state runs with CLUSTER_BASE_PORT=$(running_base); use that base, or run down first"
    fi
  done
}

# HERALD_* overrides that put process NAME on the cluster's ports (its file has
# the base-3100 ones): its listeners and the engines it reaches; and the queue
# backend chosen at `up`.
role_env() {
  local name="$1" d
  d=$(( ${name: -1} * 100 - 100 )) # the second of each role is 100 ports up
  echo "HERALD_DISCOVERY__ENDPOINTS=[\"http://127.0.0.1:$(port 23790)\"]"
  case "$name" in
    comet*)
      echo "HERALD_COMET__TCP_BIND=[\"127.0.0.1:$(port $((3101 + d)))\"]"
      echo "HERALD_COMET__WS_BIND=[\"127.0.0.1:$(port $((3102 + d)))\"]"
      echo "HERALD_RPC__COMET_BIND=127.0.0.1:$(port $((3109 + d)))"
      echo "HERALD_METRICS__BIND=127.0.0.1:$(port $((3129 + d)))"
      echo "HERALD_QUEUE__BACKEND=$(queue)"
      # Comets after the second take comet1's or comet2's file and zone.
      echo "HERALD_SERVER__ZONE=z$(( (${name: -1} - 1) % 2 + 1 ))"
      return
      ;;
    logic*)
      echo "HERALD_LOGIC__HTTP_BIND=127.0.0.1:$(port $((3111 + d)))"
      echo "HERALD_RPC__LOGIC_BIND=127.0.0.1:$(port $((3119 + d)))"
      # What /goim/nodes/weighted and the demo page tell clients (comet1's ports).
      echo "HERALD_LOGIC__NODE__TCP_PORT=$(port 3101)"
      echo "HERALD_LOGIC__NODE__WS_PORT=$(port 3102)"
      echo "HERALD_LOGIC__NODE__WSS_PORT=$(port 3103)"
      echo "HERALD_STORE__REDIS_URL=redis://127.0.0.1:$(port 26379)/0"
      ;;
    job*) echo "HERALD_METRICS__BIND=127.0.0.1:$(port $((3139 + d)))" ;;
  esac
  echo "HERALD_QUEUE__BACKEND=$(queue)"
  echo "HERALD_QUEUE__REDIS__URL=redis://127.0.0.1:$(port 26379)/1"
  echo "HERALD_QUEUE__NATS__URL=nats://127.0.0.1:$(port 24222)"
  echo "HERALD_QUEUE__KAFKA__BROKERS=[\"127.0.0.1:$(port 29092)\"]"
}

queue() { cat "$state/queue" 2>/dev/null || echo redis; }

herald_bin() {
  if [ -n "${CLUSTER_BIN:-}" ]; then echo "$CLUSTER_BIN"; return; fi
  if [ ! -x "$root/target/release/herald" ]; then
    # librdkafka's build needs a C compiler, make, pkg-config and OpenSSL headers.
    ensure_engines build >&2
    echo "building herald (cargo build --release)" >&2
    (cd "$root" && cargo build --release -p herald >&2)
  fi
  echo "$root/target/release/herald"
}

# launch NAME CMD...: runs CMD in the background, detached, logging to NAME.log.
launch() {
  local name="$1"
  shift
  running "$name" && { echo "$name already runs (pid $(pid_of "$name"))"; return; }
  setsid nohup "$@" >>"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
}

wait_up() {
  local name="$1" port i
  port="$(port_of "$name")"
  for i in $(seq 1 150); do
    if port_open "$port"; then return 0; fi
    running "$name" || die "$name exited; see $state/$name.log"
    sleep 0.2
  done
  die "$name did not listen on 127.0.0.1:$port within 30 s; see $state/$name.log"
}

start_one() {
  local name="$1" bin role file overrides
  same_base
  mkdir -p "$state"
  if ! running "$name" && port_open "$(port_of "$name")"; then
    die "cannot start $name: 127.0.0.1:$(port_of "$name") is taken by another process"
  fi
  case "$name" in
    etcd)
      bin="$(engine_bin etcd)"
      launch etcd "$bin" --name herald-local --data-dir "$state/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$(port 23790)" \
        --advertise-client-urls "http://127.0.0.1:$(port 23790)" \
        --listen-peer-urls "http://127.0.0.1:$(port 23800)" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(port 23800)" \
        --initial-cluster "herald-local=http://127.0.0.1:$(port 23800)"
      ;;
    redis)
      # Append-only file: a restarted Redis keeps routes and queued pushes.
      mkdir -p "$state/redis-data"
      bin="$(engine_bin redis-server)"
      launch redis "$bin" --bind 127.0.0.1 --port "$(port 26379)" --dir "$state/redis-data" \
        --appendonly yes --save ""
      ;;
    nats)
      bin="$(engine_bin nats-server)"
      launch nats "$bin" -a 127.0.0.1 -p "$(port 24222)" -js -sd "$state/nats-data"
      ;;
    kafka)
      # In-memory storage: a killed and restarted broker starts empty (topics
      # and committed offsets are gone); use pause/resume for an outage that
      # keeps them.
      bin="$(engine_bin tansu)"
      launch kafka "$bin" broker --listener-url "tcp://127.0.0.1:$(port 29092)" \
        --advertised-listener-url "tcp://127.0.0.1:$(port 29092)" --storage-engine memory://tansu/
      ;;
    comet[1-9] | logic1 | logic2 | job1 | job2)
      role="${name%[1-9]}"
      file="$name"
      [ "$role" != comet ] || file="comet$(( (${name: -1} - 1) % 2 + 1 ))"
      mapfile -t overrides < <(role_env "$name")
      launch "$name" env "${overrides[@]}" "$(herald_bin)" "$role" --config "$here/$file.toml"
      ;;
    *) port_of "$name" >/dev/null ;;
  esac
  wait_up "$name"
  echo "$name up (pid $(pid_of "$name"), 127.0.0.1:$(port_of "$name"))"
}

stop_one() {
  local name="$1" pid i
  pid="$(pid_of "$name")"
  if running "$name"; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    echo "$name stopped"
  fi
  rm -f "$state/$name.pid"
}

engines() { echo etcd redis; [ "$(queue)" = redis ] || queue; }

cmd="${1:-}"
case "$cmd" in
  up)
    q="${2:-redis}"
    case "$q" in redis | nats | kafka) ;; *) die "queue must be redis, nats or kafka" ;; esac
    if [ -f "$state/queue" ] && [ "$(queue)" != "$q" ] && running logic1; then
      die "the cluster runs on $(queue); run down first"
    fi
    same_base
    mkdir -p "$state"
    echo "$q" >"$state/queue"
    echo "$base" >"$state/base_port"
    echo "$comets" >"$state/comets"
    ensure_engines etcd redis "$q"
    herald_bin >/dev/null
    for e in $(engines); do start_one "$e"; done
    for p in "${processes[@]}"; do start_one "$p"; done
    echo
    echo "herald cluster up on $q. Push API: http://127.0.0.1:$(port 3111) and :$(port 3211);"
    echo "clients: TCP 127.0.0.1:$(port 3101) / :$(port 3201), WebSocket ws://127.0.0.1:$(port 3102)/sub / :$(port 3202)/sub."
    echo "Logs and data: $state"
    ;;
  down | clean)
    # Every comet that may run, whatever CLUSTER_COMETS says now.
    for p in comet{1..9} logic1 logic2 job1 job2; do stop_one "$p"; done
    rm -f "$state/comets"
    for e in kafka nats redis etcd; do stop_one "$e"; done
    rm -f "$state/base_port"
    if [ "$cmd" = clean ]; then rm -rf "$state"; echo "removed $state"; fi
    ;;
  status)
    same_base
    echo "queue: $(queue); base port: $base; state: $state"
    for n in etcd redis nats kafka "${processes[@]}"; do
      if running "$n"; then
        printf '%-7s pid %-7s 127.0.0.1:%s\n' "$n" "$(pid_of "$n")" "$(port_of "$n")"
      elif [ -f "$state/$n.pid" ]; then
        printf '%-7s down\n' "$n"
      fi
    done
    ;;
  kill)
    [ -n "${2:-}" ] || die "kill NAME"
    port_of "$2" >/dev/null
    running "$2" || die "$2 is not running"
    kill -KILL "$(pid_of "$2")"
    rm -f "$state/$2.pid"
    echo "$2 killed"
    ;;
  start)
    [ -n "${2:-}" ] || die "start NAME"
    start_one "$2"
    ;;
  pause | resume)
    [ -n "${2:-}" ] || die "$cmd NAME"
    port_of "$2" >/dev/null
    running "$2" || die "$2 is not running"
    if [ "$cmd" = pause ]; then kill -STOP "$(pid_of "$2")"; else kill -CONT "$(pid_of "$2")"; fi
    echo "$2 ${cmd}d"
    ;;
  logs)
    [ -n "${2:-}" ] || die "logs NAME"
    port_of "$2" >/dev/null
    exec tail -n 50 -F "$state/$2.log"
    ;;
  -h | --help | help | "")
    # The comment at the top of this file, then the ports this base gives.
    sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    echo
    echo "Now (CLUSTER_BASE_PORT=$base; state: $state):"
    echo "  comet1 TCP $(port 3101), WebSocket $(port 3102), gRPC $(port 3109), metrics $(port 3129)"
    echo "  comet2 TCP $(port 3201), WebSocket $(port 3202), gRPC $(port 3209), metrics $(port 3229)"
    for ((k = 3; k <= comets; k++)); do
      echo "  comet$k TCP $(port $((3001 + k * 100))), WebSocket $(port $((3002 + k * 100))), gRPC $(port $((3009 + k * 100))), metrics $(port $((3029 + k * 100)))"
    done
    echo "  logic1 HTTP $(port 3111), gRPC $(port 3119); logic2 HTTP $(port 3211), gRPC $(port 3219)"
    echo "  job1 metrics $(port 3139); job2 metrics $(port 3239)"
    echo "  etcd $(port 23790) (peers $(port 23800)), Redis $(port 26379), NATS $(port 24222), Kafka $(port 29092)"
    ;;
  *)
    echo "cluster.sh: unknown command '$cmd'; see deploy/local/cluster.sh --help" >&2
    exit 2
    ;;
esac
