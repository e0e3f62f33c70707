"""Envelopes: every kind round-trips; every malformed input is a typed WireError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import WireError
from fedge.params import allclose
from fedge.protocol import Kind, Topics, is_sampled
from fedge.wire import Global, Hyper, Limits, Metrics, Status, Task, Update, encode, pack, unpack
from tests.helpers import LAYOUT, MODEL, SPEC, delta, update_payload, weights


def test_task_round_trips() -> None:
    task = Task("fed", "aggregator", MODEL, SPEC, LAYOUT, Hyper(2, 16, 0.05), "int8")
    back = Task.from_wire(unpack(encode(task)))
    assert back.model == MODEL and back.layout == LAYOUT and back.codec == "int8"
    assert back.hyper.epochs == 2 and abs(back.hyper.lr - 0.05) < 1e-7


def test_global_round_trips_and_checks_its_hash() -> None:
    message = Global("fed", 3, "aggregator", MODEL, weights(), 123, 0.5, 2)
    back = Global.from_wire(unpack(encode(message)), LAYOUT)
    assert back.round == 3 and allclose(back.weights, weights(), atol=0)
    tampered = message.to_wire()
    tampered["weights_hash"] = bytes(32)
    with pytest.raises(WireError, match="weights_hash"):
        Global.from_wire(unpack(pack(tampered)), LAYOUT)


def test_update_round_trips_and_decodes_its_delta() -> None:
    payload = update_payload("c1", 1, weights(), delta(1))
    update = Update.from_wire(unpack(payload))
    assert update.sender == "c1" and update.num_examples == 10
    assert allclose(update.decode_delta(LAYOUT, {"float32"}), delta(1), atol=0)


def test_status_and_metrics_round_trip() -> None:
    status = Status.from_wire(unpack(encode(Status("fed", "c1", "online", 2, caps={"a": 1}))))
    assert status.state == "online" and status.caps == {"a": 1}
    metrics = Metrics.from_wire(unpack(encode(Metrics("fed", 2, "c1", {"loss": 1.5}))))
    assert metrics.values == {"loss": 1.5}


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(WireError) as info:
        unpack(b"\x80" * 2000, Limits(max_bytes=1000))
    assert info.value.reason == "oversize"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        b"\x81\xa1a",
        msgpack.packb({1: 2}),
        b"\xdd\xff\xff\xff\xff",
    ],
)
def test_garbage_is_malformed(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        unpack(payload)
    assert info.value.reason == "malformed"


def nested(depth: int, container: bytes = b"\x91") -> bytes:
    """msgpack bytes of ``depth`` one-element arrays (``\x91``) or maps (``\x81\xa1k``)
    around nil: deeper than msgpack's own packer will write."""
    return container * depth + b"\xc0"


@pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"])
@pytest.mark.parametrize("depth", [31, 32, 999, 1000, 1023])
def test_deeply_nested_fields_are_malformed_not_a_recursion_error(
    container: bytes, depth: int
) -> None:
    """Regression: a field nested ~1000 deep once escaped ``from_wire`` as a RecursionError
    (from ``repr`` in the refusal message), which stopped the aggregator's thread."""
    body = b"\x81\xa1v" + nested(depth, container)  # {"v": [[[...]]]}
    for decode in (Update.from_wire, Task.from_wire, Status.from_wire, Metrics.from_wire):
        with pytest.raises(WireError) as info:
            decode(unpack(body))
        # the message map is level 1: 31 more levels are within the limit of 32
        assert info.value.reason == ("version" if depth <= 31 else "malformed")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("v", 1, "version"),
        ("kind", "global", "kind"),
        ("round", -1, "malformed"),
        ("round", "1", "malformed"),
        ("round", True, "malformed"),
        ("sender", "a/b", "malformed"),
        ("num_examples", 0, "malformed"),
        ("base", b"short", "malformed"),
        ("model", {"id": "x"}, "malformed"),
        ("metrics", {"loss": float("inf")}, "nonfinite"),
        ("delta", "nope", "malformed"),
    ],
)
def test_update_field_errors_have_reasons(field: str, value: object, reason: str) -> None:
    wire = unpack(update_payload("c1", 1, weights(), delta(1)))
    wire[field] = value
    with pytest.raises(WireError) as info:
        Update.from_wire(unpack(pack(wire))).decode_delta(LAYOUT, {"float32"})
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("task", "layout", [["w", [2**28, 2**28, 2**28]]]),  # 2**84: int64 products wrap to 0
        ("task", "layout", [["w", [2**16, 2**16, 2**16, 2**16]]]),
        ("task", "hyper", {"epochs": 1, "batch_size": 1, "lr": 0.0}),
        ("global", "fraction", 0.0),
    ],
)
def test_values_outside_the_documented_ranges_are_malformed(
    kind: str, field: str, value: object
) -> None:
    """Regression (found by tests/test_fuzz.py): these were accepted."""
    if kind == "task":
        message = Task("fed", "aggregator", MODEL, SPEC, LAYOUT, Hyper(2, 16, 0.05), "int8")
    else:
        message = Global("fed", 3, "aggregator", MODEL, weights(), 123, 0.5, 2)
    wire = {**message.to_wire(), field: value}
    with pytest.raises(WireError) as info:
        (Task.from_wire if kind == "task" else lambda m: Global.from_wire(m, LAYOUT))(
            unpack(pack(wire))
        )
    assert info.value.reason == "malformed"


