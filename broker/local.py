"""A private Mosquitto on a free loopback port, for the tests and the fleet emulator.

Each ``LocalBroker`` owns one work directory (config, log, data) and one ``mosquitto`` process
in its own session, so Ctrl-C reaches only the parent, which then stops the broker. An
``atexit`` hook stops every broker still running, so a crashed run never leaves one behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt

from broker.config import (
    DEFAULT_MAX_PACKET_SIZE,
    _check_limits,
    find_mosquitto,
    free_port,
    render_config,
)
from fedge.errors import BrokerError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
REBIND_TIMEOUT_S = 5.0  # restart(): the same port may be briefly unavailable
AUTO_PORT_ATTEMPTS = 3  # free_port() races with other processes; try a new port this often
CONFIG_NAME = "mosquitto.conf"
LOG_NAME = "mosquitto.log"
_READY = " running"  # "mosquitto version X running": logged once every listener is bound
_PORT_IN_USE = "Address already in use"


class _PortInUse(Exception):
    """Mosquitto could not bind its port; the caller may try again or pick another."""


class LocalBroker:
    """A private Mosquitto: ``with LocalBroker() as b: connect(b.host, b.port)``."""

    def __init__(
        self,
        *,
        workdir: str | Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        persistence: bool = True,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> None:
        _check_limits(port, max_packet_size)  # fail at construction, not at start()
        self._host = host
        self._requested_port = port
        self._port = port
        self._persistence = persistence
        self._max_packet_size = max_packet_size
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- what callers read ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the broker has no port until it is started", reason="not_started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for IPv6), as ``fedge.mqtt.BrokerAddress.parse`` reads."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise BrokerError(
                "the broker has no work directory until started", reason="not_started"
            )
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the broker's log ("" before start or after cleanup)."""
        if self._workdir is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max(4096, 200 * n)))
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-n:])

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LocalBroker:
        """Start and wait until an MQTT client can connect (≤ 10 s); no-op if running."""
        with self._lock:
            if self.running:
                return self
            exe = find_mosquitto()
            self._prepare_workdir()
            try:
                if self._requested_port is None:
                    self._launch_on_free_port(exe)
                else:
                    self._launch(exe, self._requested_port, rebind_s=0.0)
            except BaseException:  # Ctrl-C while waiting included: leave no broker behind
                self._halt()
                self._cleanup_workdir()
                raise
            _running.add(self)
            return self

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 5 s; remove the work directory if we created it. Idempotent."""
        with self._lock:
            self._halt()
            _running.discard(self)
            self._cleanup_workdir()

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (nothing saved since the last autosave): for fault tests."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                log.info("killing mosquitto pid %d on %s", self._proc.pid, self.address)
                self._proc.kill()
                self._proc.wait()

    def restart(self) -> LocalBroker:
        """Stop and start again on the same port, so clients reconnect to the same address."""
        with self._lock:
            if self._port is None:
                return self.start()
            self._halt()
            self._prepare_workdir()
            _running.add(self)  # a failed restart is still stopped at exit
            try:
                self._launch(find_mosquitto(), self._port, rebind_s=REBIND_TIMEOUT_S)
            except BaseException:
                self._halt()
                raise
            return self

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        where = self.address if self._port is not None else "no port"
        return f"LocalBroker({where}, {state})"

    # -- internals --------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        if self._workdir is None:
            if self._requested_workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="fedge-broker-"))
                self._owns_workdir = True
            else:
                self._workdir = self._requested_workdir
        (self._workdir / "data").mkdir(parents=True, exist_ok=True)

    def _cleanup_workdir(self) -> None:
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._owns_workdir = False

    def _launch_on_free_port(self, exe: str) -> None:
        for attempt in range(1, AUTO_PORT_ATTEMPTS + 1):
            port = free_port(self._host)
            try:
                self._spawn(exe, port)
                self._port = port
                return
            except _PortInUse:
                log.info("port %d was taken before mosquitto bound it (try %d)", port, attempt)
        raise BrokerError(
            f"mosquitto found no free port on {self._host} in {AUTO_PORT_ATTEMPTS} tries; "
            f"log tail:\n{self.log_tail()}",
            reason="port_in_use",
        )

    def _launch(self, exe: str, port: int, *, rebind_s: float) -> None:
        """Start on ``port``; while it is in use, retry for ``rebind_s`` seconds, then raise."""
        deadline = time.monotonic() + rebind_s
        while True:
            try:
                self._spawn(exe, port)
                self._port = port
                return
            except _PortInUse:
                if time.monotonic() >= deadline:
                    raise BrokerError(
                        f"port {self._host}:{port} is in use; log tail:\n{self.log_tail()}",
                        reason="port_in_use",
                    ) from None
                time.sleep(0.2)

    def _spawn(self, exe: str, port: int) -> None:
        workdir = self.workdir
        config = workdir / CONFIG_NAME
        config.write_text(
            render_config(
                port=port,
                host=self._host,
                data_dir=workdir / "data",
                log_file=self.log_path,
                persistence=self._persistence,
                max_packet_size=self._max_packet_size,
            ),
            encoding="utf-8",
        )
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # stdout/stderr into the same log: errors printed before Mosquitto opens its log file
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [exe, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("mosquitto pid %d starting on %s:%d", self._proc.pid, self._host, port)
        self._wait_ready(self._proc, port, offset)
        log.info("mosquitto pid %d ready on %s:%d", self._proc.pid, self._host, port)

    def _accepts_clients(self, port: int, timeout: float) -> bool:
        """The readiness probe: an MQTT CONNECT is answered (a site broker probes TLS)."""
        return _accepts_tcp(self._host, port) and _mqtt_connects(self._host, port, timeout)

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, offset: int) -> None:
        """Ready = our process logged "running" (so the port is ours) and the probe passes."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = proc.poll()
            text = self._log_since(offset)
            if code is not None:
                self._proc = None
                if _PORT_IN_USE in text:
                    raise _PortInUse(port)
                raise BrokerError(
                    f"mosquitto exited with code {code} while starting on {self._host}:{port}; "
                    f"log tail:\n{self.log_tail()}",
                    reason="start_failed",
                )
            left = deadline - time.monotonic()
            if _READY in text and self._accepts_clients(port, min(1.0, max(left, 0.1))):
                return
            if left <= 0:
                self._halt()
                raise BrokerError(
                    f"mosquitto did not accept clients on {self._host}:{port} "
                    f"within {START_TIMEOUT_S:.0f} s; log tail:\n{self.log_tail()}",
                    reason="start_timeout",
                )
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _halt(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and reap it; keep the work directory."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto pid %d ignored SIGTERM for 5 s; killing it", proc.pid)
                proc.kill()
                proc.wait()
        log.info("mosquitto pid %d stopped (exit %s)", proc.pid, proc.returncode)


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _mqtt_connects(host: str, port: int, timeout: float) -> bool:
    """One MQTT CONNECT/CONNACK round trip: proves a broker, not just a listening socket."""
    acked = threading.Event()

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        if not getattr(rc, "is_failure", True):
            acked.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"fedge-broker-probe-{os.getpid()}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not acked.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
        if acked.is_set():
            client.disconnect()
        return acked.is_set()
    except OSError:
        return False
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()


_running: set[LocalBroker] = set()


@atexit.register
def _stop_all() -> None:
    """A crashed or interrupted run must not leave brokers behind."""
    for broker in list(_running):
        try:
            broker.stop()
        except Exception:  # at exit: stop the others regardless
            log.exception("could not stop %r", broker)
