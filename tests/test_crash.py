"""kill -9 the aggregator at random instants of a round: nothing acknowledged is lost or doubled.

Each trial runs the real ``fedge-aggregator`` process against a real Mosquitto, publishes
hand-made updates at QoS 1 (noting which ones the broker acknowledged) while SIGKILLing the
aggregator at random moments and restarting it, then checks that the closed round counted
exactly the acknowledged updates, each once, and that its global equals FedAvg computed
offline from them. ``FEDGE_CRASH_TRIALS`` sets the number of trials (a soak: 200).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from aggregator import checkpoint
from fedge import history
from fedge.codecs import Pipeline, encode_params
from fedge.params import Params
from fedge.protocol import Topics
from fedge.wire import Global, Task, Update, encode, unpack

TRIALS = int(os.environ.get("FEDGE_CRASH_TRIALS", "20"))
CLIENTS = 10


@dataclass
class Trial:
    federation: str
    state_dir: Path
    history: Path
    batch: int
    kills: int = 0
    acked: dict[str, tuple[int, Params]] = field(default_factory=dict)  # client -> (n, delta)


def aggregator_command(broker: str, trial: Trial) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aggregator.cli",
        "--broker",
        broker,
        "--federation",
        trial.federation,
        "--model",
        "logreg",
        "--n-features",
        "4",
        "--n-classes",
        "3",
        "--codec",
        "float32",
        "--rounds",
        "1",
        "--min-clients",
        str(CLIENTS),
        "--target-clients",
        str(CLIENTS),
        "--round-timeout",
        "120",
        "--checkpoint-batch",
        str(trial.batch),
        "--state-dir",
        str(trial.state_dir),
        "--history",
        str(trial.history),
        "--log-level",
        "ERROR",
    ]


def retained(client: mqtt.Client, topic: str, timeout: float = 20.0) -> bytes:
    """The retained payload on ``topic`` (waits until there is one)."""
    got: list[bytes] = []
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        if message.payload:
            got.append(bytes(message.payload))
            done.set()

    client.message_callback_add(topic, on_message)
    client.subscribe(topic, 1)
    try:
        if not done.wait(timeout):
            raise AssertionError(f"nothing retained on {topic} after {timeout} s")
    finally:
        client.unsubscribe(topic)
        client.message_callback_remove(topic)
    return got[-1]


def make_update(task: Task, base: Global, client: str, rng: np.random.Generator) -> tuple:
    delta = {n: rng.normal(0, 0.1, size=s).astype(np.float32) for n, s in task.layout}
    wire, _ = encode_params(delta, Pipeline("float32"), rng)
    n = int(rng.integers(1, 50))
    update = Update(task.federation, base.round, client, task.model, base.weights_hash, n, wire)
    return encode(update), n, delta


def offline_fedavg(base: Params, acked: dict[str, tuple[int, Params]]) -> Params:
    total = sum(n for n, _ in acked.values())
    return {
        name: base[name].astype(np.float64)
        + sum(n * d[name].astype(np.float64) for n, d in acked.values()) / total
        for name in base
    }


def run_trial(broker: str, publisher: mqtt.Client, trial: Trial, rng: random.Random) -> None:
    cmd = aggregator_command(broker, trial)
    topics = Topics(trial.federation)
    proc = subprocess.Popen(cmd)
    try:
        task = Task.from_wire(unpack(retained(publisher, topics.task)))
        base = Global.from_wire(unpack(retained(publisher, topics.global_model)), task.layout)
        np_rng = np.random.default_rng(rng.randrange(2**32))
        updates = {f"dev-{i}": make_update(task, base, f"dev-{i}", np_rng) for i in range(CLIENTS)}

        clients = list(updates)
        cuts = sorted(rng.sample(range(1, CLIENTS), rng.randint(0, 2)))
        for burst in np.split(np.array(clients), cuts):
            infos = [(c, publisher.publish(topics.update(c), updates[c][0], qos=1)) for c in burst]
            # SIGKILL a few ms into the burst: updates are in the aggregator's inbox, folded,
            # in a snapshot, or acknowledged -- every boundary gets hit across the trials
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                trial.kills += 1
                proc = subprocess.Popen(cmd)
            for client, info in infos:
                info.wait_for_publish(10)
                assert info.is_published(), f"broker did not acknowledge {client}"
                trial.acked[str(client)] = updates[client][1:]
        assert proc.wait(30) == 0, "the restarted aggregator did not finish the round"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    records = [r for r in history.read(trial.history) if r["round"] == 1]
    assert len(records) == 1, records  # the round closed once, its line written once
    record = records[0]
    assert record["contributors"] == sorted(trial.acked), "counted != acknowledged"
    assert record["clients"] == CLIENTS
    assert record["examples"] == sum(n for n, _ in trial.acked.values())
    saved = checkpoint.load(trial.state_dir)
    assert saved is not None and saved.finished and saved.round == 2
    want = offline_fedavg(base.weights, trial.acked)
    for name, value in want.items():
        np.testing.assert_allclose(saved.weights[name], value, rtol=0, atol=1e-6)


@pytest.mark.timeout(60 + 15 * TRIALS)
def test_kill_9_at_random_instants_loses_and_doubles_no_acknowledged_update(
    broker, mqtt_client_factory, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("FEDGE_CRASH_SEED", "1")))
    publisher = mqtt_client_factory()
    totals = {"trials": 0, "kills": 0, "acknowledged": 0, "counted": 0}
    for t in range(TRIALS):
        trial = Trial(
            f"crash-{t}-{os.getpid()}",
            tmp_path / f"state-{t}",
            tmp_path / f"history-{t}.jsonl",
            batch=rng.choice([1, 2, 4, 8, 32]),
        )
        run_trial(broker.address, publisher, trial, rng)
        record = history.read(trial.history)[0]
        totals["trials"] += 1
        totals["kills"] += trial.kills
        totals["acknowledged"] += len(trial.acked)
        totals["counted"] += record["clients"]
    print(f"\ncrash trials: {totals}, mismatches: {totals['acknowledged'] - totals['counted']}")
    assert totals["kills"] >= TRIALS
    assert totals["acknowledged"] == totals["counted"] == TRIALS * CLIENTS
