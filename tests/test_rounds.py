"""The round state machine without a broker: FedAvg exactness, rejections change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.rounds import RoundRules, RoundState
from aggregator.strategies import FedAvg
from fedge import params as P
from fedge.wire import pack, unpack
from tests.helpers import LAYOUT, MODEL, delta, update_payload, weights


def open_round(codec: str = "float32", **rules: object) -> RoundState:
    return RoundState(
        "fed", 1, weights(), MODEL, LAYOUT, RoundRules(codec=codec, **rules), deadline_ms=10**12
    )


def expected_fedavg(base: P.Params, deltas: list[P.Params], counts: list[int]) -> P.Params:
    """FedAvg written directly: the example-weighted mean of the clients' parameters."""
    clients = [P.add(base, d) for d in deltas]
    total = sum(counts)
    pairs = list(zip(clients, counts, strict=True))
    return {n: sum(c[n].astype(np.float64) * k for c, k in pairs) / total for n in base}


def test_fedavg_equals_the_weighted_mean_of_client_models_exactly_for_float32() -> None:
    state = open_round("float32")
    counts = [5, 17, 40, 1]
    for i, n in enumerate(counts):
        assert state.offer(
            f"c{i}",
            update_payload(f"c{i}", 1, weights(), delta(i), num_examples=n, federation="fed"),
        ).accepted
    got = state.close()
    want = expected_fedavg(weights(), [delta(i) for i in range(4)], counts)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-7)


def test_fedavg_with_int8_is_within_the_quantisation_bound() -> None:
    state = open_round("int8")
    counts = [3, 9, 30]
    scales = []
    for i, n in enumerate(counts):
        payload = update_payload(
            f"c{i}", 1, weights(), delta(i), codec="int8", num_examples=n, federation="fed", seed=i
        )
        per_tensor = np.frombuffer(unpack(payload)["delta"]["scales"], dtype="<f4")
        scales.append(dict(zip([name for name, _ in LAYOUT], per_tensor, strict=True)))
        assert state.offer(f"c{i}", payload).accepted
    got = state.close()
    want = expected_fedavg(weights(), [delta(i) for i in range(3)], counts)
    total = sum(counts)
    for name in want:
        bound = sum(k * s[name] for k, s in zip(counts, scales, strict=True)) / total + 1e-6
        assert np.max(np.abs(got[name] - want[name])) <= bound


def test_fold_order_does_not_matter() -> None:
    a, b = FedAvg(), FedAvg()
    a.start(weights())
    b.start(weights())
    for i in range(5):
        a.fold(delta(i), i + 1)
    for i in reversed(range(5)):
        b.fold(delta(i), i + 1)
    assert P.allclose(a.finish(), b.finish(), atol=1e-7)


def test_strategy_state_restores_the_open_round() -> None:
    a = FedAvg()
    a.start(weights())
    a.fold(delta(0), 3)
    b = FedAvg()
    b.start(weights())
    b.restore(a.state())
    a.fold(delta(1), 2)
    b.fold(delta(1), 2)
    assert P.allclose(a.finish(), b.finish(), atol=0)


def snapshot(state: RoundState) -> tuple:
    return (
        dict(state.contributors),
        state.uplink_bytes,
        state.strategy.state()["total"],
        {n: v.copy() for n, v in state.strategy.finish().items()},
    )


