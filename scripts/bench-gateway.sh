#!/usr/bin/env bash
# Gateway benchmarks (called by scripts/bench.sh; not part of `make test`). Prints figures.
#
# (a) HTTP proxy: one tiny backend, reached directly, through our gateway and through nginx's
#     own proxy_pass (one worker, keepalive upstream), in the same run:
#     - oha at a fixed 2000 req/s → p95; added p95 = proxy p95 - direct p95 (medians over rounds)
#     - wrk at saturation → req/s, and CPU µs per request of the proxy process (/proc/<pid>/stat);
#       direct, gateway and nginx alternate for BENCH_ROUNDS rounds (default 3), medians reported
#     - a 1 GiB streamed upload and download through the gateway → gateway RSS growth
# (b) WebSocket: `mfe ws probe --connections N` (default 10 000; events from the test stack's
#     RabbitMQ) straight to the gateway and through the repository's nginx (nginx/, rendered and
#     started by `mfe infra start nginx`, TLS, in front of the same gateway), alternating for
#     BENCH_ROUNDS rounds: connected/held sockets, every event delivered, idle memory per
#     connection, fan-out delivery p95 and deliveries/s, medians and a verdict (through nginx
#     ≥ 0.8× the deliveries/s and ≤ 1.3× the p95 of the gateway alone); then once against a
#     bare broadcast server built on the same WebSocket crate.
#
# Traffic goes to 127.0.0.1 only; every load run is bounded in time. Needs the test stack's
# RabbitMQ (`set -a; source test.env; set +a; mfe infra start`; BENCH_ENV names another env
# file), nginx and wrk on PATH; oha is installed into /tmp/oha-bin when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_ENV=${BENCH_ENV:-./test.env}
set -a; source "$BENCH_ENV"; set +a

WS_CONNECTIONS=${WS_CONNECTIONS:-10000}
# BENCH_PARTS=a runs only the HTTP proxy part, BENCH_PARTS=b only the WebSocket part (default: ab).
BENCH_PARTS=${BENCH_PARTS:-ab}
part() { [[ $BENCH_PARTS == *$1* ]]; }
# Fair comparison: nginx runs one worker process (worker_processes 1 below), so the gateway gets
# one worker thread (GATEWAY_WORKERS=1: a single-threaded runtime, like one nginx event loop).
# Override to compare other sizes, e.g. GATEWAY_WORKERS=0 (one per core, the production default).
GATEWAY_WORKERS=${GATEWAY_WORKERS:-1}
LOAD_SECONDS=${LOAD_SECONDS:-10}
# BENCH_PORT_BASE moves every port of the run (default 24100: 24100-24104 and 24200).
B=${BENCH_PORT_BASE:-24100}
BACKEND_PORT=$B GW_PORT=$((B + 1)) NGINX_PORT=$((B + 2)) EDGE_HTTP_PORT=$((B + 3)) EDGE_HTTPS_PORT=$((B + 4)) BARE_PORT=$((B + 100))
TMP=$(mktemp -d /tmp/mfe-bench-gateway.XXXXXX)
HZ=$(getconf CLK_TCK)
PIDS=()
EDGE_STARTED=

