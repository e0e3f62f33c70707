"""Fuzz a live aggregator over a real Mosquitto: thousands of hostile messages change nothing.

An in-process aggregator opens round 1; a paho client publishes batches of hypothesis-made
messages at QoS 0 and 1: mutants of a valid update (``tests/fuzzing.py``: fields at any depth,
fields inside the codec, damaged bytes, deep nesting, random maps, empty and oversize
payloads), the same on other clients' topics and on topic levels that are no client id,
garbage statuses, and messages on odd topics under the federation's prefix.

Hypothesis raises the interpreter's recursion limit while it runs, for every thread, so
fields nested ~1000 deep are also sent in a plain loop first (they once stopped the daemon).

Each message's fate is predicted offline by a mirror ``RoundState`` with the aggregator's own
rules, model and global (a mutant the mirror would accept is left out: it is a valid update).
After every batch the aggregator's refusal counts grew by exactly the predicted reasons, its
thread is alive, and the round (contributors, sums as bytes, the snapshot on disk, the number
of snapshot writes) is unchanged. At the end nothing was logged at ERROR, the retained global
is byte-identical, and a valid update is accepted and closes the round with exactly its delta.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aggregator import checkpoint
from aggregator.rounds import RoundState
from fedge import history
from fedge.errors import WireError
from fedge.params import allclose
from fedge.protocol import Kind, Topics
from fedge.wire import Global, Status, encode, unpack
from tests.fuzzing import examples, hostile, nested, pick, with_raw_field
from tests.helpers import LAYOUT, delta, update_payload, wait_for
from tests.live import Running, config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FED = "fuzzlive"
TOPICS = Topics(FED)
PREFIX = TOPICS.prefix
CLIENT = "fuzz-1"  # the valid update all mutants come from; it closes the round at the end
FIRST = "fuzz-0"  # folded before the fuzz, so the sums compared are not all zero
MAX_BYTES = 16 * 1024
BATCHES = examples(60)  # of 30..70 messages each
NOT_CLIENT_IDS = ["", "_x", "a b", "x" * 65, "é"]
ODD = ["update", "update/a/b", "updates/x", "status/x/y", "", "task", "metrics/x", "global/x"]


@st.composite
def messages(
    draw: st.DrawFn, update: dict[str, Any], folded: dict[str, Any], status: dict[str, Any]
) -> tuple:
    """(topic, payload, qos): mostly mutants of ``update`` on its own topic; some of the update
    already ``folded`` (duplicates if still valid), some on other topics."""
    where = pick(draw, ["own"] * 7 + ["folded", "other", "no_client", "status", "odd"])
    qos = draw(st.integers(0, 1))
    if where == "status":
        client = pick(draw, [CLIENT, "fuzz-2", *NOT_CLIENT_IDS])
        return f"{PREFIX}status/{client}", draw(hostile(status, max_bytes=MAX_BYTES)), qos
    if where == "folded":
        payload = draw(hostile(folded, nested_keys=("delta",), max_bytes=MAX_BYTES))
        return TOPICS.update(FIRST), payload, qos
    payload = draw(hostile(update, nested_keys=("delta",), max_bytes=MAX_BYTES))
    if where == "own":
        return TOPICS.update(CLIENT), payload, qos
    if where == "other":
        return TOPICS.update(pick(draw, [FIRST, "fuzz-2", "a.b-c_d"])), payload, qos
    if where == "no_client":
        return f"{PREFIX}update/{pick(draw, NOT_CLIENT_IDS)}", payload, qos
    return PREFIX + pick(draw, ODD), payload, qos


def deep_nesting(wire: dict[str, Any], topic: str) -> list[tuple[str, bytes, int]]:
    """``wire`` with each field (and one extra) nested 31..1023 arrays or maps deep."""
    return [
        (topic, with_raw_field(wire, key, nested(depth, container)), depth % 2)
        for key in [*wire, "extra"]
        for depth in (31, 32, 1000, 1023)
        for container in ("array", "map")
    ]


def delivered(topic: str) -> bool:
    """Whether the aggregator's subscriptions (update/+ and status/+) match ``topic``."""
    head, sep, rest = topic[len(PREFIX) :].partition("/")
    return head in ("update", "status") and bool(sep) and "/" not in rest


