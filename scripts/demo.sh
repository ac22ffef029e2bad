#!/usr/bin/env bash
# `make demo`: the main job end to end (grows with the stack; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace
MFE="$PWD/target/debug/mfe"
"$MFE" infra start --runtime native
"$MFE" infra status --runtime native
echo "demo: stopping (run \`mfe infra start\` to keep a stack running)"
"$MFE" infra stop --runtime native
