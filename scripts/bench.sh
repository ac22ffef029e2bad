#!/usr/bin/env bash
# `make bench`: every benchmark, each printing its figures and its peer's, measured in the same
# run. Not part of `make test`. Run one area with scripts/bench-<area>.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for b in scripts/bench-*.sh; do
  [ -x "$b" ] || continue
  echo "=== $b"
  "$b" || { echo "bench: $b failed"; status=1; }
done
exit $status
