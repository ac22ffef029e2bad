#!/usr/bin/env bash
# Builds the Debian bookworm root filesystem the local images (mfe-local/*) are made from, as a
# tar at $1 (default: $MFE_IMAGE_CACHE/rootfs-bookworm.tar). Offline-friendly: it only needs the
# apt mirror this machine is configured with, never a container registry.
#
# `mfe infra build-images` calls this and then imports the tar through the Docker API, one image
# per component with the entrypoints of docker/. Run as root (debootstrap and chroot need it).
# Cached: an existing tar is reused unless MFE_REBUILD=1.
set -euo pipefail

cache="${MFE_IMAGE_CACHE:-/var/cache/mfe-images}"
out="${1:-$cache/rootfs-bookworm.tar}"
here="$(cd "$(dirname "$0")/.." && pwd)"
mirror="${MFE_DEBIAN_MIRROR:-$(grep -h -o 'http[s]*://[^ ]*/debian$' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
packages="postgresql-15,rabbitmq-server,redis-server,redis-tools,nginx,curl,ca-certificates,procps,gettext-base,netcat-openbsd"

if [[ -s "$out" && "${MFE_REBUILD:-0}" != 1 ]]; then
    echo "rootfs: reusing $out (MFE_REBUILD=1 rebuilds it)" >&2
    exit 0
fi
[[ $EUID -eq 0 ]] || { echo "build-images: debootstrap needs root — run it as root (sudo)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-images: debootstrap is not installed — apt-get install debootstrap" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
root="$(mktemp -d "${cache}/rootfs.XXXXXX")"
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

t0=$(date +%s)
echo "rootfs: debootstrap bookworm from $mirror into $root" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { echo "build-images: debootstrap failed — see $cache/debootstrap.log" >&2; tail -5 "$cache/debootstrap.log" >&2; exit 1; }

# Services must not start inside the chroot while their packages install.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
echo "rootfs: installing ${packages//,/ }" >&2
chroot "$root" /bin/sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${packages//,/ }" \
    >"$cache/apt.log" 2>&1 \
    || { echo "build-images: apt-get install in the rootfs failed — see $cache/apt.log" >&2; tail -5 "$cache/apt.log" >&2; exit 1; }
umount "$root/proc"
rm -f "$root/usr/sbin/policy-rc.d"

# The images start from empty state like the official ones: no packaged cluster, no apt lists.
rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main" "$root/var/lib/apt/lists/"* \
    "$root/var/cache/apt/"*.bin "$root/var/lib/rabbitmq/mnesia" "$root/etc/nginx/sites-enabled/default"
mkdir -p "$root/docker-entrypoint.d"
install -m 755 "$here"/docker/entrypoint-*.sh "$root/usr/local/bin/"
echo '[rabbitmq_management,rabbitmq_prometheus].' >"$root/etc/rabbitmq/enabled_plugins"

tar -C "$root" --numeric-owner -cf "$out.partial" .
mv "$out.partial" "$out"
echo "rootfs: $out ($(du -h "$out" | cut -f1)) in $(( $(date +%s) - t0 )) s" >&2
