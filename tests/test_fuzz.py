"""Fuzz, without a broker: every decoder an agent or the aggregator applies to network input,
fed thousands of hostile messages derived from valid ones (``tests/fuzzing.py``).

What must hold for every input: only a ``WireError`` with a known ``Reason`` comes out (or the
receiver's own refusal verdict); a message that is accepted is within the documented limits;
and a refused update leaves the round exactly as it was, down to the bytes of the sums.

test_wire.py and test_codecs.py fuzz random bytes and one top-level field of an update or
an encoded vector; these go deeper: every message kind, fields at any depth, the fields
inside a zstd/zlib stage, float64 NaN/Inf, 64-bit extremes, deep nesting, damaged bytes, and
the agent's and the round's handlers rather than the bare decoders.

4,800 cases by default (about 25 s); ``FEDGE_FUZZ_SCALE=20 pytest tests/test_fuzz.py`` runs
twenty times as many.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.core import AgentCore
from aggregator.daemon import Aggregator
from aggregator.rounds import RoundRules, RoundState
from fedge.codecs import Pipeline, accepted_names, decode_params, encode_params
from fedge.config import AggregatorConfig, load
from fedge.errors import WireError
from fedge.mqtt import Incoming
from fedge.params import content_hash
from fedge.wire import (
    STATES,
    Global,
    Hyper,
    Limits,
    Metrics,
    Reason,
    Status,
    Task,
    Update,
    encode,
    unpack,
)
from tests.fuzzing import (
    damaged,
    encode_any,
    examples,
    hostile,
    inner_mutated,
    nested,
    with_raw_field,
)
from tests.helpers import LAYOUT, MODEL, SPEC, delta, update_payload
from tests.helpers import weights as _weights

REASONS = {r.value for r in Reason}
MAX_BYTES = 16 * 1024  # small, so oversize payloads stay cheap
LIMITS = Limits(max_bytes=MAX_BYTES)
CODECS = [
    "int8",
    "float32",
    "float16",
    "int4:block=5",
    "int2:block=4,round=nearest",
    "sign:block=6",
    "topk:0.3+int8",
    "topk:4+int4:block=3+zlib",
    "int8+zstd",
    "topk:0.5+float16+zstd",
    "sign+zlib",
]
weights = functools.cache(_weights)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def valid_update(codec: str, client: str = "c1") -> dict[str, Any]:
    return unpack(update_payload(client, 1, weights(), delta(1), codec=codec))


@functools.cache
def valid_messages() -> dict[str, dict[str, Any]]:
    return {
        "update": valid_update("topk:4+int4:block=3+zlib"),
        "global": unpack(encode(Global("fed", 3, "agg", MODEL, weights(), 123, 0.5, 2))),
        "global16": unpack(
            encode(
                Global(
                    "fed",
                    1,
                    "agg",
                    MODEL,
                    weights(),
                    0,
                    metrics={"loss": 0.5},
                    opened=9,
                    weights_codec="float16",
                )
            )
        ),
        "task": unpack(encode(Task("fed", "agg", MODEL, SPEC, LAYOUT, Hyper(2, 16, 0.05), "int8"))),
        "status": unpack(encode(Status("fed", "c1", "online", 2, "", {"num_examples": 10}))),
        "metrics": unpack(encode(Metrics("fed", 2, "c1", {"loss": 1.5, "accuracy": 0.5}))),
    }


def within_limits(kind: str, message: Any) -> None:
    """What an accepted message promises its receiver (docs/protocol.md)."""
    if kind == "task":
        assert 0 < len(message.layout) <= 256
        assert all(len(s) <= 8 and all(0 < d <= 2**28 for d in s) for _, s in message.layout)
        assert sum(math.prod(s) for _, s in message.layout) <= 2**28
        assert 1 <= message.hyper.epochs <= 1000 and message.hyper.batch_size >= 1
        assert 0 < message.hyper.lr <= 100
        assert Pipeline(message.codec).name == message.codec
    elif kind.startswith("global"):
        assert 0 < message.fraction <= 1 and message.min_clients >= 1
        assert [(n, w.shape) for n, w in message.weights.items()] == LAYOUT
        assert all(np.all(np.isfinite(w)) for w in message.weights.values())
        assert content_hash(message.weights) == message.weights_hash
    elif kind == "update":
        assert message.num_examples >= 1 and len(message.base) == 32
    elif kind == "status":
        assert message.state in STATES and len(message.caps) <= 32
    if kind in ("update", "metrics") or kind.startswith("global"):
        values = message.values if kind == "metrics" else message.metrics
        assert len(values) <= 32 and all(math.isfinite(v) for v in values.values())
    assert message.round >= 0


DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "update": lambda m: Update.from_wire(m, LIMITS),
    "global": lambda m: Global.from_wire(m, LAYOUT, LIMITS),
    "global16": lambda m: Global.from_wire(m, LAYOUT, LIMITS),
    "task": lambda m: Task.from_wire(m, LIMITS),
    "status": lambda m: Status.from_wire(m, LIMITS),
    "metrics": lambda m: Metrics.from_wire(m, LIMITS),
}
NESTED = {"update": ("delta",), "global": ("weights",), "global16": ("weights",)}


@given(kind=st.sampled_from(sorted(DECODERS)), data=st.data())
@settings(FUZZ, max_examples=examples(1500))
def test_every_decoder_refuses_with_a_reason_or_returns_a_message_within_the_limits(
    kind: str, data: st.DataObject
) -> None:
    wire = valid_messages()[kind]
    payload = data.draw(hostile(wire, nested_keys=NESTED.get(kind, ()), max_bytes=MAX_BYTES))
    try:
        message = DECODERS[kind](unpack(payload, LIMITS))
        if kind == "update":
            message.decode_delta(LAYOUT, accepted_names("topk:4+int4:block=3+zlib"))
    except WireError as exc:
        assert exc.reason in REASONS, exc.reason
        event(f"{kind}: {exc.reason}")
        return
    event(f"{kind}: accepted")
    within_limits(kind, message)


def comparable(state: RoundState) -> dict[str, Any]:
    """Everything a round snapshot holds but the refusal counts: contributors, byte counts,
    clock and the strategy's sums as raw bytes."""
    snap = state.snapshot()
    del snap["rejected"]
    return snap


