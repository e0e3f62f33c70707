"""Topic layout, message kinds and the protocol version: the names both sides agree on."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

VERSION = 2
"""Wire protocol version carried in every message as ``v``."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class Kind(str, Enum):
    """Message kinds; each has exactly one topic (see ``Topics``)."""

    TASK = "task"
    GLOBAL = "global"
    UPDATE = "update"
    STATUS = "status"
    METRICS = "metrics"


def valid_name(name: str) -> bool:
    """Client ids and federation names: 1-64 chars of [A-Za-z0-9_.-], no MQTT wildcards or '/'."""
    return isinstance(name, str) and bool(_NAME.match(name))


def require_name(name: str, what: str) -> str:
    if not valid_name(name):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "(starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Topics:
    """Topics of one federation under a prefix (default ``fedge/<federation>/``)."""

    federation: str
    prefix: str = ""

    def __post_init__(self) -> None:
        require_name(self.federation, "federation name")
        if not self.prefix:
            object.__setattr__(self, "prefix", f"fedge/{self.federation}/")
        if not self.prefix.endswith("/") or "+" in self.prefix or "#" in self.prefix:
            raise ValueError(f"topic prefix {self.prefix!r} must end with '/' and hold no wildcard")

    @property
    def task(self) -> str:
        return self.prefix + "task"

    @property
    def global_model(self) -> str:
        return self.prefix + "global"

    def update(self, client: str) -> str:
        return self.prefix + "update/" + require_name(client, "client id")

    def status(self, client: str) -> str:
        return self.prefix + "status/" + require_name(client, "client id")

    def metrics(self, client: str) -> str:
        return self.prefix + "metrics/" + require_name(client, "client id")

    @property
    def all_updates(self) -> str:
        return self.prefix + "update/+"

    @property
    def all_status(self) -> str:
        return self.prefix + "status/+"

    @property
    def all_metrics(self) -> str:
        return self.prefix + "metrics/+"

    def parse(self, topic: str) -> tuple[Kind, str | None] | None:
        """(kind, client or None) for a topic of this federation, else None."""
        if not topic.startswith(self.prefix):
            return None
        rest = topic[len(self.prefix) :]
        if rest == "task":
            return Kind.TASK, None
        if rest == "global":
            return Kind.GLOBAL, None
        head, sep, client = rest.partition("/")
        if not sep or not valid_name(client):
            return None
        for kind in (Kind.UPDATE, Kind.STATUS, Kind.METRICS):
            if head == kind.value:
                return kind, client
        return None


def is_sampled(federation: str, round_number: int, client: str, fraction: float) -> bool:
    """Whether ``client`` trains in this round: SHA-256(federation|round|client) below fraction.

    Every agent decides alone and the aggregator can recompute the same answer, so no
    per-device selection message is needed.
    """
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"{federation}|{round_number}|{client}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2.0**64
    return draw < fraction