cleanup() {
  [ -n "$EDGE_STARTED" ] && edge infra stop nginx >/dev/null 2>&1
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Many sockets on both ends of (b). mfe raises its own soft limit to the hard one (so does the
# nginx it starts); the gateway started here inherits this shell's.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

need() { command -v "$1" >/dev/null || { echo "bench-gateway: $1 is not installed — $2" >&2; exit 1; }; }
need wrk "install it (apt-get install wrk)"
need nginx "install it (apt-get install nginx)"
OHA=$(command -v oha || true)
if [ -z "$OHA" ]; then
  [ -x /tmp/oha-bin/bin/oha ] || cargo install oha --locked --root /tmp/oha-bin
  OHA=/tmp/oha-bin/bin/oha
fi

echo "bench-gateway: building release binaries"
# Two builds, not one: building them together would unify features differently and rebuild both.
cargo build --release -q -p mfe-gateway --bins --examples
cargo build --release -q -p mfe
R=target/release

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { # utime + stime of the given pids (fields 14 and 15 after the command name)
  local total=0 pid
  for pid in "$@"; do
    total=$(( total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}') ))
  done
  echo "$total"
}
wait_http() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "bench-gateway: nothing answers $1" >&2; exit 1
}

# --- the processes -----------------------------------------------------------------------
"$R/examples/bench_backend" "$BACKEND_PORT" 2>"$TMP/backend.log" & PIDS+=($!)
wait_http "http://127.0.0.1:$BACKEND_PORT/"

start_gateway() { # workers
  env PORT=$GW_PORT GATEWAY_HOST=127.0.0.1 RUST_LOG=warn \
    AUTH_SERVICE_URL=http://127.0.0.1:$BACKEND_PORT PAYMENTS_SERVICE_URL=http://127.0.0.1:$BACKEND_PORT \
    ADMIN_SERVICE_URL=http://127.0.0.1:$BACKEND_PORT PROFILE_SERVICE_URL=http://127.0.0.1:$BACKEND_PORT \
    WS_PING_INTERVAL_MS=60000 WS_MAX_CONNECTIONS_PER_USER=0 GATEWAY_WORKERS=$1 \
    "$R/mfe-gateway" 2>>"$TMP/gateway.log" & GW_PID=$!; PIDS+=($GW_PID)
  wait_http "http://127.0.0.1:$GW_PORT/health"
}
start_gateway "$GATEWAY_WORKERS"

cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 0;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }
}
EOF
nginx -p "$TMP" -c "$TMP/nginx.conf" -g 'daemon off;' & NGINX_PID=$!; PIDS+=($NGINX_PID)
wait_http "http://127.0.0.1:$NGINX_PORT/api/auth/x"
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"

