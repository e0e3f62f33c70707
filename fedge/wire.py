"""msgpack envelopes: frozen message values with ``to_wire`` and a validating ``from_wire``.

Every byte from the network passes ``unpack`` (bounded: size, string/bin/array/map lengths,
nesting depth) and then one ``from_wire`` that checks every field's type and range. Any problem is a
``WireError`` whose ``reason`` is one of ``Reason``; nothing else escapes.
Checks that need state (round, model hash, duplicates) belong to the receiver.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from fedge.codecs import DOWNLINK_CODECS, Pipeline, WireDelta, decode_params, encode_params
from fedge.params import Params, TensorSpec, content_hash
from fedge.protocol import Kind
from fedge.wire_fields import (
    DEFAULT_LIMITS,
    Limits,
    Reason,
    float_field,
    get_field,
    hash_field,
    int_field,
    metrics_field,
    now_ms,
    pack,
    refuse,
    unpack,
)
from fedge.wire_header import (
    MAX_MODEL_FILE,
    ModelRef,
    envelope,
    layout_field,
    model_file_field,
    model_ref,
    read_header,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_MODEL_FILE",
    "Global",
    "Hyper",
    "Limits",
    "Metrics",
    "ModelRef",
    "Reason",
    "Status",
    "Task",
    "Update",
    "encode",
    "model_ref",
    "now_ms",
    "pack",
    "unpack",
]


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyper:
    """Local training hyper-parameters the aggregator asks for."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05

    def to_wire(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}

    @classmethod
    def from_wire(cls, m: Any) -> Hyper:
        if not isinstance(m, dict):
            raise refuse("field 'hyper' must be a map")
        lr = float_field(m, "lr", 0.0, 100.0)
        if lr == 0:
            raise refuse("field 'lr' must be > 0")
        return cls(int_field(m, "epochs", 1, 1000), int_field(m, "batch_size", 1, 1 << 20), lr)


@dataclass(frozen=True)
class Task:
    """What the federation trains (retained on ``task``): model, layout, hyper-params, codec.

    ``codec`` is the canonical update pipeline (``fedge.codecs``); ``error_feedback`` asks
    agents to carry what compression dropped into their next update.

    ``model_file`` (optional) carries the model file itself (a ``.tflite``) so a fleet can move
    to a new model without touching devices; it must hash to ``model_spec["sha256"]``.
    """

    kind: ClassVar[Kind] = Kind.TASK
    federation: str
    sender: str
    model: ModelRef
    model_spec: dict[str, Any]
    layout: list[TensorSpec]
    hyper: Hyper
    codec: str
    error_feedback: bool = False
    round: int = 0
    ts: int = field(default_factory=now_ms)
    model_file: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        wire = {
            **envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "model_spec": self.model_spec,
            "layout": [[n, list(s)] for n, s in self.layout],
            "hyper": self.hyper.to_wire(),
            "codec": self.codec,
            "error_feedback": self.error_feedback,
        }
        if self.model_file:
            wire["model_file"] = self.model_file
        return wire

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Task:
        federation, round_number, sender, ts = read_header(cls.kind, m)
        spec = get_field(m, "model_spec", dict)
        if len(spec) > 32:
            raise refuse("model_spec has too many fields")
        layout = layout_field(get_field(m, "layout", list))
        codec = get_field(m, "codec", str)
        try:
            codec = Pipeline(codec).name
        except ValueError as exc:
            raise refuse(f"task codec: {exc}") from None
        model_file = model_file_field(m, spec)
        return cls(
            federation,
            sender,
            ModelRef.from_wire(m.get("model")),
            spec,
            layout,
            Hyper.from_wire(m.get("hyper")),
            codec,
            get_field(m, "error_feedback", bool),
            round_number,
            ts,
            model_file,
        )


