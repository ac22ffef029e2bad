#!/usr/bin/env bash
# Dashboard benchmark (not part of `make test`): the CPU `mfe dashboard` spends while 10 000
# events/s pass through the exchange it tails, with its live tail open (the page's own
# Server-Sent Events stream, read here by curl), against the peer `mfe events tail --json` — the
# CLI's tail of the same events, each printed — in the same run, the two alternating per round.
# The publisher is the event-hub bench driver (`mfe-events --example bench ours`) on a topology
# of its own, which both tails watch through `--prefix`.
#
# Uses the test stack of test.env (127.0.0.1 only). BENCH_DASH_RATE (default 10000 events/s),
# BENCH_DASH_SECONDS (default 10) and BENCH_ROUNDS (default 3) bound every run.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; . ./test.env; set +a
export MFE_ROOT="$PWD" RUST_LOG=warn
RATE="${BENCH_DASH_RATE:-10000}"
SECS="${BENCH_DASH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
N=$((RATE * SECS))

echo "bench-dashboard: building mfe and the publisher (release)..." >&2
cargo build -q --release -p mfe --bin mfe
cargo build -q --release -p mfe-events --example bench
MFE=target/release/mfe
PUB=target/release/examples/bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# One measured run: $1 = dashboard | cli-tail, $2 = round. Prints one JSON line.
measure() {
  local who=$1 round=$2 prefix="mfe.bench.dash.$RANDOM$RANDOM" pid sse="$work/sse-$who-$round"
  : >"$sse"
  if [ "$who" = dashboard ]; then
    "$MFE" dashboard --port 0 --prefix "$prefix" >"$work/url" 2>/dev/null &
    pid=$!; pids+=("$pid")
    for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.1; done
    url=$(head -n1 "$work/url"); base=${url%%/?token=*}; token=${url##*token=}
    curl -sN --max-time $((SECS + 60)) -H "Authorization: Bearer $token" "$base/api/events/stream" >"$sse" &
    pids+=("$!")
    for _ in $(seq 100); do grep -q '^event: ready' "$sse" && break; sleep 0.1; done
  else
    "$MFE" events --prefix "$prefix" tail --json --timeout $((SECS + 60)) >/dev/null 2>"$sse" &
    pid=$!; pids+=("$pid")
    sleep 2 # its queue is bound once it says so on stderr; 2 s covers it here
  fi
  local t0 w0 pubout
  t0=$(ticks "$pid"); w0=$(date +%s.%N)
  pubout=$(BENCH_PREFIX="$prefix" timeout $((SECS * 6 + 60)) "$PUB" ours "$RATE" "$N" | tail -n1)
  sleep 1 # the tail drains what is still queued
  local t1 w1
  t1=$(ticks "$pid"); w1=$(date +%s.%N)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  python3 - "$who" "$round" "$t0" "$t1" "$hz" "$w0" "$w1" "$pubout" "$sse" <<'PY'
import json, sys
who, rnd, t0, t1, hz, w0, w1, pub, sse = sys.argv[1:]
cpu = (int(t1) - int(t0)) / int(hz)
wall = float(w1) - float(w0)
p = json.loads(pub)
stats = []
if who == "dashboard":
    lines = open(sse).read().splitlines()
    for i, l in enumerate(lines):
        if l == "event: stats" and i + 1 < len(lines) and lines[i + 1].startswith("data: "):
            stats.append(json.loads(lines[i + 1][6:]))
busy = [s for s in stats if s.get("seen", 0) > 0]
print(json.dumps({"who": who, "round": int(rnd), "events": p["messages"], "rate": p["msgs_per_s"], "cpu_s": cpu,
  "wall_s": wall, "cpu_pct": 100 * cpu / wall, "us_per_event": 1e6 * cpu / max(1, p["messages"]),
  "max_shown_per_s": max((s.get("shown", 0) for s in busy), default=None),
  "sampled_seconds": sum(1 for s in busy if s.get("sampled")), "busy_seconds": len(busy)}))
PY
}

out="$work/runs"
for round in $(seq 1 "$ROUNDS"); do
  echo "bench-dashboard: round $round of $ROUNDS ($RATE events/s for $SECS s)" >&2
  if [ $((round % 2)) = 1 ]; then order="dashboard cli-tail"; else order="cli-tail dashboard"; fi
  for who in $order; do measure "$who" "$round" >>"$out"; done
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'tail':<10} {'round':>5} {'events':>7} {'events/s':>9} {'cpu s':>7} {'cpu %':>6} {'us/event':>9} {'shown/s':>8} {'sampled s':>9}")
for r in sorted(runs, key=lambda r: (r["who"], r["round"])):
    shown = "-" if r["max_shown_per_s"] is None else str(r["max_shown_per_s"])
    sampled = "-" if r["who"] != "dashboard" else f"{r['sampled_seconds']}/{r['busy_seconds']}"
    print(f"{r['who']:<10} {r['round']:>5} {r['events']:>7} {r['rate']:>9.0f} {r['cpu_s']:>7.2f} {r['cpu_pct']:>6.1f} {r['us_per_event']:>9.1f} {shown:>8} {sampled:>9}")
med = lambda who, k: statistics.median(r[k] for r in runs if r["who"] == who)
d, c = med("dashboard", "us_per_event"), med("cli-tail", "us_per_event")
print(f"dashboard: median {med('dashboard', 'cpu_pct'):.1f} % of one core, {d:.1f} us CPU per event passing; "
      f"mfe events tail: {med('cli-tail', 'cpu_pct'):.1f} %, {c:.1f} us per event")
ok = d <= c
print(f"goal dashboard CPU per event <= 1.0x mfe events tail's: {d / c:.2f}x {'met' if ok else 'missed'}")
dash = [r for r in runs if r["who"] == "dashboard"]
capped = all(r["max_shown_per_s"] is not None and r["max_shown_per_s"] <= 200 for r in dash)
said = all(r["sampled_seconds"] > 0 for r in dash)
print(f"goal the page is sent at most 200 events/s and told it is sampled: {'met' if capped and said else 'missed'}")
PY
