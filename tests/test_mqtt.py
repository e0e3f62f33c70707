"""The session layer against a real Mosquitto: many sessions per loop, acks, reconnects."""

from __future__ import annotations

import threading

import pytest

from broker import LocalBroker
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session, Will
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def address(broker) -> BrokerAddress:
    return BrokerAddress(broker.host, broker.port)


def test_hundreds_of_sessions_share_one_loop_and_publish_from_their_callbacks(broker) -> None:
    """Regression: calls queued by the loop thread itself once filled the wake pipe and hung."""
    received: list[Incoming] = []
    lock = threading.Lock()

    def record(message: Incoming) -> None:
        with lock:
            received.append(message)

    loop = NetworkLoop().start()
    try:
        sink = loop.add(
            Session("sink", address(broker), subscriptions=[("many/#", 1)], on_message=record)
        )
        assert sink.wait_connected(5)
        sessions = []
        for i in range(300):
            session = Session(f"many-{i}", address(broker))
            session.on_connect = lambda s=session: s.publish(f"many/{s.client_id}", b"hi")
            sessions.append(loop.add(session))
        wait_for(lambda: all(s.connected for s in sessions), 20, "every session connected")
        wait_for(lambda: len(received) == 300, 20, "300 messages")
    finally:
        loop.stop()


def test_publish_resolves_on_ack_and_survives_a_broker_restart(tmp_path) -> None:
    received: list[bytes] = []
    fresh_broker = LocalBroker(workdir=tmp_path / "broker", persistence=True).start()
    loop = NetworkLoop().start()
    try:
        reader = loop.add(
            Session(
                "reader",
                address(fresh_broker),
                subscriptions=[("r/#", 1)],
                on_message=lambda m: received.append(m.payload),
                clean_session=False,
                min_backoff=0.1,
                max_backoff=0.5,
            )
        )
        writer = loop.add(
            Session("writer", address(fresh_broker), min_backoff=0.1, max_backoff=0.5)
        )
        assert reader.wait_connected(5) and writer.wait_connected(5)
        writer.publish("r/1", b"one").result(5)
        fresh_broker.stop()  # SIGTERM: the reader's persistent session is saved
        wait_for(lambda: not writer.connected, 5, "the writer to notice")
        pending = writer.publish("r/2", b"two")  # queued in the session while disconnected
        fresh_broker.restart()  # same port
        pending.result(15)  # acknowledged by the restarted broker
        wait_for(lambda: received == [b"one", b"two"], 10, "both messages, in order")
        assert writer.connects >= 2 and reader.connects >= 2
    finally:
        loop.stop()
        fresh_broker.stop()


def test_the_will_is_published_when_a_session_dies_uncleanly(broker) -> None:
    wills: list[bytes] = []
    watcher_loop, dying_loop = NetworkLoop().start(), NetworkLoop().start()
    try:
        watcher = watcher_loop.add(
            Session(
                "watcher",
                address(broker),
                subscriptions=[("wills/#", 1)],
                on_message=lambda m: wills.append(m.payload),
            )
        )
        dying = dying_loop.add(
            Session(
                "dying",
                address(broker),
                keepalive=5,
                will=Will("wills/dying", b"gone", retain=False),
            )
        )
        assert watcher.wait_connected(5) and dying.wait_connected(5)
        # an unclean end: the socket closes without a DISCONNECT packet
        dying_loop.call_soon(lambda: dying._client.socket().close())
        wait_for(lambda: wills == [b"gone"], 15, "the will")
    finally:
        dying_loop.stop()
        watcher_loop.stop()


def test_broker_address_parsing() -> None:
    assert BrokerAddress.parse("10.0.0.1:1884") == BrokerAddress("10.0.0.1", 1884)
    assert BrokerAddress.parse("gw.local") == BrokerAddress("gw.local", 1883)
    assert BrokerAddress.parse("[::1]:1883") == BrokerAddress("::1", 1883)
    for bad in ("", ":1883", "host:0", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            BrokerAddress.parse(bad)
