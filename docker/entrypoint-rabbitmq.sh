#!/bin/sh
# mfe-local/rabbitmq: the official rabbitmq image's environment contract on Debian's
# rabbitmq-server — RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, extra configuration (such as
# load_definitions) from files mounted under /etc/rabbitmq/conf.d/, management plugin enabled.
set -eu
if [ "$1" != rabbitmq-server ]; then exec "$@"; fi
mkdir -p /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq/conf.d
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && [ ! -e /etc/rabbitmq/conf.d/05-default-user.conf ]; then
    {
        echo "default_user = ${RABBITMQ_DEFAULT_USER}"
        echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
    } >/etc/rabbitmq/conf.d/05-default-user.conf
fi
# Listen on every interface and log to the console, as the official image does.
echo "loopback_users.guest = false
log.console = true
log.file = false" >/etc/rabbitmq/conf.d/00-container.conf
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
