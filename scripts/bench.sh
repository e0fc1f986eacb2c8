#!/usr/bin/env bash
# Runs the benchmark scenarios side by side with nats-server, mosquitto and the
# floor and
# writes JSON reports, Markdown summaries and SVG charts to bench-results/.
#
#   scripts/bench.sh                 # every plain scenario at 15,000 connections
#   scripts/bench.sh fanout latency  # only these scenarios
#   N=5000 scripts/bench.sh idle     # fewer connections
#   scripts/bench.sh secure          # secure (wss + jwt) against plain: idle, fanout, storm
#   scripts/bench.sh alloc           # glibc malloc (trimmed, the default; and untrimmed),
#                                    # mimalloc, jemalloc: idle, fanout, slow (same binary;
#                                    # the other two preloaded from Debian's libmimalloc2.0
#                                    # and libjemalloc2, installed if missing)
#   scripts/bench.sh history         # history on against off in fan-out (goim clients,
#                                    # then clients asking for recovery), and a
#                                    # reconnect storm of recovering clients
#   scripts/bench.sh loaded          # latency under load: lone key and room pushes to
#                                    # probe clients, idle then during room pushes to N
#                                    # clients (5/s, then goim's shape: 40/s, 500 ms window)
#   VARIANT=before=PATH scripts/bench.sh loaded   # and another herald build, same run
#
# Scenarios: idle fanout fanout-goim latency storm slow loaded
#            secure-idle secure-fanout secure-storm   (group: secure)
#            alloc-idle alloc-fanout alloc-slow       (group: alloc)
#            history-fanout history-fanout-recover recover-storm   (group: history)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-15000}
SLOW_N=${SLOW_N:-2000}
OUT=${OUT:-bench-results}
TARGET=${CARGO_TARGET_DIR:-target}
scenarios=()
for s in "$@"; do
  case "$s" in
    secure) scenarios+=(secure-idle secure-fanout secure-storm) ;;
    alloc)  scenarios+=(alloc-idle alloc-fanout alloc-slow) ;;
    history) scenarios+=(history-fanout history-fanout-recover recover-storm) ;;
    *)      scenarios+=("$s") ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle fanout fanout-goim latency storm)

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null
  fi
}
for peer in nats-server mosquitto; do
  if ! command -v "$peer" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$peer" ]; then
    echo "installing $peer (Debian package) for the side-by-side runs"
    apt_install "$peer"
  fi
done

# Loopback clients need many ephemeral ports; widen the range when allowed.
if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
  echo "1024 65000" > /proc/sys/net/ipv4/ip_local_port_range || true
fi

mkdir -p "$OUT"

# loaded: another herald build measured in the same run (VARIANT=NAME=PATH).
variant_args=()
[ -z "${VARIANT:-}" ] || variant_args=(--variant "$VARIANT")

# The allocator variants are the same binary with another malloc preloaded: a
# wrapper that execs herald (same process, so its memory is what gets measured).
LIBDIR=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
alloc_built=
alloc_bins() {
  [ -n "$alloc_built" ] && return
  [ -e "$LIBDIR/libjemalloc.so.2" ] && [ -e "$LIBDIR/libmimalloc.so.2" ] || {
    echo "installing libjemalloc2 and libmimalloc2.0 (Debian packages) for the allocator runs"
    apt_install libjemalloc2 libmimalloc2.0
  }
  cp "$OUT/bin/herald" "$OUT/bin/herald-glibc"
  # jemalloc with background threads, so freed pages go back over its decay time.
  printf '#!/bin/sh\nMALLOC_CONF=background_thread:true LD_PRELOAD=%s exec %s "$@"\n' \
    "$LIBDIR/libjemalloc.so.2" "$(cd "$OUT/bin" && pwd)/herald" > "$OUT/bin/herald-jemalloc"
  printf '#!/bin/sh\nLD_PRELOAD=%s exec %s "$@"\n' \
    "$LIBDIR/libmimalloc.so.2" "$(cd "$OUT/bin" && pwd)/herald" > "$OUT/bin/herald-mimalloc"
  # glibc without the periodic trim (memory.trim_interval = 0s).
  printf '#!/bin/sh\nHERALD_MEMORY__TRIM_INTERVAL=0s exec %s "$@"\n' \
    "$(cd "$OUT/bin" && pwd)/herald" > "$OUT/bin/herald-untrimmed"
  chmod +x "$OUT/bin/herald-jemalloc" "$OUT/bin/herald-mimalloc" "$OUT/bin/herald-untrimmed"
  alloc_built=1
}

