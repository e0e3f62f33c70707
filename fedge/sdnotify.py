"""systemd's notify protocol (sd_notify), without libsystemd: one datagram per state change.

A ``Type=notify`` unit is "started" when the daemon says ``READY=1``, and with
``WatchdogSec=`` systemd restarts it unless ``WATCHDOG=1`` arrives in time. The daemons send
the watchdog from their main loop, and only while their network loop is alive, so a wedged
daemon (not just a dead process) gets restarted. Outside systemd (no ``NOTIFY_SOCKET``) every
call is a no-op. The protocol: sd_notify(3), one ``KEY=value`` per line in an AF_UNIX
datagram to the socket named by ``NOTIFY_SOCKET`` (``@name``: the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Tells systemd (if it is listening) that the daemon is ready, alive or stopping."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address
        self.watchdog_s = watchdog_interval(env)
        self._last_watchdog: float | None = None  # never pinged: the first call pings
        self._last_status = ""
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False if it cannot (logged once, not per
        watchdog ping: a vanished socket must not flood the journal)."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode("utf-8"))
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %r failed: %s", self._address.lstrip("\0"), exc)
            self._failed = True
            return False

    def ready(self, status: str = "") -> None:
        self._last_status = status or self._last_status
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """``systemctl status`` shows the latest text; sent only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self, now: float | None = None) -> None:
        """Ping the watchdog at most every half interval (call it from the main loop, often)."""
        if not self.watchdog_s:
            return
        now = time.monotonic() if now is None else now
        if self._last_watchdog is None or now - self._last_watchdog >= self.watchdog_s / 2:
            self._last_watchdog = now
            self.notify("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str]) -> float:
    """Seconds between required pings, or 0 when the watchdog is off or meant for another pid."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 1e6
