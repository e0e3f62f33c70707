"""The fault proxy itself, with plain sockets: it forwards, delays, drops and goes half-open."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


@pytest.fixture
def proxy(server: socket.socket) -> Iterator[FaultProxy]:
    with FaultProxy(*server.getsockname()[:2]) as started:
        yield started


def connect(proxy: FaultProxy, server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client through the proxy and the server's end of the same connection."""
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    server.settimeout(5)
    far, _ = server.accept()
    far.settimeout(5)
    return client, far


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def silent(sock: socket.socket, seconds: float) -> bool:
    """True when ``sock`` delivers nothing at all (no data, no FIN, no RST) for ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except OSError:
        return False
    return False


def test_forwards_both_ways_and_counts_bytes(proxy, server) -> None:
    client, far = connect(proxy, server)
    with client, far:
        client.sendall(b"hello broker")
        assert recv_exactly(far, 12) == b"hello broker"
        far.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
        big = bytes(range(256)) * 4096  # 1 MiB: more than one chunk, in order
        client.sendall(big)
        assert recv_exactly(far, len(big)) == big
    assert proxy.accepted == 1
    wait_for(lambda: proxy.bytes_up == 12 + len(big) and proxy.bytes_down == 2, 2, "counters")
    wait_for(lambda: proxy.connections == 0, 2, "the link closed after both ends did")


def test_delay_holds_every_chunk_in_order_both_ways(proxy, server) -> None:
    client, far = connect(proxy, server)
    with client, far:
        proxy.delay(0.3)
        started = time.monotonic()
        for part in (b"one ", b"two ", b"three"):
            client.sendall(part)
            time.sleep(0.05)
        assert recv_exactly(far, 4) == b"one "
        assert 0.28 <= time.monotonic() - started < 0.6
        assert recv_exactly(far, 9) == b"two three"
        started = time.monotonic()
        far.sendall(b"back")
        assert recv_exactly(client, 4) == b"back"
        assert 0.28 <= time.monotonic() - started < 0.6
        proxy.restore()
        started = time.monotonic()
        client.sendall(b"now")
        assert recv_exactly(far, 3) == b"now"
        assert time.monotonic() - started < 0.1


def test_drop_resets_live_connections_and_new_ones_until_restored(proxy, server) -> None:
    client, far = connect(proxy, server)
    with client, far:
        proxy.drop()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        with pytest.raises(ConnectionResetError):
            far.recv(1)
    with pytest.raises(ConnectionResetError):  # at connect or first read: the proxy resets it
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as refused:
            refused.recv(1)
    assert proxy.refused == 1
    proxy.restore()
    client, far = connect(proxy, server)
    with client, far:
        client.sendall(b"back")
        assert recv_exactly(far, 4) == b"back"


def test_half_open_forwards_nothing_and_closes_nothing(proxy, server) -> None:
    client, far = connect(proxy, server)
    with client, far:
        client.sendall(b"before")
        assert recv_exactly(far, 6) == b"before"
        proxy.half_open()
        client.sendall(b"PINGREQ")
        far.sendall(b"PINGRESP")
        assert silent(far, 0.3) and silent(client, 0.3)
        client.close()  # the client gives up: the server must not hear of it
        assert silent(far, 0.3)
        proxy.restore()  # the forgotten flow stays dead; a new one passes
        far.sendall(b"late")
        assert silent(far, 0.2)
        fresh, fresh_far = connect(proxy, server)
        with fresh, fresh_far:
            fresh.sendall(b"new flow")
            assert recv_exactly(fresh_far, 8) == b"new flow"
    wait_for(lambda: proxy.blackholed == len(b"PINGREQ" + b"PINGRESP" + b"late"), 2, "swallowed")
    wait_for(lambda: proxy.bytes_up == len(b"before" + b"new flow"), 2, "forwarded")


def test_a_connection_made_while_half_open_reaches_nothing(proxy, server) -> None:
    proxy.half_open()
    client = socket.create_connection((proxy.host, proxy.port), timeout=5)
    with client:
        client.sendall(b"CONNECT")
        assert silent(client, 0.3)
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.accept()  # no SYN went to the broker
    assert proxy.accepted == 1 and proxy.bytes_up == 0


def test_close_resets_connections_and_stops_listening(server) -> None:
    proxy = FaultProxy(*server.getsockname()[:2])
    client, far = connect(proxy, server)
    with client, far:
        proxy.close()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=2)
    proxy.close()  # twice is fine
    with pytest.raises(RuntimeError):
        proxy.drop()
