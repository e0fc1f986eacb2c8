#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer) on the
# nightly toolchain: each target runs for a set time, grows its corpus in
# fuzz/corpus/<target>/, and the corpus is minimized at the end. An input that
# makes a target fail (panic, timeout, out of memory) is copied to
# fuzz/regressions/<target>/ and the script exits non-zero; the stable test
# suite then replays it (crates/fuzz-targets/tests/corpus.rs).
#
#   scripts/fuzz.sh                          # every target, 60 s each
#   scripts/fuzz.sh 300                      # every target, 300 s each
#   FUZZ_SECONDS=120 scripts/fuzz.sh frame   # only these targets
#
# Targets: frame websocket auth_body recovery http_query
# Builds go to $CARGO_TARGET_DIR (default fuzz/target).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALL_TARGETS=(frame websocket auth_body recovery http_query)
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
seconds=${FUZZ_SECONDS:-60}
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  if [[ ! " ${ALL_TARGETS[*]} " =~ \ $t\  ]]; then
    echo "unknown target '$t' (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
  fi
done

# Largest input tried: a WebSocket upgrade request (8 KiB) with frames after it.
MAX_LEN=16384
# Any input taking longer than this is a hang.
TIMEOUT=10
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

die() {
  echo "fuzz.sh: $*" >&2
  exit 1
}

step() { printf '\n== %s\n' "$*"; }

# cargo-fuzz needs a nightly compiler (for -Z sanitizer) and itself.
command -v rustup >/dev/null 2>&1 ||
  die "rustup not found: fuzzing needs rustup with a nightly toolchain (https://rustup.rs)"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "installing the $TOOLCHAIN toolchain (rustup)"
  rustup toolchain install "$TOOLCHAIN" --profile minimal ||
    die "no $TOOLCHAIN toolchain and it could not be installed (rustup toolchain install $TOOLCHAIN)"
fi
if ! cargo "+$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked ||
    die "cargo-fuzz is missing and could not be installed (cargo install cargo-fuzz --locked)"
fi

fuzz() { cargo "+$TOOLCHAIN" fuzz "$@"; }
# Release builds with debug assertions, so integer overflows are findings too.
BUILD_FLAGS=(--release --debug-assertions)

# The same dependency versions as the workspace: start from its lock file
# (cargo adds libfuzzer-sys and drops what the targets do not use).
cp Cargo.lock fuzz/Cargo.lock

step "build ($TOOLCHAIN, cargo-fuzz $(fuzz --version | awk '{print $2}'))"
fuzz build "${BUILD_FLAGS[@]}" || die "the fuzz targets do not build"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()

# Copies what made target $1 fail to fuzz/regressions/$1/; false if nothing.
keep_reproducers() {
  local t=$1 found=0 f
  mkdir -p "fuzz/regressions/$t"
  for f in "fuzz/artifacts/$t"/*; do
    [ -f "$f" ] || continue
    case "$(basename "$f")" in
      crash-* | timeout-* | oom-* | leak-*) ;;
      *) continue ;;
    esac
    cp "$f" "fuzz/regressions/$t/"
    echo "fuzz.sh: $t failed on fuzz/regressions/$t/$(basename "$f")" >&2
    found=1
  done
  [ "$found" = 1 ]
}

# Minimizes fuzz/corpus/$1 as `cargo fuzz cmin` does (libFuzzer's -merge=1),
# but merging into the hand-made seed-* inputs, which keep their names.
minimize() {
  local t=$1 corpus="fuzz/corpus/$1" grown
  grown=$(mktemp -d)
  find "$corpus" -maxdepth 1 -type f ! -name 'seed-*' -exec mv -t "$grown" {} +
  if ! fuzz run "${BUILD_FLAGS[@]}" "$t" "$corpus" "$grown" -- \
    -merge=1 -max_len="$MAX_LEN" -timeout="$TIMEOUT" >"$logs/$t.merge" 2>&1; then
    # Keep the whole corpus rather than lose it.
    find "$grown" -maxdepth 1 -type f -exec mv -n -t "$corpus" {} +
    rm -rf "$grown"
    tail -20 "$logs/$t.merge" >&2
    return 1
  fi
  rm -rf "$grown"
}

for t in "${targets[@]}"; do
  step "fuzz $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  rm -rf "fuzz/artifacts/$t"
  status=0
  fuzz run "${BUILD_FLAGS[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$MAX_LEN" -timeout="$TIMEOUT" \
    -print_final_stats=1 >"$logs/$t.log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' \
    "$logs/$t.log" || true
  if [ "$status" != 0 ]; then
    # What failed: the panic or libFuzzer's report, else the end of the log.
    grep -m1 -A25 -E 'panicked at|==[0-9]+==ERROR|ERROR: libFuzzer' "$logs/$t.log" >&2 ||
      tail -40 "$logs/$t.log" >&2
    keep_reproducers "$t" || die "$t exited with $status and left no reproducer (log above)"
    failed+=("$t")
  fi
  # libFuzzer's last line: "#<execs> DONE cov: <edges> ft: <features> corp: <n>/<size> ...".
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -1) || true
  execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
  step "minimize fuzz/corpus/$t"
  minimize "$t" || die "minimizing fuzz/corpus/$t failed (log above)"
  files=$(find "fuzz/corpus/$t" -maxdepth 1 -type f | wc -l)
  bytes=$(find "fuzz/corpus/$t" -maxdepth 1 -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  echo "$t: corpus of $files inputs, $bytes bytes"
  summary+=("$(printf '%-11s execs %-10s cov %-6s ft %-6s corpus %5s inputs %9s bytes' \
    "$t" "${execs:--}" "${cov:--}" "${ft:--}" "$files" "$bytes")")
done

step "summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo >&2
  echo "fuzz.sh: FAILED: ${failed[*]}. Reproducers are in fuzz/regressions/<target>/;" >&2
  echo "replay them on stable with: cargo test -p herald-fuzz-targets --test corpus" >&2
  exit 1
fi
echo "no failures"
