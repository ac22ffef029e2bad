#!/bin/sh
# mfe-local/nginx: the official nginx image's contract — /etc/nginx/templates/*.template rendered
# with envsubst into /etc/nginx/conf.d (only variables matching NGINX_ENVSUBST_FILTER, else every
# defined one), /docker-entrypoint.d/*.sh run, then the command (`nginx -g 'daemon off;'`).
set -eu
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    filter="${NGINX_ENVSUBST_FILTER:-}"
    vars="$(awk "END { for (n in ENVIRON) { print ( n ~ /${filter}/ ) ? n : \"\" } }" </dev/null | sed '/^$/d; s/.*/${&}/' | tr '\n' ' ')"
    mkdir -p /etc/nginx/conf.d
    for t in /etc/nginx/templates/*.template; do
        [ -e "$t" ] || continue
        out="/etc/nginx/conf.d/$(basename "$t" .template)"
        envsubst "$vars" <"$t" >"$out"
        echo "nginx: rendered $t to $out"
    done
    for s in /docker-entrypoint.d/*.sh; do
        [ -e "$s" ] || continue
        sh "$s"
    done
fi
exec "$@"
