#!/usr/bin/env bash
# Install the fedge agent on a device as the systemd service fedge-agent (docs/deploy.md).
#   sudo bash deploy/install-agent.sh --device-folder device-001   # a folder of fedge-broker init
#   bash deploy/install-agent.sh --destdir /tmp/root --skip-venv   # stage into a directory
#   sudo bash deploy/install-agent.sh --uninstall [--purge]
set -euo pipefail
COMPONENT=agent
. "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"

config_defaults() {  # what a device folder of fedge-broker init leaves to the device
    set_default "$1" state_dir '"/var/lib/fedge/agent"'
    set_default "$1" data '"/var/lib/fedge/data.npz"'
}

main "$@"
