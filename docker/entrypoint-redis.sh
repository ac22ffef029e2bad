#!/bin/sh
# mfe-local/redis: the official redis image's contract — `redis-server [args]`, data in /data,
# not protected-mode when started without a config file.
set -eu
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" != redis-server ]; then exec "$@"; fi
shift
mkdir -p /data
chown redis:redis /data
cd /data
case "${1:-}" in
    /*.conf) exec setpriv --reuid=redis --regid=redis --init-groups redis-server "$@" ;;
esac
exec setpriv --reuid=redis --regid=redis --init-groups redis-server --bind '* -::*' --protected-mode no --dir /data "$@"