cargo build --release -p herald
# A copy, so a rebuild during a run cannot swap the binary under a scenario.
mkdir -p "$OUT/bin"
cp "$TARGET/release/herald" "$OUT/bin/herald"
bench="$OUT/bin/herald bench"
alloc_args() {
  echo --peers none --herald "$OUT/bin/herald-glibc" --label glibc \
    --variant "untrimmed=$OUT/bin/herald-untrimmed" \
    --variant "mimalloc=$OUT/bin/herald-mimalloc" --variant "jemalloc=$OUT/bin/herald-jemalloc"
}
for s in "${scenarios[@]}"; do
  case "$s" in
    idle)        $bench run idle -n "$N" --json "$OUT/idle.json" ;;
    fanout)      $bench run fanout -n "$N" --rate 5 --duration 10 --json "$OUT/fanout.json" ;;
    fanout-goim) $bench run fanout -n "$N" --rate 40 --duration 10 --window-ms 500 --json "$OUT/fanout-goim.json" ;;
    latency)     $bench run latency -n 100 --rate 20 --duration 5 --peers none --json "$OUT/latency.json" ;;
    storm)       $bench run storm -n "$N" --peers none --json "$OUT/storm.json" ;;
    # Latency under load: one push at a time, then goim's batched shape.
    loaded)
      $bench run loaded -n "$N" --rate 5 --duration 20 --peers none ${variant_args[@]+"${variant_args[@]}"} --json "$OUT/loaded.json"
      $bench run loaded -n "$N" --rate 40 --window-ms 500 --duration 20 --peers none ${variant_args[@]+"${variant_args[@]}"} --json "$OUT/loaded-goim.json" ;;
    slow)        $bench run slow -n "$SLOW_N" --rate 20 --duration 30 --payload-bytes 1024 --after 30 --peers none --json "$OUT/slow.json" ;;
    secure-idle)   $bench run idle -n "$N" --secure --peers floor --json "$OUT/secure-idle.json" ;;
    secure-fanout) $bench run fanout -n "$N" --rate 5 --duration 10 --secure --peers none --json "$OUT/secure-fanout.json" ;;
    secure-storm)  $bench run storm -n "$N" --secure --peers none --json "$OUT/secure-storm.json" ;;
    alloc-idle)    alloc_bins; $bench run idle -n "$N" $(alloc_args) --json "$OUT/alloc-idle.json" ;;
    alloc-fanout)  alloc_bins; $bench run fanout -n "$N" --rate 5 --duration 10 $(alloc_args) --json "$OUT/alloc-fanout.json" ;;
    alloc-slow)    alloc_bins; $bench run slow -n "$SLOW_N" --rate 20 --duration 30 --payload-bytes 1024 --after 30 $(alloc_args) --json "$OUT/alloc-slow.json" ;;
    # History kept for the bench room's type (100 messages, 10 min) against none.
    history-fanout)         $bench run fanout -n "$N" --rate 5 --duration 10 --peers none --history 100 --json "$OUT/history-fanout.json" ;;
    history-fanout-recover) $bench run fanout -n "$N" --rate 5 --duration 10 --peers none --history 100 --recover --json "$OUT/history-fanout-recover.json" ;;
    recover-storm)          $bench run recover-storm -n "$N" --missed 10 --history 100 --json "$OUT/recover-storm.json" ;;
    *) echo "unknown scenario $s (idle fanout fanout-goim latency storm slow loaded recover-storm secure-* alloc-* history-*, or the groups secure, alloc, history)" >&2; exit 2 ;;
  esac
done
echo "reports in $OUT/"
