"""A small TCP proxy that breaks links on demand: put one between each agent and the broker.

Each mode stands for a failure a device's link really has; switch it while connections live:

- ``restore()`` (pass): forward both ways, as a healthy link does.
- ``delay(s)``: every chunk waits ``s`` seconds before it goes on, in order, both ways: a
  congested cellular link whose round trip stretches to seconds while nothing is lost.
- ``drop()``: live connections are reset on both sides (RST, via SO_LINGER 0), and new ones
  are reset as soon as they are accepted, until restored: the Wi-Fi is gone or the access
  point reboots; both ends learn at once and the device retries until the link is back.
- ``half_open()``: connections stay open but nothing goes through, either way, and neither end
  sees a FIN or an RST: a NAT or firewall that silently forgot the flow. The client learns
  only through its keepalive (a PINGREQ with no PINGRESP), the broker through its keepalive
  timeout (1.5 x keepalive). A connection caught in it stays dead after ``restore()``, as a
  forgotten flow does, and so does one opened meanwhile; connections opened afterwards pass.
"""

from __future__ import annotations

import collections
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

CHUNK = 65536
HIGH_WATER = 1 << 20  # stop reading a side while this much waits to be written to the other
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


class _Pipe:
    """One direction of a link: chunks waiting for their time, then bytes being sent."""

    def __init__(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.src, self.dst, self.up = src, dst, up
        self.chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self.out = bytearray()
        self.ended = False  # src sent FIN: close the link once what came before is out
        self.last_due = 0.0

    def size(self) -> int:
        return len(self.out) + sum(len(chunk) for _, chunk in self.chunks)


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.socks = [s for s in (client, upstream) if s is not None]
        self.dead = upstream is None  # blackholed for good: reads are swallowed, nothing sent
        self.pipes = [] if upstream is None else [_Pipe(client, upstream, True)]
        self.pipes += [_Pipe(upstream, client, False)] if upstream else []


class FaultProxy:
    """``with FaultProxy(broker.host, broker.port) as link:`` then connect to ``link.port``.

    Counters: ``accepted`` / ``refused`` connections, ``bytes_up`` (client to target) and
    ``bytes_down`` forwarded, ``received_up`` read from clients (so ``received_up - bytes_up``
    is held or lost on the way), ``blackholed`` bytes swallowed while half-open.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self.accepted = self.refused = self.bytes_up = self.bytes_down = self.blackholed = 0
        self.received_up = 0
        self.mode, self._delay = "pass", 0.0
        self._links: list[_Link] = []
        self._events: dict[socket.socket, int] = {}
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._closed = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._listener, READ, "listen")
        self._sel.register(self._wake_r, READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.port}")
        self._thread.daemon = True
        self._thread.start()

    @property
    def connections(self) -> int:
        """Connections still open on either side (dead ones included)."""
        return len(self._links)

    def restore(self) -> None:
        self._switch("pass", 0.0)

    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._switch("delay" if seconds else "pass", seconds)

    def drop(self) -> None:
        self._switch("drop", 0.0)

    def half_open(self) -> None:
        self._switch("half_open", 0.0)

    def close(self) -> None:
        """Reset every connection and stop listening; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake_w.send(b"\0")
        self._thread.join(5)
        for link in list(self._links):
            self._kill(link)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _switch(self, mode: str, delay: float) -> None:
        """Apply a mode on the proxy's thread; returns once live connections feel it."""
        if self._closed:
            raise RuntimeError("the proxy is closed")
        done = threading.Event()

        def apply() -> None:
            self.mode, self._delay = mode, delay
            for link in list(self._links):
                if mode == "drop":
                    self._kill(link)
                elif mode == "half_open" and not link.dead:  # in-flight bytes die with the flow
                    self.blackholed += sum(pipe.size() for pipe in link.pipes)
                    link.dead, link.pipes = True, []
            done.set()

        self._calls.put(apply)
        self._wake_w.send(b"\0")
        if not done.wait(5):
            raise RuntimeError("the proxy's thread did not respond")

    # -- the proxy's thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            while not self._calls.empty():
                self._calls.get()()
            timeout = self._flush()
            self._update_interest()
            for key, events in self._sel.select(timeout):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.data == "listen":
                    self._accept()
                elif key.data in self._links and events & READ:
                    self._read(key.data, key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        upstream = None
        try:
            if self.mode == "drop":
                raise ConnectionResetError
            if self.mode != "half_open":  # a link that is down carries no SYN to the broker
                upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            self.refused += 1
            return reset(client)
        self.accepted += 1
        link = _Link(client, upstream)
        for sock in link.socks:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(link)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        try:
            data: bytes | None = sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = None  # reset by the peer
        if link.dead:  # swallow; an end that gives up leaves the other one unaware
            self.blackholed += len(data or b"")
            if not data:
                self._forget(sock)
                link.socks.remove(sock)
                sock.close()
                if not link.socks:
                    self._links.remove(link)
        elif data is None:
            self._kill(link)  # a reset travels on as a reset
        else:
            pipe = next(p for p in link.pipes if p.src is sock)
            self.received_up += len(data) if pipe.up else 0
            pipe.ended = not data
            pipe.last_due = max(time.monotonic() + self._delay, pipe.last_due)
            if data:
                pipe.chunks.append((pipe.last_due, data))

    def _flush(self) -> float | None:
        """Send what is due; seconds until the next chunk is due (None: nothing waits)."""
        now, wait = time.monotonic(), None
        for link in list(self._links):
            for pipe in link.pipes:
                while pipe.chunks and pipe.chunks[0][0] <= now:
                    pipe.out += pipe.chunks.popleft()[1]
                if pipe.chunks:
                    wait = min(wait or 1e9, pipe.chunks[0][0] - now)
                if pipe.out:
                    try:
                        sent = pipe.dst.send(pipe.out)
                    except BlockingIOError:
                        continue
                    except OSError:
                        self._kill(link)
                        break
                    del pipe.out[:sent]
                    if pipe.up:
                        self.bytes_up += sent
                    else:
                        self.bytes_down += sent
                if pipe.ended and not pipe.size():
                    self._kill(link, graceful=True)
                    break
        return wait

    def _update_interest(self) -> None:
        for link in self._links:
            for sock in link.socks:
                events = READ
                for pipe in link.pipes:
                    if pipe.src is sock and (pipe.ended or len(pipe.out) > HIGH_WATER):
                        events &= ~READ
                    if pipe.dst is sock and pipe.out:
                        events |= WRITE
                had = self._events.get(sock, 0)
                if events != had:
                    self._forget(sock)
                    if events:
                        self._sel.register(sock, events, link)
                        self._events[sock] = events

    def _forget(self, sock: socket.socket) -> None:
        if self._events.pop(sock, 0):
            self._sel.unregister(sock)

    def _kill(self, link: _Link, graceful: bool = False) -> None:
        for sock in link.socks:
            self._forget(sock)
            sock.close() if graceful else reset(sock)
        if link in self._links:
            self._links.remove(link)