@dataclass(frozen=True)
class Global:
    """The global model for ``round`` (retained on ``global``): full weights + round rules.

    ``weights_codec`` is ``float32`` or ``float16`` (half the downlink); ``weights_hash``
    names the weights as a receiver decodes them, which is what agents train from.

    ``final`` marks the last model of a finished federation: agents do not train on it.
    ``opened`` marks one attempt of the round: an aggregator that restarted mid-round opens
    it again with a new ``opened``, and agents that trained the earlier attempt train again
    (their first update may be lost; the aggregator counts each client once per round).
    """

    kind: ClassVar[Kind] = Kind.GLOBAL
    federation: str
    round: int
    sender: str
    model: ModelRef
    weights: Params
    deadline: int  # ms since the epoch
    fraction: float = 1.0
    min_clients: int = 1
    final: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    opened: int = 0  # ms since the epoch when this attempt of the round was opened
    weights_codec: str = "float32"
    ts: int = field(default_factory=now_ms)

    def __post_init__(self) -> None:
        if self.weights_codec not in DOWNLINK_CODECS:
            raise ValueError(f"weights_codec must be one of {DOWNLINK_CODECS}")

    @cached_property
    def _encoded(self) -> tuple[WireDelta, Params]:
        return downlink_encode(self.weights, self.weights_codec)

    @property
    def received_weights(self) -> Params:
        """The weights exactly as an agent decodes them (float16 rounding included)."""
        return self._encoded[1]

    @cached_property
    def weights_hash(self) -> bytes:
        return content_hash(self.received_weights)

    def to_wire(self) -> dict[str, Any]:
        return {
            **envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "weights_hash": self.weights_hash,
            "weights": self._encoded[0],
            "deadline": self.deadline,
            "fraction": self.fraction,
            "min_clients": self.min_clients,
            "final": self.final,
            "metrics": self.metrics,
            "opened": self.opened,
        }

    @classmethod
    def from_wire(
        cls, m: Mapping[str, Any], layout: list[TensorSpec], limits: Limits = DEFAULT_LIMITS
    ) -> Global:
        """Decode against the task's layout; the weights must hash to ``weights_hash``."""
        federation, round_number, sender, ts = read_header(cls.kind, m)
        encoded = get_field(m, "weights", dict)
        weights = decode_params(encoded, layout, DOWNLINK_CODECS)
        weights_hash = hash_field(m, "weights_hash")
        if content_hash(weights) != weights_hash:
            raise refuse("weights do not match weights_hash")
        final = get_field(m, "final", bool)
        fraction = float_field(m, "fraction", 0.0, 1.0)
        if fraction == 0:
            raise refuse("field 'fraction' must be > 0")
        message = cls(
            federation,
            round_number,
            sender,
            ModelRef.from_wire(m.get("model")),
            weights,
            int_field(m, "deadline"),
            fraction,
            int_field(m, "min_clients", 1, 1 << 20),
            final,
            metrics_field(m, "metrics", limits),
            opened=int_field(m, "opened"),
            weights_codec=encoded["codec"],
            ts=ts,
        )
        message.__dict__["weights_hash"] = weights_hash  # verified above; spare a re-encode
        return message


def downlink_encode(weights: Mapping[str, np.ndarray], codec: str) -> tuple[WireDelta, Params]:
    """(wire map, weights as received) for a global model sent as float32 or float16."""
    return encode_params(weights, Pipeline(codec), np.random.default_rng(0))


@dataclass(frozen=True)
class Update:
    """One agent's compressed delta (local - global) for one round, still codec-encoded."""

    kind: ClassVar[Kind] = Kind.UPDATE
    federation: str
    round: int
    sender: str
    model: ModelRef
    base: bytes  # weights_hash of the global this delta was trained from
    num_examples: int
    delta: WireDelta
    metrics: dict[str, float] = field(default_factory=dict)
    ts: int = field(default_factory=now_ms)

    def to_wire(self) -> dict[str, Any]:
        wire = {
            **envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "base": self.base,
            "num_examples": self.num_examples,
            "delta": self.delta,
        }
        if self.metrics:  # optional: agents send their numbers on metrics/<client> instead
            wire["metrics"] = self.metrics
        return wire

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Update:
        federation, round_number, sender, ts = read_header(cls.kind, m)
        delta = get_field(m, "delta", dict)
        return cls(
            federation,
            round_number,
            sender,
            ModelRef.from_wire(m.get("model")),
            hash_field(m, "base"),
            int_field(m, "num_examples", 1, 1 << 40),
            delta,
            metrics_field(m, "metrics", limits),
            ts,
        )

    def decode_delta(self, layout: list[TensorSpec], accepted: Collection[str]) -> Params:
        """The float32 delta, checked against the model layout and the accepted codec names."""
        return decode_params(self.delta, layout, accepted)


STATES = ("online", "offline", "declined", "error")


@dataclass(frozen=True)
class Status:
    """An agent's presence (retained on ``status/<client>``; the broker's will says offline)."""

    kind: ClassVar[Kind] = Kind.STATUS
    federation: str
    sender: str
    state: str
    round: int = 0
    detail: str = ""
    caps: dict[str, Any] = field(default_factory=dict)
    ts: int = field(default_factory=now_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            **envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "state": self.state,
            "detail": self.detail,
            "caps": self.caps,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Status:
        federation, round_number, sender, ts = read_header(cls.kind, m)
        state = get_field(m, "state", str)
        if state not in STATES:
            raise refuse(f"state {state!r} not one of {STATES}")
        detail = m.get("detail", "")
        caps = m.get("caps", {})
        if not isinstance(detail, str) or not isinstance(caps, dict) or len(caps) > 32:
            raise refuse("detail must be a string and caps a small map")
        return cls(federation, sender, state, round_number, detail, caps, ts)


@dataclass(frozen=True)
class Metrics:
    """An agent's local numbers for one round (QoS 0, best effort)."""

    kind: ClassVar[Kind] = Kind.METRICS
    federation: str
    round: int
    sender: str
    values: dict[str, float]
    ts: int = field(default_factory=now_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            **envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "metrics": self.values,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Metrics:
        federation, round_number, sender, ts = read_header(cls.kind, m)
        return cls(federation, round_number, sender, metrics_field(m, "metrics", limits), ts)


def encode(message: Task | Global | Update | Status | Metrics) -> bytes:
    return pack(message.to_wire())
