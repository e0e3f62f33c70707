"""Acknowledge to the broker only what is on disk: the aggregator's at-least-once boundary.

The broker keeps a QoS 1 message for our persistent session until we acknowledge it and
delivers it again after a reconnect. So every received message waits here until what it
changed (an accepted update folded into the round) is in the round snapshot on disk; then
the whole backlog is acknowledged in arrival order. A crash before that loses nothing: the
broker redelivers. A crash after it counts nothing twice: the snapshot names the contributors,
and a second update from one of them is refused as a duplicate.

Snapshots are batched: one write for up to ``batch`` accepted updates, written when the
inbox runs dry, when the batch is full, or ``interval_s`` after the first unsaved update.
Messages that changed nothing (refusals, statuses) are acknowledged as soon as nothing
unsaved is ahead of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fedge.mqtt import Incoming


class AckLedger:
    def __init__(
        self,
        ack: Callable[[Sequence[Incoming]], None],
        save: Callable[[], None],
        *,
        batch: int = 32,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch < 1 or interval_s < 0:
            raise ValueError("batch must be >= 1 and interval_s >= 0")
        self._ack, self._save = ack, save
        self.batch, self.interval_s = batch, interval_s
        self._clock = clock
        self._held: list[Incoming] = []
        self._unsaved = 0
        self._first_unsaved = 0.0
        self.snapshots = 0  # how many snapshot writes so far (the cost side of batching)

    @property
    def unsaved(self) -> int:
        """Accepted updates not yet on disk."""
        return self._unsaved

    def received(self, message: Incoming, changed_state: bool) -> None:
        """Hold ``message`` until it may be acknowledged."""
        self._held.append(message)
        if changed_state:
            if not self._unsaved:
                self._first_unsaved = self._clock()
            self._unsaved += 1

    def settle_if_due(self, inbox_empty: bool) -> None:
        """Save and acknowledge when the batch rule says so; acknowledge at once what
        waits on nothing unsaved."""
        if not self._held:
            return
        if not self._unsaved:
            self._release()
        elif (
            inbox_empty
            or self._unsaved >= self.batch
            or self._clock() - self._first_unsaved >= self.interval_s
        ):
            self.settle()

    def settle(self) -> None:
        """Write the snapshot (if anything is unsaved), then acknowledge everything held."""
        if self._unsaved:
            self._save()
            self.snapshots += 1
            self._unsaved = 0
        self._release()

    def saved_elsewhere(self) -> None:
        """Another durable write (the round checkpoint) now covers every held message."""
        self._unsaved = 0
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, []
        if held:
            self._ack(held)
