"""The private Mosquitto helper, against a real Mosquitto: ports, retained messages, restarts."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import broker.config
import broker.local
from broker import LocalBroker, find_mosquitto, free_port, render_config
from fedge.errors import BrokerError
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def collect(client: mqtt.Client, topic: str) -> list[mqtt.MQTTMessage]:
    """Subscribe ``client`` to ``topic`` and return the list its messages land in."""
    got: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    client.on_message = lambda c, u, msg: got.append(msg)
    client.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(5), f"no SUBACK for {topic}"
    return got


def publish(client: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(5)
    assert info.is_published(), f"no PUBACK for {topic}"


def can_listen_on(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def test_the_helper_starts_a_broker_on_a_free_loopback_port_not_1883(broker: LocalBroker) -> None:
    assert broker.running and broker.pid is not None
    assert broker.host == "127.0.0.1" and broker.port != 1883
    assert broker.address == f"127.0.0.1:{broker.port}"
    config = (broker.workdir / "mosquitto.conf").read_text()
    assert f"listener {broker.port} 127.0.0.1\n" in config
    assert f"persistence_location {broker.workdir / 'data'}/\n" in config
    assert "running" in broker.log_tail()
    socket.create_connection((broker.host, broker.port), timeout=1).close()


def test_render_config_fills_every_placeholder() -> None:
    text = render_config(port=1234, data_dir="/d", log_file="/l/m.log", persistence=True)
    assert "$" not in text
    assert "listener 1234 127.0.0.1\n" in text and "persistence true\n" in text
    assert f"max_packet_size {4 * 1024 * 1024}\n" in text
    assert "persistence_location /d/\n" in text and "log_dest file /l/m.log\n" in text


def test_a_retained_message_reaches_a_client_that_subscribes_later(mqtt_client_factory) -> None:
    topic = "test/broker/retained"
    publisher = mqtt_client_factory()
    publish(publisher, topic, b"global model", retain=True)
    got = collect(mqtt_client_factory(), topic)
    wait_for(lambda: bool(got), 5, "the retained message")
    assert got[0].payload == b"global model" and got[0].retain
    publish(publisher, topic, b"", retain=True)  # clear it: the session broker is shared


def test_restart_keeps_the_port_and_clients_reconnect(fresh_broker, mqtt_client_factory) -> None:
    connects: list[int] = []
    client = mqtt_client_factory(broker=fresh_broker)
    client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    client.on_connect = lambda c, u, flags, rc, props: connects.append(rc.value)
    port, pid = fresh_broker.port, fresh_broker.pid

    fresh_broker.restart()

    assert fresh_broker.port == port and fresh_broker.pid not in (None, pid)
    wait_for(lambda: connects == [0], 10, "the old client to reconnect by itself")
    got = collect(client, "test/broker/after-restart")
    publish(mqtt_client_factory(broker=fresh_broker), "test/broker/after-restart", b"hello")
    wait_for(lambda: bool(got), 5, "a message after the restart")


@pytest.mark.parametrize("persistence", [True, False])
def test_retained_messages_survive_restart_only_with_persistence(
    tmp_path: Path, mqtt_client_factory, persistence: bool
) -> None:
    with LocalBroker(workdir=tmp_path, persistence=persistence) as local:
        publish(mqtt_client_factory(broker=local), "fed/global", b"round 7", retain=True)
        local.restart()
        got = collect(mqtt_client_factory(broker=local), "fed/global")
        if persistence:
            wait_for(lambda: bool(got), 5, "the retained message after restart")
            assert got[0].payload == b"round 7"
        else:
            time.sleep(0.3)  # retained messages arrive right after SUBACK; none should
            assert got == []


def test_stop_is_idempotent_frees_the_port_and_removes_its_own_workdir() -> None:
    local = LocalBroker().start()
    port, pid, workdir = local.port, local.pid, local.workdir
    local.stop()
    local.stop()
    assert not local.running and local.pid is None
    assert not workdir.exists()
    assert can_listen_on(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_given_workdir_is_kept_after_stop(tmp_path: Path) -> None:
    with LocalBroker(workdir=tmp_path / "b") as local:
        pass
    assert local.log_path.is_file() and "terminating" in local.log_tail()


def test_a_port_taken_between_choosing_and_binding_is_replaced(monkeypatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(
            broker.local, "free_port", lambda host: next(ports, None) or free_port(host)
        )
        with LocalBroker() as local:
            assert local.running and local.port != taken


def test_a_requested_port_in_use_fails_with_the_log_tail() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(BrokerError) as caught:
            LocalBroker(port=squatter.getsockname()[1]).start()
    assert caught.value.reason == "port_in_use"
    assert "Address already in use" in str(caught.value)


def test_find_mosquitto_falls_back_to_usr_sbin(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    if not os.access(broker.config.FALLBACK_MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not in /usr/sbin here")
    assert find_mosquitto() == broker.config.FALLBACK_MOSQUITTO


def test_find_mosquitto_says_how_to_install_it_when_missing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH lookup that finds nothing
    monkeypatch.setattr(broker.config, "FALLBACK_MOSQUITTO", str(tmp_path / "no-mosquitto"))
    with pytest.raises(BrokerError) as caught:
        find_mosquitto()
    assert caught.value.reason == "not_found"
    assert str(caught.value) == (
        "mosquitto not found: install it with `apt-get install -y mosquitto`"
    )
    with pytest.raises(BrokerError):
        LocalBroker().start()


def test_a_message_larger_than_max_packet_size_is_refused(broker, mqtt_client_factory) -> None:
    topic = "test/broker/big"
    limit = 4 * 1024 * 1024
    subscriber = mqtt_client_factory()
    got = collect(subscriber, topic)

    publish(mqtt_client_factory(), topic, b"a" * (limit - 1024))  # a global model fits
    wait_for(lambda: len(got) == 1, 5, "the largest allowed message")

    dropped = threading.Event()
    big = mqtt_client_factory()
    big.on_disconnect = lambda c, u, flags, rc, props: dropped.set()
    big.publish(topic, b"b" * (limit + 1), qos=0)
    assert dropped.wait(5), "the broker should disconnect a client sending too large a packet"
    big.disconnect()

    publish(subscriber, topic, b"after")  # the broker dropped the big one before this
    wait_for(lambda: len(got) == 2, 5, "the message after the oversized one")
    assert [m.payload[:5] for m in got] == [b"aaaaa", b"after"]
