#!/usr/bin/env bash
# Migration benchmark (not part of `make test`): the same generated legacy dataset moved into
# empty split schemas five ways, each timed in the same run, each into its own fresh databases:
#   (a) pg_dump --data-only | psql              (text COPY through pg_dump)
#   (b) psql COPY TO STDOUT binary | psql COPY FROM STDIN binary, table by table
#   (c) pgcopydb copy table-data                (where it applies)
#   (d) mfe migrate export + mfe migrate import
#   (e) mfe migrate run (backup, schemas, export, import, validate)
# Services run side by side in every method (one pipeline per split database).
# Prints rows/s for each, the goal ratios, and mfe's peak RSS (/usr/bin/time -v).
#
# Uses the test stack's servers (test.env) with fresh database names, dropped at the end.
# Sizes: BENCH_USERS (default 100000) × BENCH_PAYMENTS_PER_USER (10) payments, 3 transactions
# each → 1 M payments + 3 M payment_transactions by default.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; source ./test.env; set +a
export MFE_ROOT="$PWD"

USERS=${BENCH_USERS:-100000}
PER_USER=${BENCH_PAYMENTS_PER_USER:-10}
if [ -n "${BENCH_MFE:-}" ]; then
  MFE="$BENCH_MFE"   # a prebuilt binary (for trying the script quickly)
else
  cargo build --release -p mfe >&2
  MFE="$PWD/target/release/mfe"
fi
command -v /usr/bin/time >/dev/null || { echo "bench-migrate: /usr/bin/time missing — apt-get install time" >&2; exit 1; }

NAME="mfe_bench_$(date +%s)_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-migrate-work.XXXXXX")
declare -A PORT=([legacy]=25436 [auth]=25432 [payments]=25433 [admin]=25434 [profile]=25435)
declare -A VAR=([legacy]=LEGACY_DATABASE_URL [auth]=AUTH_DATABASE_URL [payments]=PAYMENTS_DATABASE_URL [admin]=ADMIN_DATABASE_URL [profile]=PROFILE_DATABASE_URL)
declare -A TABLES=([auth]="users refresh_tokens" [payments]="payments payment_transactions" [admin]="audit_logs system_config" [profile]="user_profiles")
declare -A COLS=(
  [users]='id, email, password_hash, name, role, email_verified, created_at, updated_at'
  [refresh_tokens]='id, user_id, token, expires_at, created_at'
  [payments]='id, sender_id, recipient_id, amount, currency, status, type, description, psp_transaction_id, metadata, created_at, updated_at, completed_at'
  [payment_transactions]='id, payment_id, status, status_message, psp_transaction_id, metadata, created_at'
  [audit_logs]='id, user_id, action, resource_type, resource_id, details, ip_address, user_agent, created_at'
  [system_config]='id, key, value, description, updated_at, updated_by'
  [user_profiles]='id, user_id, avatar_url, phone, address, bio, preferences, created_at, updated_at'
)
SPLIT="auth payments admin profile"
METHODS="a b c d e"

url() { # url SERVICE DBNAME
  echo "postgres://postgres:postgres@127.0.0.1:${PORT[$1]}/$2"
}
admin_sql() { # admin_sql SERVICE SQL
  psql -qAtX "$(url "$1" postgres)" -c "$2"
}
# Environment for mfe pointing at the legacy bench database and the split databases of METHOD.
mfe_env() { # mfe_env METHOD → VAR=url ...
  echo "LEGACY_DATABASE_URL=$(url legacy "$NAME")"
  for s in $SPLIT; do echo "${VAR[$s]}=$(url "$s" "${NAME}_$1")"; done
}