def same(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and P.allclose(a[3], b[3], atol=0)


def good(client: str = "c9", **kw: object) -> bytes:
    kw.setdefault("federation", "fed")
    return update_payload(client, 1, weights(), delta(9), **kw)  # type: ignore[arg-type]


def nan_delta() -> bytes:
    d = delta(9)
    d["dense0.b"][0] = np.nan
    from fedge.params import flatten
    from fedge.wire import Update

    wire = unpack(good())
    wire["delta"]["data"] = flatten(d).astype("<f4").tobytes()  # the encoder refuses NaN
    Update.from_wire(wire)
    return pack(wire)


def wrong_shape() -> bytes:
    wire = unpack(good())
    wire["delta"]["n"] += 1  # a delta for another layout
    return pack(wire)


@pytest.mark.parametrize(
    ("client", "payload", "reason"),
    [
        ("c9", b"\x00garbage", "malformed"),
        ("c9", b"\x80" * 5000, "oversize"),
        ("c9", lambda: wrong_shape(), "shape"),
        ("c9", lambda: nan_delta(), "nonfinite"),
        ("c9", lambda: good(round=0), "stale"),
        ("c9", lambda: good(round=2), "future"),
        ("c9", lambda: pack({**unpack(good()), "base": b"\x01" * 32}), "stale"),
        ("c8", lambda: good("c9"), "sender"),
        ("c9", lambda: good(federation="other"), "federation"),
        ("c9", lambda: good(model={"id": "logreg", "hash": b"\x02" * 32}), "model"),
        ("c9", lambda: good(codec="int8"), "malformed"),
        ("c0", lambda: good("c0"), "duplicate"),
    ],
)
def test_each_bad_update_is_rejected_with_its_reason_and_changes_nothing(
    client, payload, reason
) -> None:
    from fedge.wire import Limits

    state = open_round("float32")
    state.limits = Limits(max_bytes=4096)
    assert state.offer(
        "c0", update_payload("c0", 1, weights(), delta(0), federation="fed")
    ).accepted
    before = snapshot(state)
    verdict = state.offer(client, payload() if callable(payload) else payload)
    assert not verdict.accepted and verdict.reason == reason, verdict
    assert same(before, snapshot(state))
    assert state.rejected[reason] == 1


def test_norm_bound_rejects_large_updates() -> None:
    state = open_round("float32", max_update_norm=0.01)
    verdict = state.offer("c1", update_payload("c1", 1, weights(), delta(1), federation="fed"))
    assert verdict.reason == "norm"


def test_round_closes_when_every_expected_client_reported() -> None:
    state = open_round("float32", min_clients=2)
    online = {"c0", "c1", "c2"}
    for i in range(2):
        state.offer(f"c{i}", update_payload(f"c{i}", 1, weights(), delta(i), federation="fed"))
        assert not state.ready(0, online)
    state.offer("c2", update_payload("c2", 1, weights(), delta(2), federation="fed"))
    assert state.ready(0, online)


def test_deadline_without_quorum_extends_and_never_closes_short() -> None:
    state = open_round("float32", min_clients=2, round_timeout_s=5)
    state.offer("c0", update_payload("c0", 1, weights(), delta(0), federation="fed"))
    late = state.deadline_ms + 1
    assert not state.ready(late, {"c0", "c1"}) and state.overdue(late)
    state.extend(late)
    assert state.deadline_ms == late + 5000 and state.extensions == 1
    with pytest.raises(RuntimeError):
        state.close()


def test_deadline_with_quorum_closes_with_what_arrived() -> None:
    state = open_round("float32", min_clients=1)
    state.offer("c0", update_payload("c0", 1, weights(), delta(0), federation="fed"))
    assert not state.ready(0, {"c0", "c1"})
    assert state.ready(state.deadline_ms, {"c0", "c1"})


def test_float32_bytes_is_the_size_the_same_update_has_with_the_float32_codec() -> None:
    state = open_round("int8")
    payload = update_payload("c1", 1, weights(), delta(1), codec="int8", federation="fed")
    assert state.offer("c1", payload).accepted
    as_float32 = update_payload("c1", 1, weights(), delta(1), codec="float32", federation="fed")
    assert state.uplink_bytes == len(payload) < state.float32_bytes == len(as_float32)


def test_with_a_float16_downlink_updates_must_start_from_the_float16_weights() -> None:
    from fedge.wire import Global, encode

    state = open_round("float32", downlink="float16")
    sent = Global("fed", 1, "agg", MODEL, weights(), 0, weights_codec="float16")
    received = Global.from_wire(unpack(encode(sent)), LAYOUT)
    assert received.weights_hash == sent.weights_hash == state.base_hash
    assert not P.allclose(received.weights, weights(), atol=0)  # float16 really rounded them
    from_float16 = update_payload("c1", 1, received.weights, delta(1), federation="fed")
    from_float32 = update_payload("c2", 1, weights(), delta(2), federation="fed")
    assert state.offer("c1", from_float16).accepted
    assert state.offer("c2", from_float32).reason == "stale"


def test_a_round_restored_from_its_snapshot_closes_exactly_like_the_original(tmp_path) -> None:
    from aggregator import checkpoint

    original = open_round("int8")
    for i in range(3):
        payload = update_payload(f"c{i}", 1, weights(), delta(i), codec="int8", num_examples=i + 1)
        assert original.offer(f"c{i}", payload).accepted
    original.offer("c0", b"junk")
    checkpoint.save_round(tmp_path, original.snapshot())
    resumed = open_round("int8")
    resumed.restore(checkpoint.load_round(tmp_path))
    assert resumed.contributors == original.contributors and resumed.count == 3
    assert resumed.opened_ms == original.opened_ms and resumed.rejected == original.rejected
    # a redelivered update of a contributor is a duplicate, not a second vote
    again = update_payload("c1", 1, weights(), delta(1), codec="int8", num_examples=2)
    assert resumed.offer("c1", again).reason == "duplicate"
    late = update_payload("c3", 1, weights(), delta(3), codec="int8", num_examples=4)
    for state in (original, resumed):
        assert state.offer("c3", late).accepted
    assert P.allclose(original.close(), resumed.close(), atol=0)


def test_a_snapshot_of_another_round_or_global_is_refused() -> None:
    snapshot = open_round().snapshot()
    other = RoundState(
        "fed", 2, weights(), MODEL, LAYOUT, RoundRules(codec="float32"), deadline_ms=0
    )
    with pytest.raises(ValueError):
        other.restore(snapshot)
    moved = RoundState(
        "fed", 1, weights(seed=5), MODEL, LAYOUT, RoundRules(codec="float32"), deadline_ms=0
    )
    with pytest.raises(ValueError):
        moved.restore(snapshot)


def test_updates_from_clients_not_enrolled_are_refused() -> None:
    state = open_round(clients=frozenset({"c0"}))
    assert state.offer("c0", update_payload("c0", 1, weights(), delta(0))).accepted
    verdict = state.offer("c9", update_payload("c9", 1, weights(), delta(9)))
    assert verdict.reason == "unknown_client" and state.count == 1


def test_a_validation_bug_refuses_the_update_as_internal_and_changes_nothing(monkeypatch) -> None:
    state = open_round()
    before = state.snapshot()

    def broken(*args: object) -> None:
        raise IndexError("a bug in a decoder")

    monkeypatch.setattr(state, "_validate", broken)
    verdict = state.offer("c0", update_payload("c0", 1, weights(), delta(0)))
    assert verdict.reason == "internal" and state.rejected["internal"] == 1
    after = state.snapshot()
    after["rejected"], before["rejected"] = {}, {}
    assert after == before
