#!/usr/bin/env bash
# `make demo`: the main job end to end on a fresh machine — the whole stack up, the legacy sample
# data migrated into the per-service databases, then every probe through nginx. Prints one
# summary table and leaves the stack running (`target/debug/mfe down` stops it).
#
#   scripts/demo.sh                      the default stack (.env, SPEC ports, runtime auto)
#   scripts/demo.sh --env-file FILE      another stack: FILE's variables (ports, MFE_STATE_DIR,
#                                        MFE_RUNTIME, COMPOSE_PROJECT_NAME, MFE_*_IMAGE) are
#                                        exported first, e.g. docker/demo-docker.env; stop it with
#                                        `target/debug/mfe --env-file FILE down`
#   scripts/demo.sh --keep-data          keep the previous demo's data. By default the demo starts
#                                        from an empty stack (its state dir or compose volumes are
#                                        removed first): the previous run's sign-ups and payments
#                                        live only in the split databases, so validating the
#                                        legacy → split migration again would rightly fail.
set -uo pipefail
cd "$(dirname "$0")/.."
export MFE_ROOT="$PWD"
# The stack outlives this script: no descriptor it inherited (such as the lock of
# `flock /tmp/bench.lock scripts/demo.sh`) may be passed on to the supervisor and services, or
# the lock would be held until `mfe down`.
for fd in 3 4 5 6 7 8 9; do eval "exec $fd>&-"; done

ENV_FILE=""
KEEP_DATA=0
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) ENV_FILE="${2:?--env-file needs a file}"; shift 2 ;;
    --env-file=*) ENV_FILE="${1#--env-file=}"; shift ;;
    --keep-data) KEEP_DATA=1; shift ;;
    *) echo "demo: unknown argument $1 (usage: scripts/demo.sh [--env-file FILE] [--keep-data])" >&2; exit 2 ;;
  esac
done
if [ -n "$ENV_FILE" ]; then
  [ -f "$ENV_FILE" ] || { echo "demo: env file $ENV_FILE not found" >&2; exit 2; }
  set -a; . "$ENV_FILE"; set +a
  echo "demo: environment from $ENV_FILE (runtime ${MFE_RUNTIME:-auto}, state ${MFE_STATE_DIR:-.mfe})"
fi

echo "demo: building"
cargo build --workspace --quiet || { echo "demo: build failed"; exit 1; }
MFE="$PWD/target/debug/mfe"
if [ "$KEEP_DATA" = 0 ]; then
  echo "demo: starting from an empty stack — the previous demo stack is stopped and its data removed (--keep-data keeps it)"
  "$MFE" down >/dev/null 2>&1 || true
  "$MFE" infra clean --yes || { echo "demo: could not remove the previous stack's data (see above)"; exit 1; }
fi
HTTPS_PORT="${NGINX_HTTPS_PORT:-443}"
BASE="https://localhost:${HTTPS_PORT}"
EMAIL="demo-$(date +%s)@example.com"
PASSWORD="Demo-password-2026"
# The dev CA `mfe up` wrote beside nginx's certificate: the probes trust it, like a browser would
# after `mkcert -install`.
CERT="${SSL_CERT_PATH:-nginx/ssl/self-signed.crt}"
CA="$(dirname "$CERT")/ca.crt"

names=(); results=(); seconds=()
step() {
  local name="$1"; shift
  echo; echo "== demo: $name"
  local t0=$SECONDS
  if "$@"; then results+=("ok"); else results+=("FAIL"); fi
  names+=("$name"); seconds+=("$((SECONDS - t0))")
}

sign_in_through_nginx() {
  curl -s --cacert "$CA" --fail-with-body -X POST "$BASE/api/auth/signup" -H 'content-type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"name\":\"Demo User\"}" >/dev/null || return 1
  local body
  body=$(curl -s --cacert "$CA" --fail-with-body -X POST "$BASE/api/auth/signin" -H 'content-type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}") || { echo "$body"; return 1; }
  TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])' <<<"$body") || return 1
  curl -s --cacert "$CA" --fail-with-body "$BASE/api/auth/me" -H "authorization: Bearer $TOKEN" >/dev/null || return 1
  echo "signed in through nginx as $EMAIL"
}

