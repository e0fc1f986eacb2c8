#!/usr/bin/env bash
# Runs the benchmark scenarios side by side with nats-server and the floor and
# writes JSON reports, Markdown summaries and SVG charts to bench-results/.
#
#   scripts/bench.sh                 # every scenario at 15,000 connections
#   scripts/bench.sh fanout latency  # only these scenarios
#   N=5000 scripts/bench.sh idle     # fewer connections
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-15000}
OUT=${OUT:-bench-results}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle fanout fanout-goim latency storm)

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "installing nats-server (Debian package) for the side-by-side runs"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq nats-server >/dev/null
  fi
fi

# Loopback clients need many ephemeral ports; widen the range when allowed.
if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
  echo "1024 65000" > /proc/sys/net/ipv4/ip_local_port_range || true
fi

cargo build --release -p herald
bench="target/release/herald bench"
mkdir -p "$OUT"
for s in "${scenarios[@]}"; do
  case "$s" in
    idle)        $bench run idle -n "$N" --json "$OUT/idle.json" ;;
    fanout)      $bench run fanout -n "$N" --rate 5 --duration 10 --json "$OUT/fanout.json" ;;
    fanout-goim) $bench run fanout -n "$N" --rate 40 --duration 10 --window-ms 500 --json "$OUT/fanout-goim.json" ;;
    latency)     $bench run latency -n 100 --rate 20 --duration 5 --peers none --json "$OUT/latency.json" ;;
    storm)       $bench run storm -n "$N" --peers none --json "$OUT/storm.json" ;;
    *) echo "unknown scenario $s (idle, fanout, fanout-goim, latency, storm)" >&2; exit 2 ;;
  esac
done
echo "reports in $OUT/"
