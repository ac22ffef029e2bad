#!/usr/bin/env bash
# `make test`: build, start the test stack (native runtime, test ports), run every test, stop
# what was started — also on failure — and exit non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; source ./test.env; set +a
export MFE_ROOT="$PWD"

cargo build --workspace --all-targets
MFE="$PWD/target/debug/mfe"

docker_was_running=0
curl -fs --max-time 3 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1 && docker_was_running=1

cleanup() {
  status=$?
  echo "test: stopping the test stack"
  "$MFE" infra stop --runtime native || true
  if [ "$docker_was_running" = 0 ] && [ -f /tmp/mfe-dockerd.pid ]; then
    echo "test: stopping the dockerd this run started"
    kill "$(cat /tmp/mfe-dockerd.pid)" 2>/dev/null || true
    rm -f /tmp/mfe-dockerd.pid
  fi
  exit $status
}
trap cleanup EXIT INT TERM

# The docker runtime's tests need a daemon and the local (offline) images: start dockerd if it
# is installed but not running, build the images if missing.
scripts/test-docker.sh --prepare

# A fresh stack every run: leftovers of an earlier run are removed first.
"$MFE" infra clean --yes --runtime native
"$MFE" infra start --runtime native

cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/mfe-test-output.log
status=${PIPESTATUS[0]}
echo "test: summary"
grep -E '^test result:' /tmp/mfe-test-output.log || true
exit "$status"
