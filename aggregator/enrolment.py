"""Enrolled clients: the aggregator refuses updates from anyone not on the list.

``fedge-broker`` rewrites the list (``aggregator/clients.txt``) on add-device and
revoke-device; the aggregator notices the rewrite when it opens the next round.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedge.errors import ConfigError
from fedge.protocol import valid_name

log = logging.getLogger(__name__)


def read_clients_file(path: str) -> frozenset[str]:
    """Enrolled client ids, one per line (``#`` comments); updates from others are refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"key 'clients_file': cannot read {path}: {exc}") from None
    clients = {line.split("#", 1)[0].strip() for line in lines} - {""}
    bad = sorted(c for c in clients if not valid_name(c))
    if bad:
        raise ConfigError(f"key 'clients_file': {path}: not client ids: {', '.join(bad[:5])}")
    return frozenset(clients)


def _stamp(path: str) -> tuple[int, int] | None:
    """(mtime, size) of a file, to notice a rewrite; None when unset or missing."""
    try:
        info = os.stat(path) if path else None
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size) if info else None


class Enrolment:
    """The list in ``path`` ("" = everyone may send), re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self.clients = read_clients_file(path) if path else None

    def changed(self) -> frozenset[str] | None:
        """The new list when the file was rewritten since the last look, else None. A file
        that became unreadable keeps the old list (logged): refusing everyone would stop the
        federation, admitting everyone would open it."""
        stamp = _stamp(self.path)
        if not self.path or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            clients = read_clients_file(self.path)
        except ConfigError as exc:
            log.error("%s; keeping the %d enrolled clients", exc, len(self.clients or ()))
            return None
        self.clients = clients
        log.info("enrolled clients: %d (from %s)", len(clients), self.path)
        return clients
