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

# Engines the tests start privately (on ephemeral loopback ports): installed when
# missing (Debian packages; tansu, the Kafka-compatible broker, from crates.io once,
# about 9 minutes). Tests that need one fail loudly without it. make, a C
# compiler, pkg-config and libssl-dev build librdkafka for the Kafka backend;
# socat is the TLS terminator of the Kafka TLS tests.
# shellcheck source=scripts/engines.sh
. scripts/engines.sh
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
step "engines and build tools"
ensure_engines redis nats etcd kafka tls-proxy build

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
