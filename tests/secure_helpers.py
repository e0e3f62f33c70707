"""Clients of a secure site for tests: paho with the site's TLS, and the real mosquitto_* tools."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from broker.site import Site
from broker.site_files import AGGREGATOR_USER


def password_of(site: Site, user: str) -> str:
    folder = site.files.aggregator if user == AGGREGATOR_USER else site.files.device(user)
    return (folder / "password").read_text().strip()


@dataclass
class Peer:
    """A paho client of the site that records what it receives and how its connection went."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)
    lost: threading.Event = field(default_factory=threading.Event)
    received: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.received]

    def subscribe(self, topic: str, wait: float = 0.3) -> None:
        self.client.subscribe(topic, 1)
        time.sleep(wait)  # SUBACK and any retained messages

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1, waiting for the PUBACK (which the broker sends even when its ACL drops it)."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def peer(
    site: Site,
    user: str | None,
    *,
    password: str | None = None,
    client_id: str | None = None,
    tls: bool = True,
    port: int | None = None,
    cert: tuple[Path, Path] | None = None,
    ca: Path | None = None,
    wait: float = 5.0,
) -> Peer:
    """Connect as ``user`` (its provisioned password unless given); returns once CONNACK or loss."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or user or "anonymous",
        protocol=mqtt.MQTTv311,
    )
    p = Peer(client)
    if user is not None:
        client.username_pw_set(user, password if password is not None else password_of(site, user))
    if tls:
        client.tls_set(
            str(ca or site.files.ca_cert),
            str(cert[0]) if cert else None,
            str(cert[1]) if cert else None,
        )

    def on_connect(c: mqtt.Client, u: object, flags: object, rc: object, props: object) -> None:
        if getattr(rc, "is_failure", True):
            p.refused.append(str(rc))
        else:
            p.connected.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: p.lost.set()
    client.on_message = lambda c, u, m: p.received.append((m.topic, bytes(m.payload), m.retain))
    try:
        client.connect(site.host, port or site.port, keepalive=30)
    except OSError as exc:  # TLS verification failures surface here
        p.refused.append(f"{type(exc).__name__}: {exc}")
        p.lost.set()
        return p
    client.loop_start()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not (
        p.connected.is_set() or p.refused or p.lost.is_set()
    ):
        time.sleep(0.01)
    if not p.connected.is_set():
        client.loop_stop()
    return p


def tool_args(site: Site, user: str, *, tls: bool = True) -> list[str]:
    """mosquitto_sub / mosquitto_pub arguments: host, port, the site's CA, user, password."""
    args = ["-h", site.host, "-p", str(site.port), "-u", user, "-P", password_of(site, user)]
    return args + (["--cafile", str(site.files.ca_cert)] if tls else [])


def mosquitto_pub(site: Site, user: str, topic: str, message: str, *extra: str) -> int:
    done = subprocess.run(
        ["mosquitto_pub", *tool_args(site, user), "-t", topic, "-m", message, "-q", "1", *extra],
        capture_output=True,
        timeout=20,
    )
    return done.returncode


class ToolSubscriber:
    """A real ``mosquitto_sub`` of the site: started, subscribed (SUBACK seen), lines collected."""

    def __init__(self, site: Site, user: str, topic: str, seconds: int = 20) -> None:
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", *tool_args(site, user), "-t", topic, "-v", "-d"]
            + ["-W", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.subscribed.wait(10):
            self.stop()
            raise AssertionError(f"mosquitto_sub as {user} never subscribed: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "received SUBACK" in line:
                self.subscribed.set()

    def messages(self) -> list[str]:
        """``topic payload`` lines (the debug lines of -d start with 'Client')."""
        return [line for line in self.lines if line.startswith("fedge/")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(5)
