"""The real daemon processes as systemd runs them: READY and WATCHDOG on a notify socket,
SIGTERM exits 0 with the state on disk, and a hot device declines and says why."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import serve
from agent.core import STATE_FILE, AgentCore
from agent.runtime import AgentRuntime
from aggregator import checkpoint
from aggregator.daemon import Aggregator
from fedge import history
from fedge.config import AggregatorConfig, load
from fedge.data import load_dataset, save_npz
from fedge.mqtt import BrokerAddress
from fedge.sdnotify import Notifier
from fedge.statefile import read_msgpack
from tests.daemon_helpers import (
    Daemon,
    NotifyListener,
    retained_status,
    statuses,
    write_toml,
)
from tests.helpers import wait_for
from tests.test_eligibility import fake_device

pytestmark = pytest.mark.integration


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


def device_data(path: Path, rows: int = 200) -> Path:
    data = load_dataset("digits", seed=0)
    save_npz(path, data.x_train[:rows], data.y_train[:rows])
    return path


def aggregator_in_thread(
    broker, fed: str, tmp: Path, **values: object
) -> tuple[Aggregator, threading.Thread, threading.Event]:
    config = load(
        AggregatorConfig,
        None,
        {
            "broker": broker.address,
            "federation": fed,
            "dataset": "digits",
            "model": "logreg",
            "state_dir": str(tmp / "agg"),
            "history": str(tmp / "rounds.jsonl"),
            **values,
        },
    )
    aggregator, stop = Aggregator(config), threading.Event()
    runner = threading.Thread(target=aggregator.run, args=(stop,), daemon=True)
    runner.start()
    return aggregator, runner, stop


def agent_args(broker, fed: str, client: str, tmp: Path, *extra: str) -> list[str]:
    return [
        "--broker", broker.address, "--federation", fed, "--client-id", client,
        "--data", str(device_data(tmp / "data.npz")), "--state-dir", str(tmp / "state"), *extra,
    ]  # fmt: skip


def test_the_agent_says_ready_pings_the_watchdog_and_exits_0_on_sigterm_with_state_flushed(
    broker, tmp_path, notify, mqtt_client_factory
) -> None:
    agent = Daemon("agent.cli", agent_args(broker, "sd", "pi-1", tmp_path), notify, 1.0)
    try:
        ready = notify.wait_for(lambda t: t.startswith("READY=1"), 20, "READY")
        assert "STATUS=pi-1: connected to" in ready
        start = time.monotonic()
        time.sleep(2.2)
        assert notify.pings_between(start, time.monotonic()) >= 3  # every 0.5 s of a 1 s dog
        aggregator, runner, _ = aggregator_in_thread(broker, "sd", tmp_path, rounds=2)
        runner.join(60)
        assert aggregator.finished
        assert [r["clients"] for r in history.read(tmp_path / "rounds.jsonl")] == [1, 1]
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(15) == 0
        notify.wait_for(lambda t: t.startswith("STOPPING=1"), 2, "STOPPING")
        offline = retained_status(mqtt_client_factory, "sd", "pi-1")
        assert (offline.state, offline.detail, offline.round) == ("offline", "stopped", 2)
        state = read_msgpack(tmp_path / "state" / STATE_FILE)
        assert state["last_trained"] == 2 and "pending" not in state
    finally:
        agent.kill()


def test_sigterm_abandons_a_long_training_at_a_step_and_saves_nothing_of_it(
    broker, tmp_path, notify, mqtt_client_factory
) -> None:
    """1000 epochs of batch size 1 would take ~30 s: the agent stops within a few seconds."""
    args = agent_args(broker, "sd-long", "pi-2", tmp_path)
    device_data(tmp_path / "data.npz", rows=600)
    agent = Daemon("agent.cli", args, notify, 1.0)
    _, runner, stop = aggregator_in_thread(
        broker, "sd-long", tmp_path, model="mlp", epochs=1000, batch_size=1, round_timeout_s=300
    )
    try:
        agent.wait_for_line("pi-2: training round 1", 30)
        time.sleep(0.5)
        agent.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert agent.proc.wait(15) == 0
        assert time.monotonic() - sent < 5
        assert "training of round 1 abandoned" in agent.log()
        offline = retained_status(mqtt_client_factory, "sd-long", "pi-2")
        assert (offline.state, offline.round) == ("offline", 0)
        state = read_msgpack(tmp_path / "state" / STATE_FILE)
        assert state is None or (state["last_trained"] == 0 and "pending" not in state)
    finally:
        agent.kill()
        stop.set()
        runner.join(10)


def test_the_aggregator_says_ready_pings_and_keeps_the_open_round_on_sigterm(
    broker, tmp_path, notify
) -> None:
    args = [
        "--broker", broker.address, "--federation", "sd-agg", "--dataset", "digits",
        "--model", "logreg", "--min-clients", "2", "--round-timeout", "300",
        "--state-dir", str(tmp_path / "agg"),
    ]  # fmt: skip
    aggregator = Daemon("aggregator.cli", args, notify, 1.0)
    data = load_dataset("digits", seed=0)
    core = AgentCore("pi-3", "sd-agg", data.x_train[:100], data.y_train[:100])
    runtime = AgentRuntime(BrokerAddress.parse(broker.address), [core])
    try:
        ready = notify.wait_for(lambda t: t.startswith("READY=1"), 30, "READY")
        assert "STATUS=round 1: 0 updates" in ready
        runtime.start()
        notify.wait_for(lambda t: "STATUS=round 1: 1 updates" in t, 30, "one folded update")
        start = time.monotonic()
        time.sleep(1.6)
        assert notify.pings_between(start, time.monotonic()) >= 2
        aggregator.proc.send_signal(signal.SIGTERM)
        assert aggregator.proc.wait(15) == 0
        notify.wait_for(lambda t: t.startswith("STOPPING=1"), 2, "STOPPING")
        snapshot = checkpoint.load_round(tmp_path / "agg")
        assert snapshot is not None and list(snapshot["contributors"]) == ["pi-3"]
    finally:
        runtime.stop()
        aggregator.kill()
    resumed = Daemon("aggregator.cli", args, notify, 1.0)
    try:  # the restart resumes the round with the update it had folded
        notify.wait_for(lambda t: "STATUS=round 1: 1 updates" in t and "READY" in t, 30, "resume")
        resumed.proc.send_signal(signal.SIGTERM)
        assert resumed.proc.wait(15) == 0
    finally:
        resumed.kill()


def test_the_watchdog_is_withheld_while_the_network_loop_is_wedged(broker, tmp_path) -> None:
    """A network thread stuck in a callback leaves the process alive but deaf: no pings, so
    systemd's WatchdogSec restarts it; pings resume when the loop does."""
    notify = NotifyListener()
    data = load_dataset("digits", seed=0)
    core = AgentCore("pi-4", "sd-wedge", data.x_train[:50], data.y_train[:50])
    runtime = AgentRuntime(BrokerAddress.parse(broker.address), [core])
    notifier = Notifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    stop = threading.Event()
    loop = threading.Thread(target=serve, args=(runtime, notifier, stop, 0.02, 0.5))
    runtime.start()
    loop.start()
    try:
        notify.wait_for(lambda t: t.startswith("READY=1"), 10, "READY")
        time.sleep(0.6)
        wedged = time.monotonic()
        runtime.loop.call_soon(lambda: time.sleep(2.5))  # wedge the network thread
        time.sleep(2.2)
        # from max_silence (0.5 s) on, no ping: judged by arrival times, up to 2.0 s (the
        # wedge lasts 2.5 s, so a test thread that oversleeps cannot blur the window)
        assert notify.pings_between(wedged + 1.0, wedged + 2.0) == 0
        assert notify.pings_between(wedged - 0.5, wedged) >= 3  # it pinged every 0.1 s before
        wait_for(runtime.alive, 5, "the network loop to come back")
        back = time.monotonic()
        time.sleep(0.5)
        assert notify.pings_between(back, time.monotonic()) >= 2
    finally:
        stop.set()
        loop.join(5)
        runtime.stop()
        notify.close()