# Users and sessions of POC-2 keep working after the migration (fixtures/README.md): a sample
# user whose POC-2 password hash is bcrypt signs in (auth rehashes it to argon2id), and the
# sample's live POC-2 refresh token refreshes once. A second tab presenting it within the grace
# window (AUTH_REFRESH_GRACE_SECONDS, default 5) gets the same successor; a use after the window
# is refused as a reuse.
MIGRATED_EMAIL="user06+customer@example.com"
MIGRATED_PASSWORD="Password123!"
MIGRATED_REFRESH_TOKEN="462dfd0e24a602437cc76d4442a7a883fa7bd9b0c16f4a22e8f2029244a30ff2"
# The services read .env too (variables already set win), so the demo looks where they do.
REFRESH_GRACE_SECONDS="${AUTH_REFRESH_GRACE_SECONDS:-$(sed -n 's/^AUTH_REFRESH_GRACE_SECONDS=\([0-9]*\).*/\1/p' .env 2>/dev/null | tail -1)}"
REFRESH_GRACE_SECONDS="${REFRESH_GRACE_SECONDS:-5}"
refresh_migrated_token() {
  curl -s --cacert "$CA" --fail-with-body -X POST "$BASE/api/auth/refresh" -H 'content-type: application/json' \
    -d "{\"refreshToken\":\"$MIGRATED_REFRESH_TOKEN\"}"
}
migrated_user_through_nginx() {
  local body second first_successor code
  body=$(curl -s --cacert "$CA" --fail-with-body -X POST "$BASE/api/auth/signin" -H 'content-type: application/json' \
    -d "{\"email\":\"$MIGRATED_EMAIL\",\"password\":\"$MIGRATED_PASSWORD\"}") \
    || { echo "demo: the migrated bcrypt user $MIGRATED_EMAIL cannot sign in: $body"; return 1; }
  echo "signed in through nginx as $MIGRATED_EMAIL (POC-2 bcrypt hash)"
  body=$(refresh_migrated_token) || { echo "demo: the migrated POC-2 refresh token does not refresh: $body"; return 1; }
  first_successor=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["refreshToken"])' <<<"$body") || return 1
  echo "refreshed the migrated POC-2 refresh token through nginx"
  if [ "$REFRESH_GRACE_SECONDS" -gt 0 ]; then
    second=$(refresh_migrated_token) || { echo "demo: a second tab within the grace window was refused: $second"; return 1; }
    python3 -c 'import json,sys; assert json.load(sys.stdin)["refreshToken"] == sys.argv[1]' "$first_successor" <<<"$second" \
      || { echo "demo: the second tab got another successor than the first"; return 1; }
    echo "a second tab within the grace window got the same successor (one live family)"
  fi
  # One wait, not a poll: nginx allows 10 auth writes a minute.
  sleep "$((REFRESH_GRACE_SECONDS + 1))"
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -X POST "$BASE/api/auth/refresh" \
    -H 'content-type: application/json' -d "{\"refreshToken\":\"$MIGRATED_REFRESH_TOKEN\"}")
  [ "$code" = 401 ] || { echo "demo: a use of the migrated token after the grace window answered $code, not 401"; return 1; }
  echo "its use after the grace window is refused (401, reuse)"
}

