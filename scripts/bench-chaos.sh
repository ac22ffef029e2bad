#!/usr/bin/env bash
# The full chaos schedule (issue 17; `make test` runs only `--quick`): `mfe up --ha --replicas 2`
# on ports of its own (44xxx, state in /tmp), `mfe test chaos` with the full holds (20 s calm, 30 s down,
# 40 s paused, 90 s partitioned) at BENCH_CHAOS_RATE operations a second (default 10), its report printed, then
# the stack stopped and removed. Exit 1 when the history checker found a violation.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --workspace --bins
MFE="$PWD/target/debug/mfe"
STATE=/tmp/mfe-bench-chaos
export MFE_ROOT="$PWD" MFE_RUNTIME=native MFE_STATE_DIR=$STATE COMPOSE_PROJECT_NAME=mfebenchchaos
for s in AUTH:44432:auth_db PAYMENTS:44433:payments_db ADMIN:44434:admin_db PROFILE:44435:profile_db LEGACY:44436:mfe_poc2; do
  IFS=: read -r name port db <<<"$s"
  export "${name}_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:$port/$db"
done
export RABBITMQ_URL=amqp://admin:admin@127.0.0.1:44572/%2f RABBITMQ_MANAGEMENT_PORT=44582 RABBITMQ_DIST_PORT=44592
export REDIS_URL=redis://127.0.0.1:44379 NGINX_HTTP_PORT=44080 NGINX_HTTPS_PORT=44443
export SSL_CERT_PATH=$STATE/ssl/self-signed.crt SSL_KEY_PATH=$STATE/ssl/self-signed.key
export GATEWAY_URL=http://127.0.0.1:44000 AUTH_SERVICE_URL=http://127.0.0.1:44001 PAYMENTS_SERVICE_URL=http://127.0.0.1:44002
export ADMIN_SERVICE_URL=http://127.0.0.1:44003 PROFILE_SERVICE_URL=http://127.0.0.1:44004 WS_URL=wss://localhost:44443/ws
unset RABBITMQ_QUEUE_TYPE
cleanup() {
  "$MFE" down >/dev/null 2>&1 || true
  "$MFE" infra clean --yes --runtime native >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
cleanup
echo "bench-chaos: mfe up --ha --replicas 2 on 44xxx..." >&2
"$MFE" up --ha --replicas 2 --runtime native >/dev/null
"$MFE" test chaos --rate "${BENCH_CHAOS_RATE:-10}"