def test_a_hot_thermal_zone_makes_the_agent_decline_and_say_why_until_it_cools(
    broker, tmp_path, notify, mqtt_client_factory
) -> None:
    sysfs = fake_device(tmp_path / "root", temps=("85000",))
    config = write_toml(
        tmp_path / "agent.toml",
        broker=broker.address,
        federation="sd-hot",
        client_id="pi-5",
        data=str(device_data(tmp_path / "data.npz")),
        state_dir=str(tmp_path / "state"),
        max_temp_c=70.0,
        recheck_s=1.0,
        sysfs_root=str(sysfs),
    )
    seen, close = statuses(mqtt_client_factory, "sd-hot", "pi-5")
    agent = Daemon("agent.cli", ["--config", str(config)], notify, 10.0)
    aggregator, runner, stop = aggregator_in_thread(
        broker, "sd-hot", tmp_path, rounds=1, round_timeout_s=120
    )
    try:
        wait_for(lambda: any(s.state == "declined" for s in seen), 30, "a declined status")
        declined = next(s for s in seen if s.state == "declined")
        assert declined.detail == "temperature 85.0 C > 70.0 C"
        time.sleep(2.5)  # two rechecks, still hot: no training, no update
        assert aggregator.round is not None and aggregator.round.count == 0
        assert "training round" not in agent.log()
        (sysfs / "sys/class/thermal/thermal_zone0/temp").write_text("55000\n")
        runner.join(30)
        assert aggregator.finished
        assert [r["clients"] for r in history.read(tmp_path / "rounds.jsonl")] == [1]
        after = [s.state for s in seen[seen.index(declined) + 1 :]]
        assert after and after[0] == "online"  # eligible again: expected by the aggregator
        assert "declines round 1 for now: temperature 85.0 C > 70.0 C" in agent.log()
    finally:
        close()
        stop.set()
        runner.join(10)
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(15)
        agent.kill()
