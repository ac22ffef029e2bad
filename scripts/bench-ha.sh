#!/usr/bin/env bash
# HA broker benchmark (issue 17; not part of `make test`): the event hub (mfe-events, the
# bench driver's `ours` mode) on the three-node cluster with quorum queues against one node
# with classic queues, both started here on private ports (43xxx) and removed afterwards, at
# saturation and at a fixed 1 000 msg/s. Rounds alternate (BENCH_ROUNDS, default 3); the
# table shows each side's median round and lists all; goals: quorum >= 0.5x classic msgs/s,
# quorum p95 <= 3x classic p95 at 1 000 msg/s.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_MESSAGES:-30000}"
NR="${BENCH_RATE_MESSAGES:-5000}"
ROUNDS="${BENCH_ROUNDS:-3}"
cargo build -q -p mfe
cargo build -q --release -p mfe-events --example bench
MFE="$PWD/target/debug/mfe"
BIN="$PWD/target/release/examples/bench"
STATE=/tmp/mfe-bench-ha
export MFE_ROOT="$PWD" MFE_RUNTIME=native

single() { env MFE_STATE_DIR=$STATE/single RABBITMQ_URL=amqp://admin:admin@127.0.0.1:43672/%2f \
  RABBITMQ_MANAGEMENT_PORT=43682 RABBITMQ_DIST_PORT=43692 "$@"; }
cluster() { env MFE_STATE_DIR=$STATE/cluster RABBITMQ_URL=amqp://admin:admin@127.0.0.1:43572/%2f \
  RABBITMQ_MANAGEMENT_PORT=43582 RABBITMQ_DIST_PORT=43592 "$@"; }
cleanup() {
  single "$MFE" infra clean --yes --runtime native >/dev/null 2>&1 || true
  cluster "$MFE" infra clean --yes --runtime native >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
cleanup
echo "bench-ha: starting one node (classic queues) and a three-node cluster (quorum queues)..." >&2
single "$MFE" infra start rabbitmq --runtime native >/dev/null
cluster "$MFE" infra start rabbitmq --ha --runtime native >/dev/null

out=$(mktemp)
# `timeout` goes inside the wrapper: it cannot run a shell function.
run() { local label=$1; shift; "$@" | tail -n1 | sed "s/\"mode\": *\"ours\"/\"mode\":\"$label\"/" >>"$out"; }
for round in $(seq 1 "$ROUNDS"); do
  echo "bench-ha: round $round of $ROUNDS" >&2
  for rate in 0 1000; do
    n=$N; [ "$rate" = 0 ] || n=$NR
    run classic-1 single env RABBITMQ_QUEUE_TYPE=classic timeout 300 "$BIN" ours "$rate" "$n"
    run quorum-3 cluster env RABBITMQ_QUEUE_TYPE=quorum timeout 300 "$BIN" ours "$rate" "$n"
  done
done

python3 - "$out" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
rows, spread = {}, {}
for key in dict.fromkeys((r["mode"], r["rate"]) for r in runs):
    same = [r for r in runs if (r["mode"], r["rate"]) == key]
    metric = (lambda r: r["msgs_per_s"]) if key[1] == 0 else (lambda r: r["p95_ms"])
    same.sort(key=metric)
    rows[key] = same[len(same) // 2]
    spread[key] = " ".join(f"{metric(r):.0f}" if key[1] == 0 else f"{metric(r):.2f}" for r in same)
print(f"{'broker':<10} {'load':>12} {'msgs/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  rounds (msgs/s | p95 ms)")
for (mode, rate), r in rows.items():
    load = "saturation" if rate == 0 else f"{rate} msg/s"
    print(f"{mode:<10} {load:>12} {r['msgs_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f}  {spread[(mode, rate)]}")
c, q = rows.get(("classic-1", 0)), rows.get(("quorum-3", 0))
cr, qr = rows.get(("classic-1", 1000)), rows.get(("quorum-3", 1000))
print()
if c and q:
    v = q["msgs_per_s"] / c["msgs_per_s"]
    print(f"{'met ' if v >= 0.5 else 'MISS'}  quorum-3 >= 0.5x classic-1 msgs/s (saturation): {v:.2f}")
if cr and qr:
    v = qr["p95_ms"] / max(cr["p95_ms"], 0.001)
    print(f"{'met ' if v <= 3 else 'MISS'}  quorum-3 p95 <= 3x classic-1 p95 at 1000 msg/s: {v:.2f}")
PY
