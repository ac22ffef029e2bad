#!/usr/bin/env bash
# Event hub benchmark (not part of `make test`): our publisher+subscriber (mfe-events), a raw
# amqprs client and Python pika's asynchronous publisher, each at saturation and at a fixed
# 1 000 msg/s, with the same shape: durable topic exchange and queue, persistent 256-byte
# messages, 200 unconfirmed publishes in flight, prefetch 200, manual acks; end-to-end latency
# from a timestamp in each message. Also prices the retry machinery (1 % of messages retried).
#
# Uses RABBITMQ_URL from the environment, else the test stack of test.env (127.0.0.1 only).
# BENCH_MESSAGES (default 50000) and BENCH_RATE_MESSAGES (default 5000) bound every run.
# Every mode runs BENCH_ROUNDS times (default 3), the modes interleaved, so a burst of other
# load on this small machine hits one round of each rather than all of one mode; the table shows
# each mode's median round (by msgs/s at saturation, by p95 at the fixed rate) and lists all.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${RABBITMQ_URL:-}" ]; then set -a; . ./test.env; set +a; fi
export RABBITMQ_URL="${RABBITMQ_URL%%,*}"
case "$RABBITMQ_URL" in
  *@127.0.0.1:*|*@localhost:*) ;;
  *) echo "bench-event-hub: RABBITMQ_URL must point at 127.0.0.1 (got ${RABBITMQ_URL#*@})" >&2; exit 2 ;;
esac
N="${BENCH_MESSAGES:-50000}"
NR="${BENCH_RATE_MESSAGES:-5000}"
ROUNDS="${BENCH_ROUNDS:-3}"
VENV=/tmp/mfe-bench-venv

echo "bench-event-hub: building the Rust driver (release)..." >&2
cargo build -q --release -p mfe-events --example bench
BIN=target/release/examples/bench

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pika' 2>/dev/null; then
  echo "bench-event-hub: installing pika into $VENV..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q pika
fi
PY="$VENV/bin/python services/events/benches/pika_bench.py"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
run() { echo "bench-event-hub: $*" >&2; timeout 300 "$@" | tail -n1 >>"$out"; }
for round in $(seq 1 "$ROUNDS"); do
  echo "bench-event-hub: round $round of $ROUNDS" >&2
  for rate in 0 1000; do
    n=$N; [ "$rate" = 0 ] || n=$NR
    run "$BIN" ours "$rate" "$n"
    run "$BIN" amqprs "$rate" "$n"
    run $PY "$RABBITMQ_URL" "$rate" "$n"
  done
  run "$BIN" ours-retry 0 "$N"
done

python3 - "$out" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
# One row per (mode, rate): the median round, by throughput at saturation, by p95 at a fixed rate.
rows, spread = [], {}
for key in dict.fromkeys((r["mode"], r["rate"]) for r in runs):
    same = [r for r in runs if (r["mode"], r["rate"]) == key]
    metric = (lambda r: r["msgs_per_s"]) if key[1] == 0 else (lambda r: r["p95_ms"])
    same.sort(key=metric)
    rows.append(same[len(same) // 2])
    spread[key] = " ".join(f"{metric(r):.0f}" if key[1] == 0 else f"{metric(r):.2f}" for r in same)
print(f"{'mode':<12} {'load':>12} {'msgs':>7} {'msgs/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  rounds (msgs/s | p95 ms)")
for r in rows:
    load = "saturation" if r["rate"] == 0 else f"{r['rate']} msg/s"
    print(f"{r['mode']:<12} {load:>12} {r['messages']:>7} {r['msgs_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f}  {spread[(r['mode'], r['rate'])]}")
get = lambda m, rate: next((r for r in rows if r["mode"] == m and r["rate"] == rate), None)
ours, raw, pika, retry = get("ours", 0), get("amqprs", 0), get("pika-async", 0), get("ours-retry", 0)
ours_r, raw_r = get("ours", 1000), get("amqprs", 1000)
goals = []
if ours and raw: goals.append(("ours >= 0.8x amqprs (saturation)", ours["msgs_per_s"] / raw["msgs_per_s"], 0.8, ">="))
if ours and pika: goals.append(("ours >= 1.0x pika async (saturation)", ours["msgs_per_s"] / pika["msgs_per_s"], 1.0, ">="))
if ours: goals.append(("ours >= 10000 msg/s", ours["msgs_per_s"], 10000, ">="))
if ours_r: goals.append(("ours p95 at 1000 msg/s <= 10 ms", ours_r["p95_ms"], 10, "<="))
if ours_r and raw_r: goals.append(("ours p95 <= 1.25x amqprs p95 at 1000 msg/s", ours_r["p95_ms"] / max(raw_r["p95_ms"], 0.001), 1.25, "<="))
if ours and retry: goals.append(("retry machinery cost <= 10 % (1 % retried)", 1 - retry["msgs_per_s"] / ours["msgs_per_s"], 0.10, "<="))
print()
for name, v, lim, op in goals:
    ok = v >= lim if op == ">=" else v <= lim
    print(f"{'met ' if ok else 'MISS'}  {name}: {v:.2f}")
PY
