#!/usr/bin/env bash
# Infrastructure start-up figures: the docker runtime (local images) beside its peer, the native
# runtime, each on a project/state dir and ports of its own (21xxx docker, 22xxx native; below the ephemeral range), cleaned
# afterwards. Prints seconds for: cold start (nothing exists), stop, warm start, restart rabbitmq.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-docker.sh --prepare
mfe=target/debug/mfe

stack_env() { # $1 = runtime, $2 = port prefix (21 or 22)
    local p=$2 state=/tmp/mfe-bench-$1
    cat <<VARS
MFE_RUNTIME=$1
MFE_STATE_DIR=$state
COMPOSE_PROJECT_NAME=mfebench$1
AUTH_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${p}432/auth_db
PAYMENTS_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${p}433/payments_db
ADMIN_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${p}434/admin_db
PROFILE_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${p}435/profile_db
LEGACY_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${p}436/mfe_poc2
RABBITMQ_URL=amqp://admin:admin@127.0.0.1:${p}672/%2f
RABBITMQ_MANAGEMENT_PORT=${p}673
REDIS_URL=redis://127.0.0.1:${p}379
NGINX_HTTP_PORT=${p}080
NGINX_HTTPS_PORT=${p}443
SSL_CERT_PATH=$state/ssl/self-signed.crt
SSL_KEY_PATH=$state/ssl/self-signed.key
MFE_POSTGRES_IMAGE=${MFE_POSTGRES_IMAGE:-mfe-local/postgres:15}
MFE_RABBITMQ_IMAGE=${MFE_RABBITMQ_IMAGE:-mfe-local/rabbitmq:3-management}
MFE_REDIS_IMAGE=${MFE_REDIS_IMAGE:-mfe-local/redis:7}
MFE_NGINX_IMAGE=${MFE_NGINX_IMAGE:-mfe-local/nginx:1.22}
VARS
}

seconds() { # runs "$@" bounded to 300 s, prints elapsed seconds
    local t0 t1
    t0=$(date +%s.%N)
    timeout 300 "$@" >/dev/null 2>/tmp/mfe-bench-docker.err || { echo "bench-docker: $* failed:" >&2; tail -3 /tmp/mfe-bench-docker.err >&2; return 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

for runtime in docker native; do
    prefix=$([[ $runtime == docker ]] && echo 21 || echo 22)
    envfile=$(mktemp)
    stack_env "$runtime" "$prefix" >"$envfile"
    (
        set -a; . "$envfile"; set +a
        $mfe infra clean --yes >/dev/null 2>&1 || true
        $mfe ssl generate --force >/dev/null 2>&1
        cold=$(seconds $mfe infra start)
        stop=$(seconds $mfe infra stop)
        warm=$(seconds $mfe infra start)
        restart=$(seconds $mfe infra restart rabbitmq)
        $mfe infra clean --yes >/dev/null 2>&1
        printf '%-7s cold_start_s=%.1f stop_s=%.1f warm_start_s=%.1f restart_rabbitmq_s=%.1f\n' "$runtime" "$cold" "$stop" "$warm" "$restart"
    )
    rm -f "$envfile"
done
