#!/usr/bin/env bash
# Install the fedge aggregator on a gateway as the systemd service fedge-aggregator.
#   sudo bash deploy/install-aggregator.sh --device-folder site/aggregator --extras fleet
#   bash deploy/install-aggregator.sh --destdir /tmp/root --skip-venv
#   sudo bash deploy/install-aggregator.sh --uninstall [--purge]
set -euo pipefail
COMPONENT=aggregator
. "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"

config_defaults() {  # what the aggregator folder of fedge-broker init leaves to the gateway
    set_default "$1" state_dir '"/var/lib/fedge/aggregator"'
    set_default "$1" history '"/var/lib/fedge/aggregator/rounds.jsonl"'
}

main "$@"
