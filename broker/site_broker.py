"""A real Mosquitto running a secure site's own config (tests, ``fedge-fleet --secure``).

The lifecycle is ``LocalBroker``'s (own session, SIGTERM then SIGKILL, stopped at exit, a new
free port when the one picked was taken); what differs is the config (the site's, TLS and
passwords, so readiness is a TLS handshake with the site's CA rather than an anonymous MQTT
CONNECT) and that the site directory is never deleted.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from broker.local import LocalBroker
from broker.site import Site, load_site, move_listener
from fedge.errors import BrokerError

log = logging.getLogger(__name__)

RELOADED = "Reloading config"  # what Mosquitto 2 logs on SIGHUP


class SiteBroker(LocalBroker):
    """``with SiteBroker(site_dir) as b:`` on a free loopback port (``keep_port``: the site's)."""

    def __init__(self, root: str | Path, *, keep_port: bool = False) -> None:
        self.site: Site = load_site(root)
        super().__init__(
            workdir=self.site.root,
            port=self.site.port if keep_port else None,
            host=self.site.host,
        )

    def stop(self) -> None:
        super().stop()
        self.site.files.pid.unlink(missing_ok=True)

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP: Mosquitto reloads the password file and the ACL; returns once it has."""
        if self._proc is None or not self.running:
            raise BrokerError("the site broker is not running", reason="not_started")
        offset = self.log_path.stat().st_size
        os.kill(self._proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while RELOADED not in self._log_since(offset):
            if time.monotonic() > deadline:
                raise BrokerError("mosquitto did not log a reload", reason="reload")
            time.sleep(0.02)

    def _spawn(self, exe: str, port: int) -> None:
        if port != self.site.port:
            self.site = move_listener(self.site, port)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [exe, "-c", str(self.site.files.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.site.files.pid.write_text(f"{self._proc.pid}\n")
        log.info("site mosquitto pid %d starting on %s", self._proc.pid, self.site.address)
        self._wait_ready(self._proc, port, offset)

    def _accepts_clients(self, port: int, timeout: float) -> bool:
        return _tls_handshake(self.site, port)


def _tls_handshake(site: Site, port: int) -> bool:
    """A full TLS handshake verifying the broker's certificate against the site's CA."""
    context = ssl.create_default_context(cafile=str(site.files.ca_cert))
    if site.client_certs:  # the broker wants one: show the aggregator's
        folder = site.files.aggregator
        context.load_cert_chain(folder / "client.crt", folder / "client.key")
    try:
        with socket.create_connection((site.host, port), timeout=1.0) as raw:
            with context.wrap_socket(raw, server_hostname=site.host) as tls:
                tls.unwrap()  # close_notify: the broker logs no "unexpected eof"
                return True
    except (OSError, ssl.SSLError):
        return False
