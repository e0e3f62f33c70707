"""Load: 200 agents over a real Mosquitto, 10 rounds, 2,000 updates, every one accounted for.

Two hundred MQTT sessions (each its own client id, all on one ``NetworkLoop``, as the fleet
emulator hosts them) answer every global model with a hand-made int8 update for the digits
MLP (9,610 parameters): no training, so the test measures the aggregation path. An in-process
aggregator (target 200 updates a round, default snapshot batching) runs 10 rounds.

What must hold: the set of (client, round) updates the broker acknowledged equals the set the
aggregator counted in its round records, with no duplicate, nothing lost, nothing refused.
Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Future

import numpy as np
import pytest

from fedge.models import build_model
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session
from fedge.params import Params, spec_of
from fedge.protocol import Topics
from fedge.wire import Global, ModelRef, model_ref, unpack
from tests.helpers import update_payload, wait_for
from tests.live import Running, config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AGENTS = 200
ROUNDS = 10
FED = "load"
TOPICS = Topics(FED)
CODEC = "int8"


class Fleet:
    """``AGENTS`` sessions that send one update for every round's global, and what came of it."""

    def __init__(self, broker: BrokerAddress, ref: ModelRef, layout: list) -> None:
        self.ref, self.layout = ref, layout
        self.loop = NetworkLoop("load-agents")
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.sent: set[tuple[str, int]] = set()
        self.acked: set[tuple[str, int]] = set()
        self.failed: list[tuple[tuple[str, int], BaseException]] = []
        self._globals: dict[bytes, Global] = {}  # one decode per global, not one per agent
        rng = np.random.default_rng(0)
        self.deltas: dict[str, Params] = {}
        for i in range(AGENTS):
            client = f"load-{i:03d}"
            self.deltas[client] = {
                name: (0.01 * rng.standard_normal(shape)).astype(np.float32)
                for name, shape in layout
            }
            self.sessions[client] = Session(
                client,
                broker,
                subscriptions=[(TOPICS.global_model, 0)],  # retained: the latest on subscribe
                on_message=lambda message, c=client: self._on_global(c, message),
            )

    def start(self) -> None:
        self.loop.start()
        for session in self.sessions.values():
            self.loop.add(session)

    def _on_global(self, client: str, message: Incoming) -> None:
        opened = self._globals.get(message.payload)
        if opened is None:
            opened = Global.from_wire(unpack(message.payload), self.layout)
            self._globals[message.payload] = opened
        key = (client, opened.round)
        if opened.final or key in self.sent:  # an extended round republishes its global
            return
        payload = update_payload(
            client,
            opened.round,
            opened.weights_hash,
            self.deltas[client],
            codec=CODEC,
            num_examples=10 + int(client[-3:]),
            federation=FED,
            seed=opened.round,
            ref=self.ref,
        )
        with self.lock:
            self.sent.add(key)
        future = self.sessions[client].publish(TOPICS.update(client), payload, qos=1)
        future.add_done_callback(lambda done, k=key: self._acknowledged(k, done))

    def _acknowledged(self, key: tuple[str, int], done: Future[None]) -> None:
        with self.lock:
            error = done.exception()
            if error is None:
                self.acked.add(key)
            else:
                self.failed.append((key, error))


def test_two_hundred_agents_ten_rounds_every_acknowledged_update_counted_once(
    broker, tmp_path
) -> None:
    model = build_model("mlp", 64, 10, seed=0)
    layout = spec_of(model.get_weights())
    ref = model_ref("mlp", model.describe(), layout)
    fleet = Fleet(BrokerAddress(broker.host, broker.port), ref, layout)
    cfg = config(
        broker.address,
        FED,
        tmp_path,
        dataset="",
        model="mlp",
        n_features=64,
        n_classes=10,
        rounds=ROUNDS,
        min_clients=1,
        target_clients=AGENTS,
        codec=CODEC,
        round_timeout_s=60.0,
    )
    records: list[dict] = []
    run = Running(cfg)
    run.aggregator.on_round = records.append
    fleet.start()
    try:
        wait_for(lambda: all(s.connected for s in fleet.sessions.values()), 30, "200 sessions")
        started = time.monotonic()
        with run:
            run.thread.join(90)
            seconds = time.monotonic() - started
            assert run.result.get("code") == 0, run.result
        wait_for(lambda: len(fleet.acked) + len(fleet.failed) == len(fleet.sent), 10, "acks")
    finally:
        fleet.loop.stop()
    aggregator = run.aggregator
    counted = [(client, r["round"]) for r in records for client in r["contributors"]]
    duplicates = len(counted) - len(set(counted))
    lost = fleet.acked - set(counted)  # acknowledged by the broker, never counted
    unacked = set(counted) - fleet.acked  # counted, though its sender saw no acknowledgement
    print(
        f"\nload: {AGENTS} agents x {ROUNDS} rounds: sent {len(fleet.sent)}, acked by the broker "
        f"{len(fleet.acked)} (failed {len(fleet.failed)}), counted {len(counted)}; duplicates "
        f"{duplicates}, lost {len(lost)}, counted-but-unacked {len(unacked)}; refused "
        f"{dict(aggregator.rejections) or 0}; {seconds:.1f} s wall, "
        f"{len(counted) / seconds:.0f} updates/s, {aggregator.acks.snapshots} round snapshot "
        f"writes; seconds per round {[r['seconds'] for r in records]}"
    )
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(r["clients"] == AGENTS for r in records)
    assert len(fleet.sent) == AGENTS * ROUNDS and not fleet.failed
    assert fleet.acked == set(counted) and duplicates == 0
    assert sum(aggregator.rejections.values()) == 0, aggregator.rejections
    assert Counter(r for _, r in counted) == dict.fromkeys(range(1, ROUNDS + 1), AGENTS)
    assert 0 < aggregator.acks.snapshots <= AGENTS * ROUNDS  # time: printed, not asserted
