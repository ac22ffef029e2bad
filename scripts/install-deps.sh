#!/usr/bin/env bash
# Installs the system packages the platform and its tests need, when they are missing.
# Debian bookworm, as root (or with sudo). Services installed here are NOT started by apt:
# mfe starts its own instances on its own ports.
set -euo pipefail

# `make lint`: cargo-machete (unused dependencies), built from crates.io with its own lockfile.
if ! cargo machete --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-machete"
  cargo install --locked cargo-machete
fi

need=()
# A bare name is looked up on PATH only: `[ -x prometheus ]` is true for the repository's
# prometheus/ directory, which once hid a missing Prometheus.
have() { case "$1" in */*) [ -x "$1" ] && [ ! -d "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac; }
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
have psql || need+=(postgresql-client)
have pg_dump || need+=(postgresql-client)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
have redis-server || need+=(redis-server)
have /usr/sbin/nginx || need+=(nginx)
# `mfe up --observability` / `mfe infra start --observability` (native Prometheus).
have prometheus || need+=(prometheus)
have openssl || need+=(openssl)
have curl || need+=(curl)
have dockerd || need+=(docker.io)
have debootstrap || need+=(debootstrap)
have python3 || need+=(python3)
# The chaos suite's broker partition (cli/src/chaos/partition.rs).
have /usr/sbin/iptables || need+=(iptables)
id postgres >/dev/null 2>&1 || need+=(postgresql)
# The dashboard's browser tests (cli/tests/it/dashboard_browser.rs): headless Chromium over WebDriver.
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
# Benchmarks (`make bench`): load generators, peers and meters.
have wrk || need+=(wrk)
have /usr/bin/time || need+=(time)
have pgcopydb || need+=(pgcopydb)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: every system package is present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${need[*]}"
# Keep apt from starting system-wide instances (they would take the default ports).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-deps: done"
