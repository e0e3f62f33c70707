"""The acknowledgement ledger without a broker: nothing is acknowledged before it is saved."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from aggregator.acks import AckLedger
from fedge.mqtt import Incoming


class Recorder:
    def __init__(self) -> None:
        self.now = 0.0
        self.events: list[str] = []

    def ack(self, messages: Sequence[Incoming]) -> None:
        self.events.extend(f"ack {m.mid}" for m in messages)

    def save(self) -> None:
        self.events.append("save")


def message(mid: int) -> Incoming:
    return Incoming("fedge/f/update/c", b"", False, 1, mid, 1)


def ledger(batch: int = 3, interval_s: float = 1.0) -> tuple[AckLedger, Recorder]:
    rec = Recorder()
    return AckLedger(
        rec.ack, rec.save, batch=batch, interval_s=interval_s, clock=lambda: rec.now
    ), rec


def test_accepted_updates_are_acknowledged_only_after_the_snapshot_in_arrival_order() -> None:
    acks, rec = ledger(batch=3)
    acks.received(message(1), True)
    acks.received(message(2), False)  # a refusal behind an unsaved update waits for it
    acks.received(message(3), True)
    acks.settle_if_due(inbox_empty=False)
    assert rec.events == [] and acks.unsaved == 2
    acks.received(message(4), True)
    acks.settle_if_due(inbox_empty=False)  # the batch is full
    assert rec.events == ["save", "ack 1", "ack 2", "ack 3", "ack 4"]
    assert acks.snapshots == 1 and acks.unsaved == 0


def test_an_idle_inbox_or_the_interval_settles_a_partial_batch() -> None:
    acks, rec = ledger(batch=10, interval_s=0.5)
    acks.received(message(1), True)
    acks.settle_if_due(inbox_empty=True)
    assert rec.events == ["save", "ack 1"]
    acks.received(message(2), True)
    rec.now = 0.4
    acks.settle_if_due(inbox_empty=False)
    assert rec.events[-1] == "ack 1"
    rec.now = 0.6
    acks.settle_if_due(inbox_empty=False)
    assert rec.events[-2:] == ["save", "ack 2"]


def test_refusals_with_nothing_unsaved_ahead_are_acknowledged_at_once_without_a_write() -> None:
    acks, rec = ledger()
    acks.received(message(7), False)
    acks.settle_if_due(inbox_empty=False)
    assert rec.events == ["ack 7"] and acks.snapshots == 0


def test_a_round_checkpoint_covers_what_is_held() -> None:
    acks, rec = ledger(batch=5)
    acks.received(message(1), True)
    acks.saved_elsewhere()
    assert rec.events == ["ack 1"] and acks.unsaved == 0


def test_a_failed_save_acknowledges_nothing() -> None:
    def boom() -> None:
        raise OSError("disk full")

    rec = Recorder()
    acks = AckLedger(rec.ack, boom, batch=1)
    acks.received(message(1), True)
    with pytest.raises(OSError):
        acks.settle()
    assert rec.events == [] and acks.unsaved == 1


def test_enrolment_follows_rewrites_of_the_clients_file_and_survives_a_bad_one(tmp_path) -> None:
    import os

    from aggregator.enrolment import Enrolment

    path = tmp_path / "clients.txt"
    path.write_text("# devices\ndev-a\ndev-b  # the garage\n")
    enrolment = Enrolment(str(path))
    assert enrolment.clients == {"dev-a", "dev-b"} and enrolment.changed() is None
    path.write_text("dev-a\ndev-c\n")
    os.utime(path, ns=(1, 10**18))  # a rewrite within the same clock tick still shows
    assert enrolment.changed() == {"dev-a", "dev-c"}
    path.write_text("dev-a\nnot/a/name\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert enrolment.changed() is None and enrolment.clients == {"dev-a", "dev-c"}
    assert Enrolment("").clients is None  # no list: everyone may send
