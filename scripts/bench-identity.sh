#!/usr/bin/env bash
# Identity services benchmark (not part of `make test`): the auth and profile services
# (release builds) on fresh databases of the test stack, driven by `oha` with a valid token:
#   GET /api/auth/me     at 1000 req/s (open loop, -q)   goal p99 < 5 ms
#   GET /api/profile/me  at 1000 req/s (open loop, -q)   goal p99 < 5 ms
#   both again at saturation (closed loop, 50 connections)
# Prints p50/p99 and the achieved req/s. Traffic goes to 127.0.0.1 only; every phase is
# bounded in time (BENCH_SECONDS, default 10 s; saturation BENCH_SAT_SECONDS, default 5 s).
#
# Needs the test stack (`set -a; source test.env; set +a; mfe infra start`), psql, curl and
# python3; installs oha into /tmp/oha-bin when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a
# shellcheck disable=SC1091
source test.env
set +a

seconds="${BENCH_SECONDS:-10}"
sat_seconds="${BENCH_SAT_SECONDS:-5}"
rate="${BENCH_RATE:-1000}"
auth_port="${BENCH_AUTH_PORT:-29401}"
profile_port="${BENCH_PROFILE_PORT:-29404}"

oha=/tmp/oha-bin/bin/oha
if [ ! -x "$oha" ]; then
  command -v oha >/dev/null && oha="$(command -v oha)"
fi
if [ ! -x "$oha" ]; then
  echo "bench-identity: installing oha into /tmp/oha-bin (cargo install oha --locked)" >&2
  cargo install oha --locked --root /tmp/oha-bin >/dev/null
  oha=/tmp/oha-bin/bin/oha
fi
for tool in psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-identity: $tool not found — install it (apt-get install postgresql-client curl python3)" >&2; exit 1; }
done

auth_server="${AUTH_DATABASE_URL%/*}"
profile_server="${PROFILE_DATABASE_URL%/*}"
suffix="$(date +%s)_$$"
auth_db="bench_auth_$suffix"
profile_db="bench_profile_$suffix"
queue="bench.profile.events.queue.$suffix"
for pair in "$auth_server $auth_db" "$profile_server $profile_db"; do
  set -- $pair
  psql -q "$1/postgres" -c "CREATE DATABASE \"$2\"" >/dev/null \
    || { echo "bench-identity: cannot create a database at $1 — is the test stack running? try \`mfe infra start\`" >&2; exit 1; }
done

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  psql -q "$auth_server/postgres" -c "DROP DATABASE IF EXISTS \"$auth_db\" WITH (FORCE)" >/dev/null 2>&1 || true
  psql -q "$profile_server/postgres" -c "DROP DATABASE IF EXISTS \"$profile_db\" WITH (FORCE)" >/dev/null 2>&1 || true
  # The consumer's queue and its retry queues (<queue>.retry.<ms>, see mfe_events::topology).
  for q in "$queue" "$queue.retry.1000" "$queue.retry.2000" "$queue.retry.4000"; do
    curl -fsS -u admin:admin -X DELETE "http://127.0.0.1:${RABBITMQ_MANAGEMENT_PORT}/api/queues/%2f/$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

echo "bench-identity: building auth-service and profile-service (release)" >&2
cargo build --release -q -p auth-service -p profile-service

wait_healthy() { # name port pid log
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "bench-identity: $1 exited — see $4" >&2; tail -5 "$4" >&2; exit 1; }
    sleep 0.2
  done
  echo "bench-identity: $1 not healthy on port $2 after 20 s — see $4" >&2
  exit 1
}
for port in "$auth_port" "$profile_port"; do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "bench-identity: port $port is taken — set BENCH_AUTH_PORT/BENCH_PROFILE_PORT" >&2; exit 1; }
done
AUTH_DATABASE_URL="$auth_server/$auth_db" PORT="$auth_port" RUST_LOG=warn \
  target/release/auth-service >/tmp/bench-identity-auth.log 2>&1 &
pids+=($!)
wait_healthy auth-service "$auth_port" "${pids[-1]}" /tmp/bench-identity-auth.log
PROFILE_DATABASE_URL="$profile_server/$profile_db" PORT="$profile_port" RUST_LOG=warn PROFILE_EVENTS_QUEUE="$queue" \
  target/release/profile-service >/tmp/bench-identity-profile.log 2>&1 &
pids+=($!)
wait_healthy profile-service "$profile_port" "${pids[-1]}" /tmp/bench-identity-profile.log

# A real user: sign up through the auth service; its registration event creates the profile.
email="bench-$suffix@example.com"
signup="$(curl -fsS -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"bench-pass-1\",\"name\":\"Bench User\"}" \
  "http://127.0.0.1:$auth_port/api/auth/signup")" || { echo "bench-identity: signup failed — see /tmp/bench-identity-auth.log" >&2; exit 1; }
token="$(printf '%s' "$signup" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')"
auth_url="http://127.0.0.1:$auth_port/api/auth/me"
profile_url="http://127.0.0.1:$profile_port/api/profile/me"
code=404
for _ in $(seq 1 100); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$profile_url")"
  [ "$code" = 200 ] && break
  sleep 0.1
done
[ "$code" = 200 ] || { echo "bench-identity: the profile did not appear via auth.user.registered within 10 s (last status $code)" >&2; exit 1; }

report() { # name target goal_ms json_file
  python3 - "$@" <<'PY'
import json, sys
name, target, goal, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
p50, p99 = p["p50"] * 1000, p["p99"] * 1000
verdict = "" if goal <= 0 else f"  (goal p99 < {goal:g} ms: {'met' if p99 < goal else 'MISSED'})"
print(f"{name:<28} {target:<22} achieved {s['requestsPerSec']:>8.1f} req/s  "
      f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms{verdict}  success {s['successRate']*100:.1f}%  status {codes}")
PY
}

run_phase() { # tag url
  "$oha" --no-tui --output-format quiet -q 200 -z 2s -H "Authorization: Bearer $token" "$2" >/dev/null 2>&1 || true
  echo "bench-identity: GET $2 at $rate req/s for ${seconds}s" >&2
  "$oha" --no-tui --output-format json --latency-correction -q "$rate" -z "${seconds}s" \
    -H "Authorization: Bearer $token" "$2" >"/tmp/bench-identity-$1-rate.json"
  echo "bench-identity: GET $2 at saturation (50 connections) for ${sat_seconds}s" >&2
  "$oha" --no-tui --output-format json -c 50 -z "${sat_seconds}s" \
    -H "Authorization: Bearer $token" "$2" >"/tmp/bench-identity-$1-sat.json"
}
run_phase auth "$auth_url"
run_phase profile "$profile_url"

echo "=== identity services (release builds, test stack, $(nproc) cores)"
report "auth GET /api/auth/me" "open loop $rate req/s" 5 /tmp/bench-identity-auth-rate.json
report "auth GET /api/auth/me" "saturation 50 conns" 0 /tmp/bench-identity-auth-sat.json
report "profile GET /api/profile/me" "open loop $rate req/s" 5 /tmp/bench-identity-profile-rate.json
report "profile GET /api/profile/me" "saturation 50 conns" 0 /tmp/bench-identity-profile-sat.json