class Mirror:
    """What the aggregator will do with each message, computed offline."""

    def __init__(self, make_round: Callable[[], RoundState]) -> None:
        self.make_round = make_round
        self.round = make_round()

    def predict(self, topic: str, payload: bytes) -> str | None:
        """The reason the aggregator counts, None if it counts nothing, "accepted" for a
        valid update."""
        if not delivered(topic):
            return None
        parsed = TOPICS.parse(topic)
        if parsed is None:
            return "sender" if topic.startswith(PREFIX + "update/") else "status:sender"
        kind, client = parsed
        assert client is not None
        if kind is Kind.UPDATE:
            verdict = self.round.offer(client, payload)
            if verdict.accepted:
                self.round = self.make_round()  # forget it: it will not be sent
                return "accepted"
            return verdict.reason
        if not payload:  # a cleared status: offline, not a refusal
            return None
        limits = self.round.limits
        try:
            status = Status.from_wire(unpack(payload, limits), limits)
        except WireError as exc:
            return "status:" + exc.reason
        return None if (status.sender, status.federation) == (client, FED) else "status:sender"


def counts(aggregator: Any) -> Counter[str]:
    """A copy of the daemon's refusal counts, read from another thread."""
    while True:
        try:
            return Counter(dict(aggregator.rejections))
        except RuntimeError:  # resized while copied
            time.sleep(0.001)


def durable(state: RoundState, state_dir: str) -> tuple:
    """The round as the aggregator holds it and as it is on disk, refusal counts left out."""
    snapshot = {k: v for k, v in state.snapshot().items() if k != "rejected"}
    on_disk = checkpoint.load_round(state_dir) or {}
    return snapshot, {k: v for k, v in on_disk.items() if k != "rejected"}


def retained(client: mqtt.Client, topic: str) -> bytes:
    got: list[bytes] = []
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.subscribe(topic, qos=1)
    wait_for(lambda: bool(got), 5, f"retained {topic}")
    client.unsubscribe(topic)
    return got[0]


