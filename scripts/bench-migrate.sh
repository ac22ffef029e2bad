#!/usr/bin/env bash
# Migration benchmark (part of `make bench`, not of `make test`): the same generated legacy
# dataset moved into empty split schemas by each method below, every method into fresh
# databases of its own, all in the same run:
#   (a) pg_dump --data-only --disable-triggers | psql       what a user types first
#   (b) psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN (FORMAT binary), table by table,
#       into the split tables with their keys, indexes and foreign keys dropped first and rebuilt
#       after — the fair floor of a hand-written script
#   (c) pgcopydb copy table-data (--table-jobs 2), into the same dropped-then-rebuilt tables:
#       pgcopydb's data step, then the indexes (`pgcopydb copy indexes` would build the legacy
#       database's index set, not the split schemas' own, and `copy constraints` would add the
#       cross-service foreign keys the split databases do not have — so the rebuild is (b)'s)
#   (d) mfe migrate export + mfe migrate import (then mfe migrate validate, timed on its own)
#   (e) mfe migrate run (backup, schemas, export, import, validate)
#   (f) mfe migrate run --online while a writer commits BENCH_WRITE_RATE payments/s on the legacy
#       database (only when `mfe migrate run --help` lists --online)
# and beside them the machine's floor: one plain binary COPY of the payments table into an
# unindexed copy of it. Services run side by side in every method (one pipeline per split
# database).
#
# Rounds: every method runs BENCH_ROUNDS times (default 3), the methods interleaved, so a burst
# of other load on this small shared machine hits one round of each rather than all of one
# method; the table shows each method's median round and lists every round. Then one verdict
# line per goal: (d) >= 1.5x (b) rows/s, (e) >= 0.8x (b), (f) write pause <= 1 % of (e)'s wall
# time, validate cheaper than export + import, peak RSS of mfe < 100 MB (/usr/bin/time -v).
#
# Uses the test stack's servers (test.env: 25432-25436) with fresh database names, dropped at
# the end. Sizes: BENCH_USERS (default 100000) x BENCH_PAYMENTS_PER_USER (10) payments, 3
# transactions each -> 1 M payments + 3 M payment_transactions by default.
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; source ./test.env; set +a
export MFE_ROOT="$PWD"

USERS=${BENCH_USERS:-100000}
PER_USER=${BENCH_PAYMENTS_PER_USER:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WRITE_RATE=${BENCH_WRITE_RATE:-20}
if [ -n "${BENCH_MFE:-}" ]; then
  MFE="$BENCH_MFE"   # a prebuilt binary (for trying the script quickly)
else
  cargo build --release -p mfe >&2
  MFE="$PWD/target/release/mfe"
fi
command -v /usr/bin/time >/dev/null || { echo "bench-migrate: /usr/bin/time missing — apt-get install time" >&2; exit 1; }
command -v pgcopydb >/dev/null || echo "bench-migrate: pgcopydb missing (scripts/install-deps.sh installs it): (c) will fail" >&2

# Disk: the legacy copy, one method's split databases, the export files and the servers' WAL
# live at once — about 6 KB per payment (1.3 GB of legacy database per 1 M payments). A full
# disk makes the shared test servers PANIC, so refuse to start without that room.
need_kb=$((USERS * PER_USER * 6))
for dir in "${TMPDIR:-/tmp}" /tmp/mfe-test-state; do
  [ -d "$dir" ] || continue
  free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt "$need_kb" ]; then
    echo "bench-migrate: $((free_kb / 1024)) MB free under $dir, the run needs about $((need_kb / 1024)) MB — free some space or lower BENCH_USERS" >&2
    exit 1
  fi
done

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
METHODS=${BENCH_METHODS:-floor a b c d e f}  # BENCH_METHODS="d f" runs a subset
HAS_ONLINE=0
if "$MFE" migrate run --help 2>/dev/null | grep -q -- '--online'; then HAS_ONLINE=1; fi

