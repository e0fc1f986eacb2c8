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
# socat is the TLS terminator of the Kafka TLS tests; PostgreSQL backs the chat
# store's tests; Chromium and chromedriver run the JavaScript SDK's browser tests.
# shellcheck source=scripts/engines.sh
. scripts/engines.sh
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
step "engines and build tools"
ensure_engines redis nats etcd kafka mqtt postgres tls-proxy build browser

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# --no-fail-fast: every test binary runs even when an earlier one fails, so the
# summary counts them all.
step "tests (cargo test --no-fail-fast)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-features --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# (grep finds nothing when nothing ran: the sums are then 0, not an exit.)
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}') || true
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}') || true
# A test binary that crashed (abort, signal) prints no result line; cargo still
# names it ("test failed, to rerun pass ..."). Each such binary counts as one
# failure, so a crash never reads as "0 failed".
failed_binaries=$(grep -c '^error: test failed, to rerun pass' "$log" || true)
failed_results=$(grep -c '^test result: FAILED' "$log" || true)
stopped=$((failed_binaries - failed_results))
if [ "$stopped" -gt 0 ]; then
  echo "${stopped} test binary(ies) stopped without a result (a crash or a signal), each counted as one failure. The binaries that failed:"
  grep -E '^error: test failed, to rerun pass' "$log" | sed 's/^/  /'
  failed=$((failed + stopped))
fi
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  # cargo failed before or outside any test (a build error): not a success.
  echo "cargo test failed (exit ${status}) outside any test result; see above"
  failed=1
fi
if [ "$status" = 0 ]; then
  step "README run command (cargo run -- ...) resolves to the server"
  if ! cargo run --locked --quiet -- config >/dev/null; then
    status=1
    failed=$((failed + 1))
  fi
fi
echo
echo "Summary: ${passed} passed, ${failed} failed"
exit "$status"