def test_thousands_of_hostile_messages_change_nothing_and_a_valid_update_still_closes_the_round(
    broker, tmp_path, mqtt_client_factory, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = config(
        broker.address,
        FED,
        tmp_path,
        dataset="",
        model="logreg",
        n_features=4,
        n_classes=3,
        rounds=1,
        min_clients=2,
        target_clients=2,
        codec="int8",
        max_update_norm=5.0,
        max_update_bytes=MAX_BYTES,
        round_timeout_s=600.0,
    )
    attacker, reader = mqtt_client_factory("mallory"), mqtt_client_factory("fuzz-reader")
    refusals: Counter[str] = Counter()  # every refusal the aggregator was predicted to count
    stats: Counter[str] = Counter()
    with Running(cfg) as run:
        aggregator = run.aggregator
        wait_for(lambda: aggregator.round is not None, 15, "round 1 to open")
        state = aggregator.round
        assert state is not None
        global_before = retained(reader, TOPICS.global_model)
        opened = Global.from_wire(unpack(global_before), LAYOUT)
        base = opened.weights_hash
        valid = update_payload(CLIENT, 1, base, delta(1), codec="int8", federation=FED)
        first = update_payload(FIRST, 1, base, delta(0), codec="int8", federation=FED, seed=3)
        status = unpack(encode(Status(FED, CLIENT, "online", 0, "", {"num_examples": 10})))

        def make_round() -> RoundState:
            mirror = RoundState(
                FED,
                1,
                opened.weights,
                aggregator.model_ref,
                aggregator.layout,
                aggregator.rules,
                0,
                aggregator.limits,
            )
            assert mirror.offer(FIRST, first).accepted
            return mirror

        attacker.publish(TOPICS.update(FIRST), first, qos=1).wait_for_publish(10)
        wait_for(lambda: state.count == 1 and aggregator.acks.snapshots == 1, 10, "one update")
        mirror = Mirror(make_round)
        reference = durable(state, cfg.state_dir)
        writes = aggregator.acks.snapshots

        def send(batch: list[tuple[str, bytes, int]]) -> None:
            """Publish ``batch``; the refusals predicted must all be counted, nothing else."""
            before = counts(aggregator)
            expected: Counter[str] = Counter()
            sent = []
            for topic, payload, qos in batch:
                fate = mirror.predict(topic, payload)
                if fate == "accepted":
                    stats["left out: still valid"] += 1
                    continue
                if fate is not None:
                    expected[fate] += 1
                sent.append(attacker.publish(topic, payload, qos=qos))
                stats[f"qos{qos}"] += 1
                stats["delivered" if delivered(topic) else "not subscribed"] += 1
                stats["update topic"] += delivered(topic) and topic.startswith(PREFIX + "update/")
            for info in sent:
                info.wait_for_publish(10)
            wait_for(
                lambda: (counts(aggregator) - before).total() >= expected.total(),
                15,
                f"{expected.total()} refusals",
            )
            assert counts(aggregator) - before == expected
            assert run.thread.is_alive(), run.result
            assert durable(state, cfg.state_dir) == reference
            assert aggregator.acks.snapshots == writes
            refusals.update(expected)

        @given(st.lists(messages(unpack(valid), unpack(first), status), min_size=30, max_size=70))
        @settings(
            max_examples=BATCHES,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # no shrinking against a live daemon
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(batch: list[tuple[str, bytes, int]]) -> None:
            send(batch)

        started = time.monotonic()
        # Hypothesis raises the recursion limit (for every thread) while it runs a test, which
        # hides stack exhaustion: fields nested ~1000 deep go first, outside of it.
        deep = deep_nesting(unpack(valid), TOPICS.update(CLIENT))
        deep += deep_nesting(status, TOPICS.status(CLIENT))
        send(deep)
        started = time.monotonic()
        fuzz()
        seconds = time.monotonic() - started
        assert run.thread.is_alive() and aggregator.round is state and state.count == 1
        assert retained(reader, TOPICS.global_model) == global_before
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, errors[:3]

        attacker.publish(TOPICS.update(CLIENT), valid, qos=1).wait_for_publish(10)
        run.thread.join(30)
        assert run.result.get("code") == 0, run.result
    record = history.read(tmp_path / "history.jsonl")[0]
    assert record["contributors"] == [FIRST, CLIENT] and record["clients"] == 2
    assert Counter(record["rejected_total"]) == refusals  # the daemon's counts, as predicted
    update_refusals = sum(n for reason, n in refusals.items() if not reason.startswith("status:"))
    assert update_refusals == stats["update topic"]  # every update-topic message accounted for
    final = Global.from_wire(unpack(retained(reader, TOPICS.global_model)), LAYOUT)
    alone = make_round()
    assert alone.offer(CLIENT, valid).accepted
    assert final.final and allclose(final.weights, alone.close(), atol=0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    print(
        f"\nlive fuzz: {stats['qos0'] + stats['qos1']} messages ({len(deep)} deeply nested, "
        f"then {BATCHES} hypothesis batches), "
        f"{seconds:.1f} s (QoS 0: {stats['qos0']}, QoS 1: {stats['qos1']}; delivered "
        f"{stats['delivered']}, {stats['update topic']} of them on update topics; on "
        f"unsubscribed topics {stats['not subscribed']}; still-valid mutants left out "
        f"{stats['left out: still valid']}); refusals: {dict(sorted(refusals.items()))}"
    )
