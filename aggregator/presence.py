"""Who is online: the agents' retained ``status`` messages (and the broker's wills).

The round closes early once every online sampled agent has reported, so this set must follow
the fleet: ``online`` adds, any other state (offline, declined, error) or a cleared retained
message removes.
"""

from __future__ import annotations

from fedge.errors import WireError
from fedge.wire import Limits, Status, unpack


class Presence:
    def __init__(self, federation: str, limits: Limits) -> None:
        self.federation = federation
        self.limits = limits
        self.online: set[str] = set()

    def update(self, client: str, payload: bytes) -> None:
        """Apply one status message; a bad one raises WireError and changes nothing."""
        if not payload:  # a cleared retained status
            self.online.discard(client)
            return
        status = Status.from_wire(unpack(payload, self.limits), self.limits)
        if status.sender != client or status.federation != self.federation:
            raise WireError("sender or federation", reason="sender")
        if status.state == "online":
            self.online.add(client)
        else:
            self.online.discard(client)
