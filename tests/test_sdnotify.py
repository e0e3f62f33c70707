"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.sdnotify import Notifier, watchdog_interval


class NotifySocket:
    """What systemd's manager does: a bound datagram socket; each datagram is one message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.5)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return out


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path)
    yield path, sock
    sock.sock.close()


def test_ready_status_and_stopping_arrive_as_datagrams(listener) -> None:
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("connected to broker")
    notifier.status("round 3")
    notifier.status("round 3")  # unchanged: not sent again
    notifier.stopping()
    assert sock.messages() == [
        "READY=1\nSTATUS=connected to broker",
        "STATUS=round 3",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_the_abstract_namespace_address_works(tmp_path: Path) -> None:
    name = f"@fedge-test-{os.getpid()}-{tmp_path.name}"
    sock = NotifySocket(name)
    try:
        Notifier({"NOTIFY_SOCKET": name}).ready()
        assert sock.messages() == ["READY=1"]
    finally:
        sock.sock.close()


def test_watchdog_pings_at_half_the_interval_from_the_first_call(listener) -> None:
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    assert notifier.watchdog_s == 10.0
    for now in (1.0, 3.0, 5.9, 6.0, 8.0, 11.0):  # pings at 1.0, 6.0 and 11.0
        notifier.watchdog(now)
    assert sock.messages() == ["WATCHDOG=1"] * 3


def test_watchdog_is_off_without_usec_or_for_another_pid() -> None:
    assert watchdog_interval({}) == 0
    assert watchdog_interval({"WATCHDOG_USEC": "abc"}) == 0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) == 0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    notifier.watchdog()  # no socket, no interval: nothing happens, nothing raises


def test_a_vanished_socket_is_logged_once_not_per_ping(tmp_path: Path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "1000000"})
    with caplog.at_level(logging.WARNING, logger="fedge.sdnotify"):
        for now in range(10):
            notifier.watchdog(float(now))
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1
