"""systemd's notify protocol (sd_notify), without libsystemd: one datagram per state change.

A ``Type=notify`` unit is "started" when the daemon says ``READY=1``, and with
``WatchdogSec=`` systemd restarts it unless ``WATCHDOG=1`` arrives in time. The daemons send
the watchdog from their main loop, so a wedged loop (not just a dead process) gets restarted.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address
        self.watchdog_s = _watchdog_interval(env)
        self._last_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False (logged once) if it cannot."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode("utf-8"))
            return True
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self._address, exc)
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self, now: float | None = None) -> None:
        """Ping the watchdog at half its interval (call it from the main loop, often)."""
        if not self.watchdog_s:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_watchdog >= self.watchdog_s / 2:
            self._last_watchdog = now
            self.notify("WATCHDOG=1")


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float:
    """Seconds between required pings, or 0 when the watchdog is off or meant for another pid."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 1e6
