"""Restarts under way: a broker stopped mid-round, an agent SIGKILLed mid-training.

Real Mosquitto (with the project's config, persistence on), real agent processes where the
test kills them, and the round records as the judge: who was counted, how often.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker import LocalBroker
from fedge import history
from fedge.protocol import Topics
from fedge.wire import unpack
from tests.helpers import wait_for
from tests.live import Running, config, make_agents, start_agents

pytestmark = pytest.mark.integration


def retained(client, topic: str, timeout: float = 10.0) -> dict | None:
    """The retained message on ``topic`` as a fresh subscriber sees it, unpacked (or None)."""
    got: list[bytes] = []

    def on_message(c, u, message) -> None:
        if message.payload:
            got.append(bytes(message.payload))

    client.message_callback_add(topic, on_message)
    client.subscribe(topic, 1)
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    client.unsubscribe(topic)
    client.message_callback_remove(topic)
    return unpack(got[-1]) if got else None


@pytest.mark.timeout(120)
def test_a_broker_restarted_mid_round_loses_no_round_and_keeps_the_retained_global(
    tmp_path: Path, runtimes, mqtt_client_factory
) -> None:
    with LocalBroker(workdir=tmp_path / "broker", persistence=True) as broker:
        agents = make_agents("brk", 3, tmp_path)
        cfg = config(broker.address, "brk", tmp_path, rounds=3, min_clients=3, target_clients=3)
        with Running(cfg) as running:
            start_agents(broker, agents[:2], runtimes)  # round 1 waits for the third agent
            wait_for(lambda: running.aggregator.round is not None, 20, "round 1 open")
            wait_for(lambda: running.aggregator.round.count == 2, 30, "two updates folded")
            broker.restart()  # mid-round: everyone's connection drops
            start_agents(broker, agents[2:], runtimes)
            hist = Path(cfg.history)
            wait_for(lambda: len(history.read(hist)) == 3, 60, "three rounds after the restart")
            wait_for(lambda: running.aggregator.finished, 10, "the final global")
            assert "error" not in running.result
        records = history.read(hist)
        assert [r["round"] for r in records] == [1, 2, 3]
        assert all(r["contributors"] == ["dev-0", "dev-1", "dev-2"] for r in records)
        broker.restart()  # once more: the final global must survive in the broker's store
        watcher = mqtt_client_factory(broker=broker)
        final = retained(watcher, Topics("brk").global_model)
        assert final is not None and final["final"] and final["round"] == 4


def agent_command(broker: str, index: int, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.cli",
        "--broker",
        broker,
        "--federation",
        "kill",
        "--client-id",
        f"dev-{index}",
        "--state-dir",
        str(state / f"dev-{index}"),
        "--dataset",
        "digits",
        "--num-clients",
        "3",
        "--client-index",
        str(index),
        "--keepalive",
        "5",
        "--log-level",
        "ERROR",
    ]


@pytest.mark.timeout(180)
def test_an_agent_killed_mid_round_and_restarted_is_counted_once(
    broker, tmp_path: Path, runtimes
) -> None:
    rounds = 4
    agents = make_agents("kill", 3, tmp_path)[1:]  # dev-1, dev-2 in-process; dev-0 a process
    cfg = config(
        broker.address,
        "kill",
        tmp_path,
        rounds=rounds,
        epochs=15,  # long enough to be killed mid-training
        min_clients=3,
        target_clients=3,
        model="mlp:64",
    )
    rng = random.Random(5)
    kills = 0
    with Running(cfg) as running:
        start_agents(broker, agents, runtimes)
        cmd = agent_command(broker.address, 0, tmp_path)
        proc = subprocess.Popen(cmd)
        try:
            for r in range(1, rounds + 1):
                wait_for(
                    lambda r=r: (
                        running.aggregator.finished
                        or (
                            running.aggregator.round is not None
                            and running.aggregator.round.round >= r
                        )
                    ),
                    60,
                    f"round {r} open",
                )
                time.sleep(rng.uniform(0.0, 1.2))  # during training, sending or waiting
                proc.kill()
                proc.wait(10)
                kills += 1
                proc = subprocess.Popen(cmd)
            wait_for(lambda: running.aggregator.finished, 90, "all rounds closed")
        finally:
            proc.kill()
            proc.wait(10)
    records = history.read(Path(cfg.history))
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    for record in records:
        assert record["contributors"] == ["dev-0", "dev-1", "dev-2"]
        assert record["clients"] == 3  # dev-0 once per round, however often it came back
    duplicates = sum(r["rejected"].get("duplicate", 0) for r in records)
    print(f"\nagent kills: {kills}, rounds: {rounds}, duplicate resends refused: {duplicates}")
