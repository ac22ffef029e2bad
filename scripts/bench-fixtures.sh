#!/usr/bin/env bash
# Benchmark of `mfe fixtures generate`: 100k users × 10 payments × 3 transactions (4.4 M rows
# in all, the dataset the migration benchmark starts from) into a fresh legacy database, with
# rows/s per table. Peer figure, measured in the same run on the same server: PostgreSQL
# generating 1 M payment rows itself (INSERT ... SELECT generate_series) into a copy of the
# payments table — the ceiling for any client-side loader.
#
# Uses the test stack (test.env) unless BENCH_ENV_FILE names another env file; set MFE_BIN to
# use an already built binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
set -a; source "${BENCH_ENV_FILE:-./test.env}"; set +a
export MFE_ROOT="$PWD"
USERS="${BENCH_USERS:-100000}"
PER_USER="${BENCH_PAYMENTS_PER_USER:-10}"

if [ -z "${MFE_BIN:-}" ]; then
  cargo build --release -p mfe
  MFE_BIN="$PWD/target/release/mfe"
fi
PSQL="$(ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1)"
PSQL="${PSQL:-$(command -v psql || true)}"
[ -n "$PSQL" ] || { echo "bench-fixtures: psql not found — install postgresql-client"; exit 1; }

base="$LEGACY_DATABASE_URL"
server="${base%/*}"
db="mfe_bench_fixtures_$$"
cleanup() { "$PSQL" -q "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
"$PSQL" -q "$server/postgres" -c "CREATE DATABASE $db" >/dev/null
export LEGACY_DATABASE_URL="$server/$db"

echo "bench-fixtures: mfe fixtures generate --users $USERS --payments-per-user $PER_USER --transactions-per-payment 3"
"$MFE_BIN" fixtures generate --users "$USERS" --payments-per-user "$PER_USER" --transactions-per-payment 3 --seed 1 2>&1 \
  | grep -v '/[0-9]* rows$'

echo "bench-fixtures: peer: server-side INSERT ... SELECT generate_series of $((USERS * PER_USER)) payment rows"
"$PSQL" -q "$LEGACY_DATABASE_URL" <<SQL
CREATE TABLE bench_payments (LIKE payments INCLUDING ALL);
\timing on
INSERT INTO bench_payments
SELECT md5(g::text)::uuid::text, md5((g % $USERS)::text)::uuid::text, NULL, (g % 100000) / 100.0, 'USD',
       'completed', 'instant', 'payment ' || g, 'psp_' || g, '{"source": "bench"}', now(), now(), now()
FROM generate_series(1, $((USERS * PER_USER))) g;
SQL
