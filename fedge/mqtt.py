"""The one module that imports paho-mqtt: MQTT sessions driven by a shared network loop.

A ``NetworkLoop`` owns one thread that does all socket I/O for any number of ``Session``s
(select over their sockets, keepalive, reconnect with jittered exponential backoff). Every
paho call happens on that thread; other threads talk to a session through ``publish`` (which
returns a ``Future`` resolved when the broker acknowledges a QoS 1 message) and receive
messages through the ``on_message`` callback, which runs on the loop thread and must be quick.
One loop per daemon; the fleet emulator hosts hundreds of agents' sessions on one loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from fedge.credentials import TlsFiles
from fedge.errors import BrokerError
from fedge.netloop import NetworkLoop, _safely

__all__ = ["BrokerAddress", "Incoming", "NetworkLoop", "Session", "Will"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        """'host:port' (or 'host', port 1883); '[v6addr]:port' for IPv6."""
        host, sep, port = text.rpartition(":")
        if not sep or "]" in port:
            host, port = text, "1883"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"broker address {text!r} is not HOST:PORT")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker if the session ends without a clean disconnect."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Incoming:
    """A received message. ``mid`` and ``connection`` identify it for a manual acknowledgement:
    a packet id means something only on the connection that delivered it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    mid: int = 0
    connection: int = 0


class Session:
    """One MQTT client identity: subscriptions restored on every (re)connect, a will, QoS 1."""

    def __init__(
        self,
        client_id: str,
        broker: BrokerAddress,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[Incoming], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        will: Will | None = None,
        keepalive: int = 30,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_queued: int = 1000,
        manual_ack: bool = False,
    ) -> None:
        self.client_id = client_id
        self.broker = broker
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connect = on_connect
        self.keepalive = keepalive
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._connected = threading.Event()
        self._closed = False
        self._attempts = 0
        self._next_attempt = 0.0
        self._pending: dict[int, Future[None]] = {}
        self._loop: NetworkLoop | None = None
        self.connects = 0
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:  # verifies the broker's certificate and host name
            client.tls_set(tls.ca_file, tls.cert_file or None, tls.key_file or None)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_queued_messages_set(max_queued)
        client.max_inflight_messages_set(64)
        client.connect_timeout = 5.0
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._socket_wants_write
        client.on_socket_unregister_write = self._socket_wrote_all
        client.connect_async(broker.host, broker.port, keepalive)
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Future[None]:
        """Queue a message; the future resolves when the broker acks it (QoS 1) or it is sent.

        While disconnected, QoS 1 messages wait in the session (bounded by ``max_queued``) and
        go out after reconnecting; the future fails if the queue is full or the session closes.
        """
        future: Future[None] = Future()
        if self._loop is None:
            future.set_exception(BrokerError("session is not attached to a running loop"))
            return future
        self._loop.call_soon(lambda: self._do_publish(topic, payload, qos, retain, future))
        return future

    def ack(self, messages: Sequence[Incoming]) -> None:
        """Acknowledge QoS 1 messages (with ``manual_ack``), in the order given.

        Until acknowledged, the broker holds a message and delivers it again after a
        reconnect. A message from an earlier connection is not acknowledged here: its packet
        id is void, and the broker redelivers it on the current one.
        """
        wanted = [m for m in messages if m.qos > 0]
        if wanted and self._loop is not None:
            self._loop.call_soon(lambda: self._do_ack(wanted))

    def close(self) -> None:
        """Disconnect cleanly (the broker does not publish the will)."""
        if self._loop is not None:
            self._loop.call_soon(self._do_close)

    # -- loop thread only ------------------------------------------------------------------

    def _socket_opened(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._loop is not None:
            self._loop._watch(self, sock)

    def _socket_closed(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._loop is not None:
            self._loop._unwatch(sock)

    def _socket_wants_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._loop is not None:
            self._loop._want(sock, True)

    def _socket_wrote_all(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._loop is not None:
            self._loop._want(sock, False)

    def _read(self) -> None:
        """Read, then what TLS already decrypted: select() cannot see those buffered bytes."""
        self._client.loop_read()
        for _ in range(10_000):  # bounded: every read consumes buffered bytes
            sock = self._client.socket()
            if sock is None or not getattr(sock, "pending", lambda: 0)():
                return
            self._client.loop_read()

    def _do_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, future: Future[None]
    ) -> None:
        if self._closed:
            future.set_exception(BrokerError(f"session {self.client_id} is closed"))
            return
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            future.set_exception(BrokerError(f"publish refused: {paho.error_string(info.rc)}"))
        elif qos == 0:
            future.set_result(None)
        else:
            self._pending[info.mid] = future

    def _do_ack(self, messages: Sequence[Incoming]) -> None:
        if self._closed or not self._client.is_connected():
            return
        for message in messages:
            if message.connection == self.connects:
                self._client.ack(message.mid, message.qos)

    def _do_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client.is_connected():
            self._client.disconnect()
            self._client.loop_write()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerError(f"session {self.client_id} closed"))
        self._pending.clear()
        self._connected.clear()

    def _maintain(self, now: float) -> None:
        """Connect when due; keepalive otherwise."""
        if self._closed:
            return
        if self._client.socket() is not None:
            self._client.loop_misc()
            return
        if now < self._next_attempt:
            return
        self._attempts += 1
        delay = min(self.max_backoff, self.min_backoff * 2 ** min(self._attempts - 1, 16))
        self._next_attempt = now + delay * random.uniform(0.5, 1.0)
        try:
            self._client.reconnect()
        except (OSError, ValueError) as exc:
            log.info(
                "%s: cannot reach broker %s (%s); retry in %.1fs",
                self.client_id,
                self.broker,
                exc,
                self._next_attempt - now,
            )

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason_code: paho.ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.warning("%s: broker refused connection: %s", self.client_id, reason_code)
            return
        self._attempts = 0
        self.connects += 1
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos)
        self._connected.set()
        log.debug("%s: connected to %s", self.client_id, self.broker)
        if self.on_connect is not None:
            _safely(self.on_connect, self.client_id)

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: object,
        reason_code: paho.ReasonCode,
        properties: object,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._closed:
            log.info("%s: disconnected (%s); reconnecting", self.client_id, reason_code)
            self._next_attempt = time.monotonic() + self.min_backoff * random.uniform(0.5, 1.0)

    def _handle_message(
        self, client: paho.Client, userdata: object, message: paho.MQTTMessage
    ) -> None:
        if self.on_message is not None:
            incoming = Incoming(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                int(message.qos),
                int(message.mid),
                self.connects,
            )
            _safely(lambda: self.on_message(incoming), self.client_id)  # type: ignore[misc]

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: paho.ReasonCode,
        properties: object,
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)
