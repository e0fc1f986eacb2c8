#!/usr/bin/env bash
# The one test command: formatting, lints, unit, property and end-to-end tests.
# Usage: scripts/test.sh            (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# Engines the tests start privately (on ephemeral loopback ports). Installed from
# Debian packages when missing; tests that need one fail loudly without it.
need_pkgs=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_pkgs+=(redis-server)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_pkgs+=(nats-server)
command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || need_pkgs+=(etcd-server etcd-client)
# The Kafka backend's rdkafka builds librdkafka from C (configure + make).
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing test engines and build tools: ${need_pkgs[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; }
fi

# tansu, the Kafka-compatible broker the Kafka queue tests start: built from crates.io
# once (about 9 minutes; the plain build lacks the in-memory storage the tests use)
# and reused from PATH or cargo's bin directory afterwards.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v tansu >/dev/null 2>&1; then
  step "installing tansu (Kafka-compatible broker; about 9 minutes, once)"
  cargo install tansu --locked --features dynostore
fi

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "tests (cargo test)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-features --locked 2>&1 | tee "$log" || status=$?
if [ "$status" = 0 ]; then
  step "README run command (cargo run -- ...) resolves to the server"
  cargo run --locked --quiet -- config >/dev/null || status=$?
fi
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "Summary: ${passed} passed, ${failed} failed"
exit "$status"