url() { # url SERVICE DBNAME
  echo "postgres://postgres:postgres@127.0.0.1:${PORT[$1]}/$2"
}
admin_sql() { # admin_sql SERVICE SQL (no NOTICEs from DROP ... IF EXISTS)
  PGOPTIONS="-c client_min_messages=warning" psql -qAtX "$(url "$1" postgres)" -c "$2"
}
# Environment for mfe pointing at the legacy bench database and the split databases of METHOD.
mfe_env() { # mfe_env METHOD → VAR=url ...
  echo "LEGACY_DATABASE_URL=$(url legacy "$NAME")"
  for s in $SPLIT; do echo "${VAR[$s]}=$(url "$s" "${NAME}_$1")"; done
}
drop_targets() { # drop_targets METHOD
  for s in $SPLIT; do admin_sql "$s" "DROP DATABASE IF EXISTS \"${NAME}_$1\" WITH (FORCE)" >/dev/null; done
}
# Fresh, empty split databases for METHOD, with their schemas (except for (e) and (f), which
# migrate their own schemas as part of `migrate run`).
fresh_targets() { # fresh_targets METHOD
  drop_targets "$1"
  for s in $SPLIT; do admin_sql "$s" "CREATE DATABASE \"${NAME}_$1\""; done
  case "$1" in e|f) ;; *) env $(mfe_env "$1") "$MFE" db migrate >/dev/null ;; esac
}

cleanup() {
  set +e
  [ -n "${WRITER_PID:-}" ] && kill "$WRITER_PID" 2>/dev/null
  admin_sql legacy "DROP DATABASE IF EXISTS \"$NAME\" WITH (FORCE)" >/dev/null 2>&1
  for m in $METHODS; do drop_targets "$m" >/dev/null 2>&1; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "bench-migrate: creating databases ($NAME*)" >&2
admin_sql legacy "CREATE DATABASE \"$NAME\""
env $(mfe_env a) "$MFE" db migrate --service legacy >/dev/null

echo "bench-migrate: generating $USERS users × $PER_USER payments (3 transactions each)" >&2
env $(mfe_env a) "$MFE" fixtures generate --users "$USERS" --payments-per-user "$PER_USER" >&2
psql -qX "$(url legacy "$NAME")" -c "VACUUM ANALYZE" >/dev/null
ROWS=0
for s in $SPLIT; do for t in ${TABLES[$s]}; do
  n=$(psql -qAtX "$(url legacy "$NAME")" -c "SELECT count(*) FROM \"$t\"")
  echo "  $t: $n rows" >&2
  ROWS=$((ROWS + n))
done; done
PAYMENT_ROWS=$(psql -qAtX "$(url legacy "$NAME")" -c "SELECT count(*) FROM payments")
echo "bench-migrate: $ROWS rows in total, legacy database $(psql -qAtX "$(url legacy "$NAME")" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")" >&2

now() { date +%s.%N; }

# The tables of SERVICE as an SQL array literal.
table_array() { # table_array SERVICE
  local list=""
  for t in ${TABLES[$1]}; do list="$list${list:+,}'$t'"; done
  echo "ARRAY[$list]::text[]"
}
# Writes to FILE the statements that rebuild the keys, indexes and foreign keys of SERVICE's
# tables in DB (indexes, then primary/unique keys, then foreign keys — those of other tables
# pointing at them too), then drops all of them, foreign keys first.
drop_keys() { # drop_keys SERVICE DB FILE
  local u tabs
  u=$(url "$1" "$2"); tabs=$(table_array "$1")
  psql -qAtX "$u" >"$3" <<SQL
SELECT 'SET maintenance_work_mem = ''256MB'';';
SELECT pg_get_indexdef(i.indexrelid) || ';' FROM pg_index i
 WHERE i.indrelid::regclass::text = ANY($tabs)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid);
