"""Shared fixtures: a real Mosquitto on a free loopback port, and paho clients connected to it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.runtime import AgentRuntime
from broker import LocalBroker

ClientFactory = Callable[..., mqtt.Client]
_ids = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One broker for the whole run; tests keep apart by topic prefix and client id."""
    with LocalBroker(workdir=tmp_path_factory.mktemp("broker")) as started:
        yield started


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own, free to restart or kill."""
    with LocalBroker(workdir=tmp_path / "broker") as started:
        yield started


@pytest.fixture
def mqtt_client_factory(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """``factory(client_id=None, *, broker=None, clean_session=True) -> connected paho client``.

    The client runs ``loop_start``, has its CONNACK and reconnects within 0.1-1 s if the broker
    goes away; ``broker`` defaults to the session one.
    Every client made is disconnected and its loop stopped at teardown.
    """
    made: list[mqtt.Client] = []

    def factory(
        client_id: str | None = None,
        *,
        broker: LocalBroker | None = None,
        clean_session: bool = True,
        timeout: float = 5.0,
    ) -> mqtt.Client:
        target = broker if broker is not None else request.getfixturevalue("broker")
        connected = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{next(_ids)}",
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )

        def on_connect(c: mqtt.Client, u: object, flags: object, rc: object, props: object) -> None:
            if not getattr(rc, "is_failure", True):
                connected.set()

        client.on_connect = on_connect
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # quick after a broker restart
        made.append(client)
        client.connect(target.host, target.port, keepalive=30)
        client.loop_start()
        if not connected.wait(timeout):
            raise AssertionError(f"no CONNACK from {target.address} within {timeout} s")
        return client

    yield factory
    for client in made:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def runtimes() -> Iterator[list[AgentRuntime]]:
    """Agent runtimes a test started (tests.live.start_agents), stopped at teardown."""
    started: list[AgentRuntime] = []
    yield started
    for runtime in started:
        runtime.stop()
