"""docs/deploy.md's walkthrough, step by step, with systemd's part played by the test: a site
from `fedge-broker init`, both installers into a scratch root, the configs they installed run
by the real daemon CLIs (READY on a notify socket), two rounds in the history, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.site_broker import SiteBroker
from fedge.data import load_dataset, save_npz
from tests.daemon_helpers import Daemon, NotifyListener
from tests.helpers import wait_for
from tests.test_deploy import install

pytestmark = pytest.mark.integration


def test_the_walkthrough_runs_two_rounds_from_the_installed_configs(tmp_path: Path) -> None:
    # Gateway: a site (the real CLI), its broker, the aggregator installed from its folder.
    site = tmp_path / "site"
    init = subprocess.run(
        [sys.executable, "-m", "broker.cli", "init", str(site), "--federation", "lab",
         "--devices", "2", "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    gateway, device = tmp_path / "gateway", tmp_path / "pi"
    notify = NotifyListener()
    with SiteBroker(site):  # on a free port: the site's configs are rewritten before copying
        install("aggregator", gateway, "--skip-venv", "--device-folder", str(site / "aggregator"))
        config = gateway / "etc/fedge/aggregator/aggregator.toml"
        data = load_dataset("digits", seed=0)
        save_npz(tmp_path / "test.npz", data.x_test, data.y_test)
        with open(config, "a") as edit:  # the operator says what to train
            edit.write(f'test_data = "{tmp_path}/test.npz"\nrounds = 2\nmin_clients = 1\n')
        state = ["--state-dir", str(gateway / "var/lib/fedge/aggregator")]
        history = gateway / "var/lib/fedge/aggregator/rounds.jsonl"
        check = subprocess.run(
            [sys.executable, "-m", "aggregator.cli", "--check-config", str(config), *state,
             "--history", str(history)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        # Device: its folder copied by the installer, its data, the agent.
        install("agent", device, "--skip-venv", "--device-folder", str(site / "devices/device-001"))
        save_npz(device / "var/lib/fedge/data.npz", data.x_train[:300], data.y_train[:300])
        agent_config = device / "etc/fedge/agent/agent.toml"
        agent = Daemon(
            "agent.cli",
            ["--config", str(agent_config), "--data", str(device / "var/lib/fedge/data.npz"),
             "--state-dir", str(device / "var/lib/fedge/agent")],
            notify, 60.0,
        )  # fmt: skip
        aggregator = Daemon(
            "aggregator.cli",
            ["--config", str(config), *state, "--history", str(history)],
            notify,
            60.0,
        )
        try:
            notify.wait_for(lambda t: "STATUS=device-001: connected" in t, 30, "agent READY")
            assert aggregator.proc.wait(60) == 0  # rounds = 2 done: exit 0, no restart
            rounds = [json.loads(line) for line in history.read_text().splitlines()]
            assert [(r["round"], r["contributors"]) for r in rounds] == [
                (1, ["device-001"]),
                (2, ["device-001"]),
            ]
            wait_for(lambda: any("last round 2" in t for t in notify.texts()), 10, "agent STATUS")
            agent.proc.send_signal(signal.SIGTERM)  # systemctl stop
            assert agent.proc.wait(15) == 0
            assert "signed models only" in agent.log() and "(TLS)" in agent.log()
        finally:
            agent.kill()
            aggregator.kill()
            notify.close()
