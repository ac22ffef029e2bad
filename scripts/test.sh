#!/usr/bin/env bash
# `make test`: build, start the test stack (native runtime, test ports), run every test, stop
# what was started — also on failure — and exit non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; source ./test.env; set +a
export MFE_ROOT="$PWD"

cargo build --workspace --all-targets
MFE="$PWD/target/debug/mfe"

cleanup() {
  status=$?
  echo "test: stopping the test stack"
  "$MFE" infra stop --runtime native || true
  exit $status
}
trap cleanup EXIT INT TERM

# A fresh stack every run: leftovers of an earlier run are removed first.
"$MFE" infra clean --yes --runtime native
"$MFE" infra start --runtime native

cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/mfe-test-output.log
status=${PIPESTATUS[0]}
echo "test: summary"
grep -E '^test result:' /tmp/mfe-test-output.log || true
exit "$status"
