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

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (cargo test)"
cargo test --workspace --locked
