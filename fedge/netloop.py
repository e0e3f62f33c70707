"""One thread doing the socket I/O of many MQTT sessions (epoll via ``selectors``).

Sessions (``fedge.mqtt.Session``) register their sockets here; the loop reads and writes
for them, runs their keepalive and reconnects, and runs calls other threads hand over with
``call_soon``, so every paho call happens on this one thread.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedge.mqtt import Session

log = logging.getLogger(__name__)


def _safely(fn: Callable[[], None], who: str) -> None:
    """Callbacks never take the network loop down with them."""
    try:
        fn()
    except Exception:
        log.exception("%s: callback failed", who)


class NetworkLoop:
    """One thread doing the socket I/O of many sessions (epoll via ``selectors``)."""

    def __init__(self, name: str = "fedge-mqtt") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._sessions: list[Session] = []
        self._calls: list[Callable[[], None]] = []
        self._calls_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full wake pipe must never block the loop itself
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._woken = False
        self._thread: threading.Thread | None = None
        self._last_pass = time.monotonic()  # the loop's last pass: a wedged loop stops it

    def add(self, session: Session) -> Session:
        """Attach a session; it connects (and keeps reconnecting) from the loop thread."""
        session._loop = self
        self.call_soon(lambda: self._sessions.append(session))
        return session

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (thread-safe)."""
        with self._calls_lock:
            self._calls.append(fn)
            if self._woken or threading.current_thread() is self._thread:
                return  # the loop drains calls before it sleeps again
            self._woken = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full, so the loop is awake anyway

    def start(self) -> NetworkLoop:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def healthy(self, max_silence: float = 30.0) -> bool:
        """The thread runs and made a pass within ``max_silence`` seconds (what a daemon's
        watchdog checks: a callback stuck forever leaves the thread alive but deaf)."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and time.monotonic() - self._last_pass < max_silence

    def stop(self, timeout: float = 3.0) -> None:
        """Close every session cleanly, then end the thread."""
        for session in list(self._sessions):
            session.close()
        deadline = time.monotonic() + timeout
        while self._calls and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self.call_soon(lambda: None)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop.is_set():
            self._drain_calls()
            now = self._last_pass = time.monotonic()
            if now - last_misc >= 0.25:
                for session in self._sessions:
                    _safely(functools.partial(session._maintain, now), session.client_id)
                last_misc = now
            for key, events in self._selector.select(timeout=0.1):
                if key.data is None:
                    self._drain_wake()
                    continue
                session = key.data
                if events & selectors.EVENT_READ:
                    _safely(session._read, session.client_id)
                if events & selectors.EVENT_WRITE and session._client.socket() is not None:
                    _safely(session._client.loop_write, session.client_id)
        self._drain_calls()

    def _drain_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
            self._woken = False
        for fn in calls:
            _safely(fn, self.name)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _watch(self, session: Session, sock: object) -> None:
        try:
            self._selector.register(sock, selectors.EVENT_READ, session)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            self._selector.modify(sock, selectors.EVENT_READ, session)  # type: ignore[arg-type]

    def _unwatch(self, sock: object) -> None:
        try:
            self._selector.unregister(sock)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            pass

    def _want(self, sock: object, write: bool) -> None:
        try:
            key = self._selector.get_key(sock)  # type: ignore[arg-type]
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        if key.events != events:
            self._selector.modify(sock, events, key.data)  # type: ignore[arg-type]
