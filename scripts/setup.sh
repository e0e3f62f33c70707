#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: Mosquitto and its clients (if missing),
# and a virtualenv .venv with fedge installed editable with the given extras.
#   bash scripts/setup.sh fleet     # to emulate a fleet
#   bash scripts/setup.sh dev       # to run the tests
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-fleet}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if { ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; } \
    || ! command -v mosquitto_sub >/dev/null 2>&1; then
    echo "setup: installing mosquitto and mosquitto-clients (Debian packages)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto mosquitto-clients
fi

if [[ ",${extras}," == *",dev,"* ]] && ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "setup: installing systemd (the tests run systemd-analyze verify on deploy/*.service)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq systemd
fi

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        echo "setup: installing python3-venv"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv
        python3 -m venv .venv
    fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
echo "setup: ready (.venv with fedge[${extras}])"