declare -A P95 RPS CPU_US
GIB_GROWTH_MB=-
if part a; then
# --- (a) fixed rate and saturation --------------------------------------------------------
# The machine is shared, so one run per target can land on a busy or a quiet moment: the runs
# alternate direct / gateway / nginx for BENCH_ROUNDS rounds and each figure is its median.
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
declare -A RPS_ALL CPU_ALL P95_ALL
fixed_rate() { # name round url
  "$OHA" -z "${LOAD_SECONDS}s" -q 2000 -c 50 --latency-correction --no-tui --output-format json "$3" >"$TMP/oha-$1-$2.json"
  local p95; p95=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('%.3f' % (d['latencyPercentiles']['p95']*1000))" "$TMP/oha-$1-$2.json")
  P95_ALL[$1]+="$p95 "
  echo "bench-gateway: $1 round $2: p95 $p95 ms at 2000 req/s (load $(cut -d' ' -f1 /proc/loadavg))"
}
saturation() { # name round url pids...
  local name=$1 round=$2 url=$3; shift 3
  local before=0 after=0 cpu=-
  [ $# -gt 0 ] && before=$(cpu_ticks "$@")
  wrk -t2 -c64 -d"${LOAD_SECONDS}s" --latency "$url" >"$TMP/wrk-$name-$round.txt"
  [ $# -gt 0 ] && after=$(cpu_ticks "$@")
  local rps n; rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$TMP/wrk-$name-$round.txt")
  n=$(awk '/requests in/ {print $1}' "$TMP/wrk-$name-$round.txt")
  [ $# -gt 0 ] && cpu=$(python3 -c "print('%.1f' % (($after-$before)/$HZ*1e6/$n))")
  RPS_ALL[$name]+="$rps "; CPU_ALL[$name]+="$cpu "
  echo "bench-gateway: $name round $round: $rps req/s at saturation; $cpu µs CPU/request (load $(cut -d' ' -f1 /proc/loadavg))"
}
median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:] if x != '-']; print('%g' % statistics.median(v) if v else '-')" "$@"; }
DIRECT_URL="http://127.0.0.1:$BACKEND_PORT/api/auth/ping"
GW_URL="http://127.0.0.1:$GW_PORT/api/auth/ping"
NGINX_URL="http://127.0.0.1:$NGINX_PORT/api/auth/ping"
saturation direct 1 "$DIRECT_URL"
for round in $(seq 1 "$BENCH_ROUNDS"); do
  fixed_rate direct "$round" "$DIRECT_URL"
  fixed_rate gateway "$round" "$GW_URL"
  fixed_rate nginx "$round" "$NGINX_URL"
  saturation gateway "$round" "$GW_URL" "$GW_PID"
  # shellcheck disable=SC2086
  saturation nginx "$round" "$NGINX_URL" $NGINX_PIDS
done
for name in direct gateway nginx; do
  # shellcheck disable=SC2086
  P95[$name]=$(median ${P95_ALL[$name]}); RPS[$name]=$(median ${RPS_ALL[$name]}); CPU_US[$name]=$(median ${CPU_ALL[$name]})
  echo "bench-gateway: $name: p95 ${P95[$name]} ms at 2000 req/s; ${RPS[$name]} req/s at saturation; ${CPU_US[$name]} µs CPU/request (medians of: ${P95_ALL[$name]% }; ${RPS_ALL[$name]% }; ${CPU_ALL[$name]% })"
done

# 1 GiB each way through the gateway, sampling its RSS.
GW_BASE_RSS=$(rss_kb "$GW_PID"); PEAK=$GW_BASE_RSS
( head -c 1073741824 /dev/zero | curl -s -o /dev/null -T - "http://127.0.0.1:$GW_PORT/api/auth/upload"
  curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/api/auth/download?bytes=1073741824" ) & MOVER=$!
STARTED=$(date +%s.%N)
while kill -0 "$MOVER" 2>/dev/null; do
  r=$(rss_kb "$GW_PID"); [ "$r" -gt "$PEAK" ] && PEAK=$r; sleep 0.05
done
GIB_SECONDS=$(python3 -c "import time; print('%.1f' % (time.time()-$STARTED))")
GIB_GROWTH_MB=$(python3 -c "print('%.1f' % (($PEAK-$GW_BASE_RSS)/1024))")
echo "bench-gateway: 1 GiB up + 1 GiB down through the gateway in ${GIB_SECONDS} s; RSS ${GW_BASE_RSS} KiB → peak ${PEAK} KiB (+${GIB_GROWTH_MB} MiB)"

kill "$NGINX_PID" 2>/dev/null || true

fi

if part b; then
# --- (b) WebSocket fan-out ----------------------------------------------------------------
# The bare server runs tokio's default runtime (one worker per core); so does the gateway here
# (WS_GATEWAY_WORKERS, default 0 = one per core), so both fan out with the same threads.
kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true
start_gateway "${WS_GATEWAY_WORKERS:-0}"

# The repository's nginx in front of that gateway, exactly as `mfe infra start nginx` runs it
# natively (nginx/nginx.conf + the rendered template, worker_connections sized for 10 000
# sockets), on ports and a state directory of its own, with a fresh dev CA the probe trusts.
EDGE_ENV=(MFE_RUNTIME=native "MFE_STATE_DIR=$TMP/edge" "NGINX_HTTP_PORT=$EDGE_HTTP_PORT" "NGINX_HTTPS_PORT=$EDGE_HTTPS_PORT"
  "SSL_CERT_PATH=$TMP/edge/ssl/self-signed.crt" "SSL_KEY_PATH=$TMP/edge/ssl/self-signed.key"
  "GATEWAY_URL=http://127.0.0.1:$GW_PORT" GATEWAY_UPSTREAMS=)
edge() { env "${EDGE_ENV[@]}" "$R/mfe" "$@"; }
edge ssl generate >"$TMP/edge-ssl.log" 2>&1 || { cat "$TMP/edge-ssl.log" >&2; exit 1; }
EDGE_STARTED=1
edge infra start nginx >"$TMP/edge-start.log" 2>&1 || { echo "bench-gateway: nginx did not start:" >&2; cat "$TMP/edge-start.log" >&2; exit 1; }
EDGE_PID=$(cat "$TMP/edge/native/nginx/run/pid")
EDGE_PIDS="$EDGE_PID $(pgrep -P "$EDGE_PID" | tr '\n' ' ')"
EDGE_CA=$TMP/edge/ssl/ca.crt

rss_sum() { local total=0 pid; for pid in "$@"; do total=$(( total + $(rss_kb "$pid") )); done; echo "$total"; }
ws_run() { # label ws-url "nginx pids or empty" probe-args...
  local name=$1 url=$2 edge_pids=$3; shift 3
  local base edge_base; base=$(rss_kb "$GW_PID")
  # shellcheck disable=SC2086
  edge_base=$( [ -n "$edge_pids" ] && rss_sum $edge_pids || echo 0 )
  "$R/mfe" --json ws probe --url "$url" --connections "$WS_CONNECTIONS" --duration 15 --timeout 30 "$@" \
    >"$TMP/probe-$name.json" 2>"$TMP/probe-$name.log" & local probe=$!
  # Idle memory: once every socket reached the gateway (directly, or nginx's leg to it) and
  # before the first event lands.
  local peak_conns=0 idle_rss=$base edge_idle=$edge_base
  for _ in $(seq 1 900); do
    kill -0 "$probe" 2>/dev/null || break
    local conns; conns=$(ss -Htn state established "( sport = :$GW_PORT )" 2>/dev/null | wc -l)
    if [ "$conns" -ge "$WS_CONNECTIONS" ]; then
      peak_conns=$conns; sleep 0.5; idle_rss=$(rss_kb "$GW_PID")
      # shellcheck disable=SC2086
      [ -n "$edge_pids" ] && edge_idle=$(rss_sum $edge_pids)
      break
    fi
    sleep 0.1
  done
  wait "$probe" || true
  python3 - "$TMP/probe-$name.json" "$name" "$base" "$idle_rss" "$peak_conns" "$edge_base" "$edge_idle" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
base, idle, conns, ebase, eidle = map(int, sys.argv[3:])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"bench-gateway: {name}: the probe wrote no report ({e}); see {path.replace('.json', '.log')}")
    sys.exit(0)
m = r.get("metrics", {})
checks = {c["name"]: c for c in r.get("checks", [])}
per_conn = (idle - base) * 1024 / conns if conns else float("nan")
edge = f"; nginx {(eidle - ebase) * 1024 / conns:.0f} B/connection (RSS {ebase} → {eidle} KiB)" if ebase and conns else ""
print(f"bench-gateway: {name}: {m.get('connected')}/{m.get('connections')} connected, {m.get('failed')} failed; "
      f"{checks.get('fan-out', {}).get('detail', 'no fan-out')}; {checks.get('held', {}).get('detail', '')}; "
      f"idle memory gateway {per_conn:.0f} B/connection (RSS {base} → {idle} KiB at {conns} sockets){edge}; "
      f"delivery p50 {m.get('latency_p50_ms')} ms p95 {m.get('latency_p95_ms')} ms p99 {m.get('latency_p99_ms')} ms; "
      f"{m.get('deliveries_per_s')} deliveries/s; passed={r.get('passed')} (load {open('/proc/loadavg').read().split()[0]})")
PY
}
# Direct and through nginx alternate, so a busy moment of the shared machine hits both alike.
WS_ROUNDS=${BENCH_ROUNDS:-3}
for round in $(seq 1 "$WS_ROUNDS"); do
  ws_run "direct-$round" "ws://127.0.0.1:$GW_PORT/ws" "" --user-id "bench-$$-d$round" --trigger event
  ws_run "nginx-$round" "wss://localhost:$EDGE_HTTPS_PORT/ws" "$EDGE_PIDS" --ca "$EDGE_CA" --user-id "bench-$$-n$round" --trigger event
done
edge infra stop nginx >/dev/null 2>&1 || true; EDGE_STARTED=
kill "$GW_PID" 2>/dev/null || true

"$R/examples/bare_broadcast" "$BARE_PORT" 2>"$TMP/bare.log" & BARE_PID=$!; PIDS+=($BARE_PID)
sleep 0.5
GW_PID=$BARE_PID GW_PORT=$BARE_PORT ws_run bare "ws://127.0.0.1:$BARE_PORT/ws" "" --user-id bare --trigger payment --api-url "http://127.0.0.1:$BARE_PORT"

fi

# --- summary ----------------------------------------------------------------------------------
part a && python3 - "${P95[direct]}" "${P95[gateway]}" "${P95[nginx]}" "${RPS[gateway]}" "${RPS[nginx]}" "${CPU_US[gateway]}" "${CPU_US[nginx]}" <<'PY'
import sys
d, g, n, rg, rn, cg, cn = map(float, sys.argv[1:])
print("bench-gateway: summary (goal in brackets)")
print(f"  added p95 at 2000 req/s: gateway {g-d:.3f} ms, nginx {n-d:.3f} ms  [gateway ≤ 1.2× nginx]")
print(f"  saturation: gateway {rg:.0f} req/s, nginx {rn:.0f} req/s = {rg/rn:.2f}×  [≥ 0.9×]")
print(f"  CPU per request: gateway {cg:.1f} µs, nginx {cn:.1f} µs = {cg/cn:.2f}×  [≤ 1.2×]")
PY
python3 - "$TMP" "$GIB_GROWTH_MB" "$BENCH_PARTS" "${BENCH_ROUNDS:-3}" "$WS_CONNECTIONS" <<'PY'
import json, statistics, sys
tmp, gib, parts, rounds, sockets = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def load(name):
    try:
        return json.load(open(f"{tmp}/probe-{name}.json"))
    except Exception:
        return {}
if "a" in parts:
    print(f"  1 GiB streamed each way: gateway RSS growth {gib} MiB  [flat]")
if "b" not in parts:
    sys.exit(0)
def figures(kind):
    runs = [load(f"{kind}-{i}") for i in range(1, rounds + 1)]
    m = [r.get("metrics", {}) for r in runs]
    return {
        "dps": [x.get("deliveries_per_s") or 0 for x in m],
        "p95": [x.get("latency_p95_ms") or float("nan") for x in m],
        "connected": [x.get("connected") or 0 for x in m],
        "passed": [bool(r.get("passed")) for r in runs],
    }
d, n = figures("direct"), figures("nginx")
med = lambda v: statistics.median(v) if v else float("nan")
dd, nd, dp, np_ = med(d["dps"]), med(n["dps"]), med(d["p95"]), med(n["p95"])
rate, lat = (nd / dd if dd else float("nan")), (np_ / dp if dp else float("nan"))
fmt = lambda v: ", ".join(f"{x:g}" for x in v)
print(f"  sockets connected per round: direct {fmt(d['connected'])}; through nginx {fmt(n['connected'])}  [{sockets} each]")
print(f"  deliveries/s: direct {dd:.0f}, through nginx {nd:.0f} = {rate:.2f}×  [≥ 0.8×]  (rounds: {fmt(d['dps'])} | {fmt(n['dps'])})")
print(f"  fan-out p95: direct {dp:.1f} ms, through nginx {np_:.1f} ms = {lat:.2f}×  [≤ 1.3×]  (rounds: {fmt(d['p95'])} | {fmt(n['p95'])})")
b = load("bare").get("metrics", {})
bd = b.get("deliveries_per_s") or 0
print(f"  bare broadcast server: p95 {b.get('latency_p95_ms')} ms, {bd:.0f} deliveries/s; gateway = {(dd / bd if bd else float('nan')):.2f}×  [≥ 0.8×]")
ok = rate >= 0.8 and lat <= 1.3 and all(d["passed"]) and all(n["passed"]) and min(n["connected"] or [0]) >= sockets
print(f"bench-gateway: verdict: {'PASS' if ok else 'FAIL'} — through nginx {rate:.2f}× the deliveries/s and {lat:.2f}× the fan-out p95 of the gateway alone, "
      f"{sum(n['passed'])}/{rounds} nginx and {sum(d['passed'])}/{rounds} direct probes passed (every socket held, every event delivered)")
PY
echo "bench-gateway: (a) gateway with GATEWAY_WORKERS=$GATEWAY_WORKERS, nginx with 1 worker process, each figure the median of ${BENCH_ROUNDS:-3} alternating rounds; (b) gateway with GATEWAY_WORKERS=${WS_GATEWAY_WORKERS:-0} (0 = one per core), the repository's nginx (worker_processes auto), medians of ${BENCH_ROUNDS:-3} alternating rounds"
echo "bench-gateway: raw outputs in $TMP"
