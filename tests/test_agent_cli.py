"""``fedge-agent`` as a device runs it: its own .npz, a retained status, a clean SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.daemon import Aggregator
from fedge import history
from fedge.config import AggregatorConfig, load
from fedge.data import load_dataset, save_npz
from fedge.protocol import Topics
from fedge.wire import Status, unpack

pytestmark = pytest.mark.integration


def agent_cmd(broker: str, fed: str, client: str, data: Path, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.cli",
        "--broker",
        broker,
        "--federation",
        fed,
        "--client-id",
        client,
        "--data",
        str(data),
        "--state-dir",
        str(state),
        "--log-level",
        "INFO",
    ]


def latest_status(factory, fed: str, client: str, want: str, timeout: float = 15) -> Status:
    seen: list[bytes] = []
    reader = factory()
    reader.on_message = lambda c, u, m: seen.append(m.payload)
    reader.subscribe(Topics(fed).status(client), qos=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [Status.from_wire(unpack(p)) for p in seen if p]
        if states and states[-1].state == want:
            reader.disconnect()
            return states[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {want!r} status for {client}: {seen}")


def test_a_device_agent_trains_from_its_npz_and_says_offline_on_sigterm(
    broker, tmp_path, mqtt_client_factory
) -> None:
    data = load_dataset("digits", seed=0)
    save_npz(tmp_path / "data.npz", data.x_train[:200], data.y_train[:200])
    proc = subprocess.Popen(
        agent_cmd(broker.address, "dev", "pi-1", tmp_path / "data.npz", tmp_path / "state"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        online = latest_status(mqtt_client_factory, "dev", "pi-1", "online")
        assert online.caps["num_examples"] == 200
        cfg = load(
            AggregatorConfig,
            None,
            {
                "broker": broker.address,
                "federation": "dev",
                "dataset": "digits",
                "model": "logreg",
                "rounds": 2,
                "state_dir": str(tmp_path / "agg"),
                "history": str(tmp_path / "h.jsonl"),
                "start_clients": 1,
            },
        )
        aggregator = Aggregator(cfg)
        runner = threading.Thread(target=aggregator.run, daemon=True)
        runner.start()
        runner.join(60)
        assert aggregator.finished
        assert [r["clients"] for r in history.read(tmp_path / "h.jsonl")] == [1, 1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        offline = latest_status(mqtt_client_factory, "dev", "pi-1", "offline")
        assert offline.round == 2  # the last round it trained, from its state dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_an_agent_whose_data_does_not_fit_the_model_reports_an_error_status(
    broker, tmp_path, mqtt_client_factory
) -> None:
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "data.npz", rng.normal(size=(30, 5)), rng.integers(0, 2, 30))
    cfg = load(
        AggregatorConfig,
        None,
        {
            "broker": broker.address,
            "federation": "misfit",
            "dataset": "digits",
            "model": "logreg",
            "rounds": 1,
            "state_dir": str(tmp_path / "agg"),
        },
    )
    stop = threading.Event()
    runner = threading.Thread(target=Aggregator(cfg).run, args=(stop,), daemon=True)
    runner.start()
    proc = subprocess.Popen(
        agent_cmd(broker.address, "misfit", "pi-2", tmp_path / "data.npz", tmp_path / "state")
    )
    try:
        status = latest_status(mqtt_client_factory, "misfit", "pi-2", "error")
        assert "5 features" in status.detail and "64 features" in status.detail
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        runner.join(10)


def test_bad_agent_configuration_exits_2_with_the_key_named(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--client-id", "a/b", "--data", "x.npz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "client_id" in done.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "--client-id",
            "ok",
            "--data",
            str(tmp_path / "missing.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "missing.npz" in missing.stderr


def test_an_emulated_agent_gets_the_same_share_as_in_the_fleet() -> None:
    """Standalone and fleet-hosted emulated agents split the dataset the same way."""
    from agent.cli import local_data
    from fedge.config import AgentConfig
    from fedge.data import emulated_split

    config = AgentConfig(
        client_id="x", dataset="digits", partition="iid", num_clients=1000, client_index=999, seed=3
    )
    x, y = local_data(config)
    data, parts = emulated_split("digits", 1000, "iid", seed=3)
    assert 1 <= len(y) <= 2  # 1,000 clients share 1,437 training rows
    np.testing.assert_array_equal(x, data.x_train[parts[999]])