@given(codec=st.sampled_from(CODECS), data=st.data())
@settings(FUZZ, max_examples=examples(1500))
def test_a_refused_update_changes_nothing_in_the_round(codec: str, data: st.DataObject) -> None:
    rules = RoundRules(codec=codec, max_update_norm=5.0)
    state = RoundState("fed", 1, weights(), MODEL, LAYOUT, rules, 0, LIMITS)
    assert state.offer("c0", update_payload("c0", 1, weights(), delta(0), codec=codec)).accepted
    client = data.draw(st.sampled_from(["c1", "c1", "c1", "c0", "c2"]))  # c0 is a duplicate
    payload = data.draw(hostile(valid_update(codec), nested_keys=("delta",), max_bytes=MAX_BYTES))
    before, refused = comparable(state), sum(state.rejected.values())
    verdict = state.offer(client, payload)  # a refusal is a verdict, never an exception
    if verdict.accepted:  # a mutant that is still valid (ts, metrics, num_examples changed)
        event("accepted")
        assert state.count == 2 and client in state.contributors
        return
    event(verdict.reason)
    assert verdict.reason in REASONS
    assert comparable(state) == before
    assert sum(state.rejected.values()) == refused + 1 and state.rejected[verdict.reason] >= 1


LAYOUT3 = [("a", (3, 4)), ("b", (7,)), ("c", (2, 2, 2))]


@functools.cache
def encoded(codec: str) -> dict[str, Any]:
    rng = np.random.default_rng(5)
    tensors = {name: rng.normal(size=shape).astype(np.float32) for name, shape in LAYOUT3}
    return encode_params(tensors, Pipeline(codec), rng)[0]


@given(codec=st.sampled_from(CODECS), data=st.data())
@settings(FUZZ, max_examples=examples(1000))
def test_encoded_vectors_mutated_inside_their_lossless_stage_only_raise_wire_error(
    codec: str, data: st.DataObject
) -> None:
    wire = encoded(codec)
    if data.draw(st.booleans()):
        payload = encode_any(data.draw(inner_mutated(wire)), data.draw(st.booleans()))
    else:
        payload = data.draw(damaged(encode_any(wire, True)))
    try:
        out = decode_params(unpack(payload), LAYOUT3, accepted_names(codec))
    except WireError as exc:
        assert exc.reason in REASONS
        event(exc.reason)
        return
    event("accepted")
    assert [(n, a.shape) for n, a in out.items()] == LAYOUT3
    assert all(np.all(np.isfinite(a)) for a in out.values())