# A dead letter, replayed: the profile service loses its database while a user signs up, so its
# consumer retries auth.user.registered (1, 2, 4 s) and dead-letters it; `mfe events dlq list`
# shows it with its consumer and reason. With the database back, `mfe events dlq replay` sends
# it to the profile consumer only (auth, admin and the gateways had it the first time) and the
# user's profile appears.
dead_letter_replayed() {
  local email="dlq-demo-$(date +%s)@example.com" body token user id code
  "$MFE" infra stop profile_db >/dev/null || return 1
  body=$(curl -s --cacert "$CA" --fail-with-body -X POST "$BASE/api/auth/signup" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"$PASSWORD\",\"name\":\"Dead Letter\"}") \
    || { echo "demo: sign-up failed: $body"; "$MFE" infra start profile_db >/dev/null; return 1; }
  token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])' <<<"$body") || return 1
  user=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["user"]["id"])' <<<"$body") || return 1
  echo "signed up $email while profile_db is down; waiting for the profile consumer to give up..."
  for _ in $(seq 1 90); do
    id=$("$MFE" --json events dlq list --consumer profile --type auth.user.registered 2>/dev/null | python3 -c '
import json, sys
user = sys.argv[1]
print(next((d["id"] for d in json.load(sys.stdin)["deadLetters"] if d["envelope"]["data"].get("userId") == user), ""))' "$user")
    [ -n "$id" ] && break
    sleep 1
  done
  [ -n "$id" ] || { echo "demo: no dead letter of the profile consumer for $user after 90 s"; "$MFE" infra start profile_db >/dev/null; return 1; }
  "$MFE" events dlq list --consumer profile
  "$MFE" infra start profile_db >/dev/null || return 1
  "$MFE" events dlq replay --id "$id" || return 1
  for _ in $(seq 1 60); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "$BASE/api/profile/me" -H "authorization: Bearer $token")
    [ "$code" = 200 ] && break
    sleep 0.5
  done
  [ "$code" = 200 ] || { echo "demo: GET /api/profile/me answered $code after the replay, not 200"; return 1; }
  echo "the replayed event created the profile of $email (GET /api/profile/me → 200)"
  "$MFE" events dlq list --consumer profile
}

# An announcement reaching sockets: an admin's POST /api/admin/announcements arrives on every
# connected socket (the broadcast room) as notification:new, through nginx.
announcement_to_sockets() {
  "$MFE" ws probe --user-id "demo-admin-$(date +%s)" --role ADMIN --trigger announcement --connections 3 --duration 1 \
    --ca "$CA" --url "wss://localhost:${HTTPS_PORT}/ws"
}

step "mfe up (infra, certificates, schemas, services, gateway)" "$MFE" up
step "load the sample legacy (POC-2) data" "$MFE" fixtures load --dataset sample
step "mfe migrate run (backup, migrate, export, import, validate)" "$MFE" migrate run
step "migrated POC-2 users: bcrypt sign-in, refresh token (nginx)" migrated_user_through_nginx
step "sign up, sign in and /me through nginx" sign_in_through_nginx
step "mfe test event-hub" "$MFE" test event-hub
# After the event hub (about a minute): nginx's auth zone (10/min, burst 5) has refilled from the
# sign-ins and refreshes above, so test proxy's sign-in through nginx is not rate-limited.
step "mfe test proxy (gateway and nginx)" "$MFE" test proxy --ca "$CA"
step "mfe ws probe --trigger payment (through nginx)" "$MFE" ws probe --email "$EMAIL" --password "$PASSWORD" --trigger payment --ca "$CA" --url "wss://localhost:${HTTPS_PORT}/ws"
step "dead letter: listed, replayed to its consumer only (mfe events dlq)" dead_letter_replayed
step "announcement → notification:new on every socket (nginx)" announcement_to_sockets

echo
printf '%-62s %-6s %s\n' "demo step" "result" "seconds"
printf '%-62s %-6s %s\n' "---------" "------" "-------"
failed=0
for i in "${!names[@]}"; do
  printf '%-62s %-6s %s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
  [ "${results[$i]}" = ok ] || failed=1
done
echo
"$MFE" status || failed=1
echo
if [ -n "$ENV_FILE" ]; then
  echo "demo: the stack is still running — stop it with \`target/debug/mfe --env-file $ENV_FILE down\`"
else
  echo "demo: the stack is still running — stop it with \`target/debug/mfe down\`"
fi
exit $failed