SELECT 'ALTER TABLE ' || conrelid::regclass || ' ADD CONSTRAINT ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid) || ';'
  FROM pg_constraint WHERE contype IN ('p', 'u') AND conrelid::regclass::text = ANY($tabs);
SELECT 'ALTER TABLE ' || conrelid::regclass || ' ADD CONSTRAINT ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid) || ';'
  FROM pg_constraint WHERE contype = 'f' AND (conrelid::regclass::text = ANY($tabs) OR confrelid::regclass::text = ANY($tabs));
SQL
  psql -qAtX "$u" <<SQL | psql -qX -v ON_ERROR_STOP=1 "$u" >/dev/null
SELECT 'ALTER TABLE ' || conrelid::regclass || ' DROP CONSTRAINT ' || quote_ident(conname) || ';'
  FROM pg_constraint WHERE contype = 'f' AND (conrelid::regclass::text = ANY($tabs) OR confrelid::regclass::text = ANY($tabs));
SELECT 'ALTER TABLE ' || conrelid::regclass || ' DROP CONSTRAINT ' || quote_ident(conname) || ';'
  FROM pg_constraint WHERE contype IN ('p', 'u') AND conrelid::regclass::text = ANY($tabs);
SELECT 'DROP INDEX ' || i.indexrelid::regclass || ';' FROM pg_index i
 WHERE i.indrelid::regclass::text = ANY($tabs)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid);
SQL
}
rebuild_keys() { # rebuild_keys SERVICE DB FILE
  psql -qX -v ON_ERROR_STOP=1 "$(url "$1" "$2")" -f "$3" >/dev/null
}

# The floor: the payments table alone, one binary COPY into an unindexed copy of it.
method_floor() {
  local u; u=$(url payments "${NAME}_floor")
  psql -qX "$u" -c 'CREATE TABLE payments_floor (LIKE payments)' >/dev/null
  psql -qX "$(url legacy "$NAME")" -c "COPY payments (${COLS[payments]}) TO STDOUT (FORMAT binary)" \
    | psql -qX -v ON_ERROR_STOP=1 "$u" -c "COPY payments_floor (${COLS[payments]}) FROM STDIN (FORMAT binary)" >/dev/null
}

