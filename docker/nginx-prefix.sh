#!/bin/sh
# Run by the nginx image's entrypoint (/docker-entrypoint.d/): the prefix nginx.conf's relative
# paths resolve against (`nginx -p /var/lib/mfe-nginx/`), logs sent to the container's output.
set -eu
prefix=/var/lib/mfe-nginx
mkdir -p "$prefix/log" "$prefix/run" "$prefix/temp"
ln -sf /dev/stdout "$prefix/log/access.log"
ln -sf /dev/stderr "$prefix/log/error.log"
