#!/usr/bin/env bash
# Install the servers the tests start for themselves (tests/servers.py) -- redis-server,
# clickhouse-server, nats-server -- chromium for the browser tests, and docker-compose, which
# validates docker-compose.yml (tests/test_compose.py; it starts no container). Each Debian package
# installs a binary of its own name. `make services` runs this; `make test` depends on it.
#
# Idempotent and silent when everything is installed. As root it installs what is missing;
# otherwise it prints the command to run and exits 1, so a test run never starts without them.
#
# The packages may start system services (Redis on 6379, ClickHouse on 9000/8123). The tests
# never use those: they run their own servers on free ports in temp dirs, and tests/guard.py
# fails any test that connects to a default service port.
set -euo pipefail

packages=(redis-server clickhouse-server nats-server chromium docker-compose)

have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir
    for dir in /usr/sbin /usr/local/sbin /usr/bin /usr/local/bin; do # sbin is off users' PATH
        [ -x "$dir/$1" ] && return 0
    done
    return 1
}

missing=()
for pkg in "${packages[@]}"; do
    have "$pkg" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

install="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "Missing test services: ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive $install" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Missing test services: ${missing[*]}, and no apt-get to install them with." >&2
    echo "Install the packages of those names with this system's package manager." >&2
    exit 1
fi

echo "Installing test services: ${missing[*]}"
apt-get update -qq
# shellcheck disable=SC2086 # $install is split into words on purpose
DEBIAN_FRONTEND=noninteractive $install

still_missing=()
for pkg in "${missing[@]}"; do
    have "$pkg" || still_missing+=("$pkg")
done
if [ "${#still_missing[@]}" -ne 0 ]; then
    echo "Installed, but still cannot find: ${still_missing[*]}" >&2
    exit 1
fi