@given(st.binary(max_size=512))
@settings(max_examples=1500, deadline=None)
def test_random_bytes_never_escape_as_anything_but_wire_error(payload: bytes) -> None:
    for decode in (
        lambda m: Update.from_wire(m).decode_delta(LAYOUT, {"int8"}),
        lambda m: Global.from_wire(m, LAYOUT),
        Task.from_wire,
        Status.from_wire,
    ):
        try:
            decode(unpack(payload))
        except WireError:
            pass


@given(st.data())
@settings(max_examples=800, deadline=None)
def test_mutated_updates_never_escape_as_anything_but_wire_error(data: st.DataObject) -> None:
    wire = unpack(update_payload("c1", 1, weights(), delta(1), codec="int8"))
    key = data.draw(st.sampled_from(sorted(wire)))
    ints = st.integers(-(2**63), 2**64 - 1)
    wire[key] = data.draw(
        st.one_of(
            st.none(),
            ints,
            st.floats(width=32),
            st.text(max_size=5),
            st.binary(max_size=40),
            st.lists(ints, max_size=3),
            st.dictionaries(st.text(max_size=3), ints, max_size=3),
        )
    )
    try:
        Update.from_wire(unpack(pack(wire))).decode_delta(LAYOUT, {"int8"})
    except WireError:
        pass


def test_topics_build_and_parse() -> None:
    topics = Topics("lab")
    assert topics.update("pi-1") == "fedge/lab/update/pi-1"
    assert topics.parse("fedge/lab/update/pi-1") == (Kind.UPDATE, "pi-1")
    assert topics.parse("fedge/lab/global") == (Kind.GLOBAL, None)
    assert topics.parse("fedge/other/global") is None
    assert topics.parse("fedge/lab/update/a/b") is None
    with pytest.raises(ValueError):
        topics.update("a+b")


def test_sampling_is_deterministic_and_matches_the_fraction() -> None:
    picks = [is_sampled("lab", 7, f"c{i}", 0.3) for i in range(4000)]
    assert picks == [is_sampled("lab", 7, f"c{i}", 0.3) for i in range(4000)]
    assert 0.27 < np.mean(picks) < 0.33
    assert picks != [is_sampled("lab", 8, f"c{i}", 0.3) for i in range(4000)]


def test_history_keeps_a_record_once_and_survives_a_torn_line(tmp_path) -> None:
    from fedge import history

    path = tmp_path / "h.jsonl"
    assert history.append_missing(path, {"round": 1, "opened": 5})
    assert not history.append_missing(path, {"round": 1, "opened": 5, "ts": 9})
    with open(path, "ab") as handle:
        handle.write(b'{"round": 2, "ope')  # a crash mid-write
    assert history.append_missing(path, {"round": 2, "opened": 6})
    assert [r["round"] for r in history.read(path)] == [1, 2]


def test_a_refusal_quoting_a_huge_hostile_value_stays_a_short_log_line() -> None:
    hostile = msgpack.packb({"v": "x" * 4000, "kind": "update"})  # strings up to 4 KiB pass
    with pytest.raises(WireError) as refused:
        Update.from_wire(unpack(hostile))
    assert refused.value.reason == "version" and len(str(refused.value)) <= 300