def fresh_agent() -> AgentCore:
    rng = np.random.default_rng(0)
    core = AgentCore("c1", "fed", rng.normal(size=(12, 4)).astype(np.float32), np.arange(12) % 3)
    core.on_task(encode(Task("fed", "agg", MODEL, SPEC, LAYOUT, Hyper(1, 4, 0.1), "int8")))
    assert core.task is not None and core.model is not None
    return core


@given(kind=st.sampled_from(["task", "global", "global16"]), data=st.data())
@settings(FUZZ, max_examples=examples(800))
def test_hostile_tasks_and_globals_are_counted_at_the_agent_and_never_escape(
    kind: str, data: st.DataObject
) -> None:
    core = fresh_agent()
    task, refused = core.task, sum(core.rejections.values())
    wire = valid_messages()[kind]
    payload = data.draw(hostile(wire, nested_keys=NESTED.get(kind, ()), max_bytes=MAX_BYTES))
    core.limits = LIMITS
    if kind == "task":
        core.on_task(payload)
        outcome = "refused" if core.task is task else "problem" if core.problem else "accepted"
    else:
        job = core.on_global(payload)
        outcome = "refused" if sum(core.rejections.values()) > refused else "train" if job else "no"
    event(f"{kind}: {outcome}")
    if outcome == "refused":
        assert sum(core.rejections.values()) == refused + 1
        assert core.task is task and core.current == (0, 0)


def test_fields_nested_a_thousand_deep_are_refused_everywhere() -> None:
    """Outside hypothesis, which raises the recursion limit while it runs and so hides stack
    exhaustion (a field ~1000 deep once escaped as a RecursionError): every field of every
    message kind, nested 31..1023 arrays or maps deep, at every decoder and handler."""
    cases = 0
    for kind, wire in valid_messages().items():
        for key in [*wire, "extra"]:
            for depth in (31, 32, 500, 1000, 1023):
                for container in ("array", "map"):
                    payload = with_raw_field(wire, key, nested(depth, container))
                    try:
                        DECODERS[kind](unpack(payload, LIMITS))
                    except WireError as exc:
                        assert exc.reason in REASONS
                    if kind == "update":
                        state = RoundState("fed", 1, weights(), MODEL, LAYOUT, RoundRules(), 0)
                        assert not state.offer("c1", payload).accepted
                    elif kind == "task":
                        fresh_agent().on_task(payload)
                    elif kind.startswith("global"):
                        fresh_agent().on_global(payload)
                    cases += 1
    assert cases == 750


def test_messages_on_update_and_status_topics_naming_no_valid_client_are_counted(
    tmp_path,
) -> None:
    """Regression: ``fedge/<f>/update/`` (an empty level matches ``update/+``) and other
    levels that are no client id were dropped uncounted; every update-topic message is now
    accounted for in ``rejections``."""
    values = {"federation": "fed", "model": "logreg", "n_features": 4, "n_classes": 3}
    aggregator = Aggregator(load(AggregatorConfig, None, {**values, "state_dir": str(tmp_path)}))
    aggregator.round = RoundState("fed", 1, weights(), MODEL, LAYOUT, aggregator.rules, 0)
    for level in ("", "_x", "a b", "x" * 65, "é"):
        for kind in ("update", "status"):
            message = Incoming(f"fedge/fed/{kind}/{level}", b"\x80", False, 1)
            assert aggregator.handle(message) is False
    assert aggregator.rejections == {"sender": 5, "status:sender": 5}
    assert aggregator.handle(Incoming("fedge/fed/metrics/", b"", False, 0)) is False
    assert sum(aggregator.rejections.values()) == 10


def test_a_finite_scale_that_overflows_on_decoding_is_nonfinite_without_a_warning() -> None:
    """Found by a long fuzz run: 127 * 3.4e38 overflowed float32 with a RuntimeWarning (an
    exception under ``python -W error``) before the refusal; now only the refusal."""
    wire = dict(encoded("int8"))
    wire["scales"] = np.full(3, 3.4e38, "<f4").tobytes()
    wire["data"] = bytes([254]) * 27
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WireError) as info:
            decode_params(unpack(encode_any(wire, True)), LAYOUT3, {"int8"})
    assert info.value.reason == "nonfinite"