cleanup() {
  set +e
  admin_sql legacy "DROP DATABASE IF EXISTS \"$NAME\" WITH (FORCE)" >/dev/null 2>&1
  for s in $SPLIT; do
    for m in $METHODS; do admin_sql "$s" "DROP DATABASE IF EXISTS \"${NAME}_$m\" WITH (FORCE)" >/dev/null 2>&1; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "bench-migrate: creating databases ($NAME*)" >&2
admin_sql legacy "CREATE DATABASE \"$NAME\""
env $(mfe_env a) "$MFE" db migrate --service legacy >/dev/null
for m in $METHODS; do
  for s in $SPLIT; do admin_sql "$s" "CREATE DATABASE \"${NAME}_$m\""; done
  # (e) migrates its own schemas as part of `migrate run`.
  if [ "$m" != e ]; then env $(mfe_env "$m") "$MFE" db migrate >/dev/null; fi
done

echo "bench-migrate: generating $USERS users × $PER_USER payments (3 transactions each)" >&2
env $(mfe_env a) "$MFE" fixtures generate --users "$USERS" --payments-per-user "$PER_USER" >&2
psql -qX "$(url legacy "$NAME")" -c "VACUUM ANALYZE" >/dev/null
ROWS=0
for s in $SPLIT; do for t in ${TABLES[$s]}; do
  n=$(psql -qAtX "$(url legacy "$NAME")" -c "SELECT count(*) FROM \"$t\"")
  echo "  $t: $n rows" >&2
  ROWS=$((ROWS + n))
done; done
echo "bench-migrate: $ROWS rows in total" >&2

now() { date +%s.%N; }
declare -A SECS

# (a) pg_dump --data-only | psql, one pipeline per service.
method_a() {
  for s in $SPLIT; do
    (
      args=()
      for t in ${TABLES[$s]}; do args+=(-t "public.\"$t\""); done
      pg_dump --data-only --no-owner "${args[@]}" "$(url legacy "$NAME")" \
        | psql -qX -v ON_ERROR_STOP=1 "$(url "$s" "${NAME}_a")" >/dev/null
    ) &
  done
  wait
}

# (b) binary COPY out piped into binary COPY in through psql, table by table per service.
method_b() {
  for s in $SPLIT; do
    (
      for t in ${TABLES[$s]}; do
        psql -qX "$(url legacy "$NAME")" -c "COPY \"$t\" (${COLS[$t]}) TO STDOUT (FORMAT binary)" \
          | psql -qX -v ON_ERROR_STOP=1 "$(url "$s" "${NAME}_b")" -c "COPY \"$t\" (${COLS[$t]}) FROM STDIN (FORMAT binary)" >/dev/null
      done
    ) &
  done
  wait
}

# (c) pgcopydb copy table-data, one per service with a filter naming its tables.
method_c() {
  local failed=0
  for s in $SPLIT; do
    (
      filter="$WORK/pgcopydb-$s.ini"
      { echo "[include-only-table]"; for t in ${TABLES[$s]}; do echo "public.$t"; done; } >"$filter"
      pgcopydb copy table-data --source "$(url legacy "$NAME")" --target "$(url "$s" "${NAME}_c")" \
        --dir "$WORK/pgcopydb-$s" --filters "$filter" --table-jobs 2 >"$WORK/pgcopydb-$s.log" 2>&1
    ) &
  done
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

# (d) our export + import.
method_d() {
  env $(mfe_env d) /usr/bin/time -v -o "$WORK/time-export.txt" "$MFE" migrate export --out "$WORK/export-d" >/dev/null 2>"$WORK/d-export.log"
  env $(mfe_env d) /usr/bin/time -v -o "$WORK/time-import.txt" "$MFE" migrate import --in "$WORK/export-d" >/dev/null 2>"$WORK/d-import.log"
}

# (e) our whole run, validation included.
method_e() {
  env $(mfe_env e) /usr/bin/time -v -o "$WORK/time-run.txt" "$MFE" --json migrate run --out "$WORK/export-e" >"$WORK/run.json" 2>"$WORK/e-run.log"
}

declare -A STATUS
for m in $METHODS; do
  echo "bench-migrate: ($m) running" >&2
  t0=$(now)
  if "method_$m"; then STATUS[$m]=ok; else STATUS[$m]=failed; fi
  SECS[$m]=$(echo "$(now) - $t0" | bc -l)
done

rate() { echo "$ROWS / ${SECS[$1]}" | bc -l; }
rss_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$1"; }

echo
echo "migration benchmark: $ROWS rows (users $USERS, payments $((USERS * PER_USER)), transactions $((USERS * PER_USER * 3)))"
printf '%-44s %10s %14s %s\n' method seconds rows/s status
label_a="(a) pg_dump --data-only | psql"
label_b="(b) psql binary COPY | psql COPY"
label_c="(c) pgcopydb copy table-data"
label_d="(d) mfe migrate export + import"
label_e="(e) mfe migrate run (with validation)"
for m in $METHODS; do
  label="label_$m"
  printf '%-44s %10.2f %14.0f %s\n' "${!label}" "${SECS[$m]:-0}" "$(rate "$m")" "${STATUS[$m]:-not run}"
done
if [ "${STATUS[c]}" != ok ]; then
  echo "  (c) pgcopydb: $(grep -h -m1 -E 'ERROR|FATAL' "$WORK"/pgcopydb-*.log | head -1)"
fi
echo "  (d) export: $(tail -n 20 "$WORK/d-export.log" | grep -m1 '^export:')"
echo "  (d) import: $(tail -n 20 "$WORK/d-import.log" | grep -m1 '^import:')"
grep -E '^(backup|schemas|export|import|validate|migrate run):' "$WORK/e-run.log" | sed 's/^/  (e) /'
echo "goal (d) >= 1.0 x (b): $(printf '%.2f' "$(echo "${SECS[b]} / ${SECS[d]}" | bc -l)") x"
echo "goal (e) >= 0.8 x (a): $(printf '%.2f' "$(echo "${SECS[a]} / ${SECS[e]}" | bc -l)") x"
echo "peak RSS of mfe: export $(rss_mb "$WORK/time-export.txt") MB, import $(rss_mb "$WORK/time-import.txt") MB, run $(rss_mb "$WORK/time-run.txt") MB (goal < 100 MB)"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('validation in run:', 'passed' if r['passed'] else 'FAILED')" "$WORK/run.json"
