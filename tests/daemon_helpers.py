"""Run the real daemon CLIs as systemd would: a notify socket, stderr read line by line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedge.protocol import Topics
from fedge.wire import Status, unpack


class NotifyListener:
    """systemd's side of sd_notify: a bound AF_UNIX datagram socket, each message recorded
    with its arrival time by a reader thread.

    The socket lives in a short temporary directory: an AF_UNIX path has at most 107 bytes,
    which pytest's tmp_path can exceed.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fedge-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, text in list(self.messages):
                if predicate(text):
                    return text
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s; got {self.texts()}")

    def texts(self) -> list[str]:
        return [text for _, text in self.messages]

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, text in self.messages if start <= t <= end and text == "WATCHDOG=1")

    def close(self) -> None:
        self._closed.set()
        self._reader.join(1)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """``python -m <module> ARGS`` with NOTIFY_SOCKET and WATCHDOG_USEC, stderr collected."""

    def __init__(self, module: str, args: list[str], notify: NotifyListener, watchdog_s: float):
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(int(watchdog_s * 1e6)))
        env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r}:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def log(self) -> str:
        self._reader.join(timeout=2)
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def retained_status(factory, federation: str, client: str, timeout: float = 5) -> Status:
    """The status the broker holds for ``client`` right now (its retained message)."""
    got: list[bytes] = []
    reader = factory()
    reader.on_message = lambda c, u, m: got.append(m.payload)
    reader.subscribe(Topics(federation).status(client), qos=1)
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    reader.disconnect()
    assert got and got[0], f"no retained status for {client}"
    return Status.from_wire(unpack(got[0]))


def statuses(factory, federation: str, client: str) -> tuple[list[Status], Callable[[], None]]:
    """Every status ``client`` publishes from now on (a live list) and a function to stop."""
    seen: list[Status] = []
    reader = factory()

    def on_message(c: object, u: object, m: Any) -> None:
        if m.payload:
            seen.append(Status.from_wire(unpack(m.payload)))

    reader.on_message = on_message
    reader.subscribe(Topics(federation).status(client), qos=1)
    return seen, reader.disconnect


def write_toml(path: Path, **values: object) -> Path:
    from fedge.config import toml_value

    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path