# (a) pg_dump --data-only --disable-triggers | psql, one pipeline per service.
method_a() {
  local failed=0
  for s in $SPLIT; do
    (
      args=()
      for t in ${TABLES[$s]}; do args+=(-t "public.\"$t\""); done
      pg_dump --data-only --disable-triggers --no-owner "${args[@]}" "$(url legacy "$NAME")" \
        | psql -qX -v ON_ERROR_STOP=1 "$(url "$s" "${NAME}_a")" >/dev/null
    ) &
  done
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

# (b) keys dropped, binary COPY out piped into binary COPY in table by table, keys rebuilt; one
# pipeline per service.
method_b() {
  local failed=0
  for s in $SPLIT; do
    (
      set -e
      drop_keys "$s" "${NAME}_b" "$WORK/rebuild-b-$s.sql"
      for t in ${TABLES[$s]}; do
        psql -qX "$(url legacy "$NAME")" -c "COPY \"$t\" (${COLS[$t]}) TO STDOUT (FORMAT binary)" \
          | psql -qX -v ON_ERROR_STOP=1 "$(url "$s" "${NAME}_b")" -c "COPY \"$t\" (${COLS[$t]}) FROM STDIN (FORMAT binary)" >/dev/null
      done
      rebuild_keys "$s" "${NAME}_b" "$WORK/rebuild-b-$s.sql"
    ) &
  done
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

# (c) keys dropped, pgcopydb copy table-data with a filter naming the service's tables, keys
# rebuilt; one per service.
method_c() {
  local failed=0
  for s in $SPLIT; do
    (
      set -e
      filter="$WORK/pgcopydb-$s.ini"
      { echo "[include-only-table]"; for t in ${TABLES[$s]}; do echo "public.$t"; done; } >"$filter"
      rm -rf "$WORK/pgcopydb-$s"
      drop_keys "$s" "${NAME}_c" "$WORK/rebuild-c-$s.sql"
      pgcopydb copy table-data --source "$(url legacy "$NAME")" --target "$(url "$s" "${NAME}_c")" \
        --dir "$WORK/pgcopydb-$s" --filters "$filter" --table-jobs 2 >"$WORK/pgcopydb-$s.log" 2>&1
      rebuild_keys "$s" "${NAME}_c" "$WORK/rebuild-c-$s.sql"
    ) &
  done
  for job in $(jobs -p); do wait "$job" || failed=1; done
  return $failed
}

# (d) our export + import; validate is timed apart (it is not part of the copy).
method_d() {
  rm -rf "$WORK/export-d"
  env $(mfe_env d) /usr/bin/time -v -o "$WORK/time-export-$ROUND.txt" "$MFE" migrate export --out "$WORK/export-d" >/dev/null 2>"$WORK/d-export-$ROUND.log" \
    && env $(mfe_env d) /usr/bin/time -v -o "$WORK/time-import-$ROUND.txt" "$MFE" migrate import --in "$WORK/export-d" >/dev/null 2>"$WORK/d-import-$ROUND.log"
}
after_d() {
  local t0 ok=ok
  t0=$(now)
  env $(mfe_env d) "$MFE" --json migrate validate >"$WORK/validate-$ROUND.json" 2>"$WORK/d-validate-$ROUND.log" || ok=failed
  echo "validate $ROUND $(echo "$(now) - $t0" | bc -l) $ok" >>"$WORK/results.txt"
  rm -rf "$WORK/export-d"
}

# (e) our whole run, validation included.
method_e() {
  rm -rf "$WORK/export-e"
  env $(mfe_env e) /usr/bin/time -v -o "$WORK/time-run-$ROUND.txt" "$MFE" --json migrate run --out "$WORK/export-e" >"$WORK/run-$ROUND.json" 2>"$WORK/e-run-$ROUND.log"
}
after_e() { rm -rf "$WORK/export-e"; }

# (f) the online run while a writer commits WRITE_RATE payments/s on the legacy database (at
# most 20 minutes of it).
method_f() {
  if [ "$HAS_ONLINE" != 1 ]; then return 0; fi
  rm -rf "$WORK/export-f"
  local n=$((WRITE_RATE * 1200)) pause
  pause=$(echo "1 / $WRITE_RATE" | bc -l)
  (
    for i in $(seq 1 "$n"); do
      echo "INSERT INTO payments (id, sender_id, amount, currency, status, type, created_at, updated_at) SELECT 'bench-w-$ROUND-$i', id, 1, 'USD', 'pending', 'instant', now(), now() FROM users ORDER BY id LIMIT 1;"
      sleep "$pause"
    done
  ) | psql -qX "$(url legacy "$NAME")" >/dev/null 2>"$WORK/f-writer-$ROUND.log" &
  WRITER_PID=$!
  local ok=0
  env $(mfe_env f) /usr/bin/time -v -o "$WORK/time-online-$ROUND.txt" "$MFE" --json migrate run --online --out "$WORK/export-f" >"$WORK/online-$ROUND.json" 2>"$WORK/f-run-$ROUND.log" || ok=1
  kill "$WRITER_PID" 2>/dev/null || true
  wait "$WRITER_PID" 2>/dev/null || true
  WRITER_PID=
  return $ok
}
after_f() {
  rm -rf "$WORK/export-f"
  # A cutover leaves the reverse path (slots on the split servers) and POC-2 blocked; a
  # switch-back removes both, so the split databases can be dropped and the next round's legacy
  # database takes writes again.
  env $(mfe_env f) "$MFE" migrate switch-back --yes >/dev/null 2>"$WORK/f-switch-back-$ROUND.txt" || true
  psql -qX "$(url legacy "$NAME")" -c "DELETE FROM payments WHERE id LIKE 'bench-w-%'" >/dev/null 2>&1 || true
}

: >"$WORK/results.txt"
for ROUND in $(seq 1 "$ROUNDS"); do
  for m in $METHODS; do
    if [ "$m" = f ] && [ "$HAS_ONLINE" != 1 ]; then continue; fi
    echo "bench-migrate: round $ROUND of $ROUNDS: ($m)" >&2
    if [ "$m" = floor ]; then
      admin_sql payments "DROP DATABASE IF EXISTS \"${NAME}_floor\" WITH (FORCE)"
      admin_sql payments "CREATE DATABASE \"${NAME}_floor\""
      env "PAYMENTS_DATABASE_URL=$(url payments "${NAME}_floor")" "$MFE" db migrate --service payments >/dev/null
    else
      fresh_targets "$m"
    fi
    t0=$(now)
    if "method_$m"; then status=ok; else
      status=failed
      # Say why, before the work directory goes: the last lines the failed method wrote.
      for log in "$WORK/$m"-*-"$ROUND".log; do
        [ -s "$log" ] && { echo "bench-migrate: ($m) failed; the end of $(basename "$log"):" >&2; tail -n 5 "$log" >&2; }
      done
    fi
    echo "$m $ROUND $(echo "$(now) - $t0" | bc -l) $status" >>"$WORK/results.txt"
    echo "bench-migrate: $(tail -n1 "$WORK/results.txt")" >&2
    if declare -F "after_$m" >/dev/null; then "after_$m"; fi
    if [ "$m" = floor ]; then admin_sql payments "DROP DATABASE IF EXISTS \"${NAME}_floor\" WITH (FORCE)" >/dev/null; else drop_targets "$m"; fi
  done
done

echo
echo "migration benchmark: $ROWS rows (users $USERS, payments $((USERS * PER_USER)), transactions $((USERS * PER_USER * 3))), $ROUNDS rounds"
for r in $(seq 1 "$ROUNDS"); do
  [ -f "$WORK/d-export-$r.log" ] && echo "  round $r (d): $(grep -h -m1 '^export:' "$WORK/d-export-$r.log" || true) | $(grep -h -m1 '^import:' "$WORK/d-import-$r.log" || true)"
  [ -f "$WORK/e-run-$r.log" ] && grep -hE '^(backup|schemas|export|import|validate|migrate run):' "$WORK/e-run-$r.log" | sed "s/^/  round $r (e) /"
done
if grep -q '^c .* failed$' "$WORK/results.txt"; then
  echo "  (c) pgcopydb: $(grep -h -m1 -E 'ERROR|FATAL' "$WORK"/pgcopydb-*.log | head -1)"
fi
python3 - "$WORK" "$ROWS" "$PAYMENT_ROWS" "$HAS_ONLINE" <<'PY'
import glob, json, os, re, sys
work, rows, payment_rows, has_online = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def max_rss_mb(kind):
    """The largest peak RSS over the rounds, from /usr/bin/time -v."""
    best = 0.0
    for path in glob.glob(os.path.join(work, f"time-{kind}-*.txt")):
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
        if m:
            best = max(best, int(m.group(1)) / 1024)
    return best
rss = {k: max_rss_mb(k) for k in ["export", "import", "run", "online"]}
results = {}
for line in open(os.path.join(work, "results.txt")):
    m, rnd, secs, status = line.split()
    results.setdefault(m, []).append((int(rnd), float(secs), status))
labels = {
    "floor": "floor: plain COPY of payments, unindexed",
    "a": "(a) pg_dump --data-only | psql",
    "b": "(b) binary COPY | COPY, keys rebuilt",
    "c": "(c) pgcopydb table-data, keys rebuilt",
    "d": "(d) mfe migrate export + import",
    "validate": "    mfe migrate validate after (d)",
    "e": "(e) mfe migrate run (with validation)",
    "f": "(f) mfe migrate run --online + writer",
}
def median(m):
    rs = sorted(results.get(m, []), key=lambda r: r[1])
    return rs[len(rs) // 2] if rs else None
n_rows = lambda m: payment_rows if m == "floor" else rows
print(f"{'method':<42} {'seconds':>8} {'rows/s':>10} {'status':>7}  rounds in run order (seconds)")
for m in ["floor", "a", "b", "c", "d", "validate", "e", "f"]:
    med = median(m)
    if med is None:
        if m == "f" and not has_online:
            print(f"{labels[m]:<42} skipped: mfe migrate run --online not available")
        continue
    statuses = {r[2] for r in results[m]}
    status = "ok" if statuses == {"ok"} else "FAILED" if "ok" not in statuses else "partly"
    rounds = ", ".join(f"{r[1]:.2f}{'' if r[2] == 'ok' else ' (failed)'}" for r in sorted(results[m]))
    print(f"{labels[m]:<42} {med[1]:>8.2f} {n_rows(m) / med[1]:>10.0f} {status:>7}  {rounds}")
print(f"peak RSS of mfe (max over rounds): export {rss['export']:.1f} MB, import {rss['import']:.1f} MB, run {rss['run']:.1f} MB"
      + (f", run --online {rss['online']:.1f} MB" if has_online else ""))
for path in sorted(glob.glob(os.path.join(work, "run-*.json"))):
    r = json.load(open(path))
    print(f"validation inside (e) round {path.rsplit('-', 1)[1].split('.')[0]}: {'passed' if r.get('passed') else 'FAILED'}")
for path in sorted(glob.glob(os.path.join(work, "validate-*.json"))):
    try:
        r = json.load(open(path))
        print(f"validate after (d) round {path.rsplit('-', 1)[1].split('.')[0]}: {'passed' if r.get('passed') else 'FAILED'}")
    except ValueError:
        print(f"validate after (d): no report in {path}")

def pause_seconds(report):
    """The write pause an online run reports: the first metric whose name says pause."""
    found = []
    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if "pause" in k and isinstance(x, (int, float)):
                    found.append(x / 1000 if k.endswith("_ms") else x)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(report)
    return found[0] if found else None

goals = []
b, d, e, v = median("b"), median("d"), median("e"), median("validate")
if b and d: goals.append(("(d) export + import >= 1.5x (b) rows/s", b[1] / d[1], 1.5, ">=", "x"))
if b and e: goals.append(("(e) migrate run >= 0.8x (b) rows/s", b[1] / e[1], 0.8, ">=", "x"))
if d and v: goals.append(("validate cheaper than export + import (ratio of seconds)", v[1] / d[1], 1.0, "<", ""))
if has_online:
    f = median("f")
    pauses = []
    for path in glob.glob(os.path.join(work, "online-*.json")):
        try:
            p = pause_seconds(json.load(open(path)))
        except ValueError:
            p = None
        if p is not None:
            pauses.append(p)
            m = json.load(open(path)).get("metrics", {})
            print(f"(f) {os.path.basename(path)}: write pause {p:.3f} s, rows rechecked in the block "
                  f"{m.get('rechecked_rows', '?')}, row changes synced {m.get('rows_synced', '?')}")
    if pauses and e:
        pauses.sort()
        goals.append(("(f) write pause <= 1 % of (e)'s wall time", pauses[len(pauses) // 2] / e[1] * 100, 1.0, "<=", " %"))
    else:
        print("(f) goal not judged: no write pause found in the online run's report")
goals.append(("peak RSS of mfe < 100 MB", max(rss.values()), 100, "<", " MB"))
print()
for name, x, lim, op, unit in goals:
    ok = {">=": x >= lim, "<=": x <= lim, "<": x < lim}[op]
    print(f"{'met ' if ok else 'MISS'}  {name}: {x:.2f}{unit}")
PY
