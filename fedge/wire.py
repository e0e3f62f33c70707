"""msgpack envelopes: frozen message values with ``to_wire`` and a validating ``from_wire``.

Every byte from the network passes ``unpack`` (bounded: size, string/bin/array/map lengths)
and then one ``from_wire`` that checks every field's type and range. Any problem is a
``WireError`` whose ``reason`` is one of ``Reason``; nothing else escapes.
Checks that need state (round, model hash, duplicates) belong to the receiver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from fedge.codecs import DOWNLINK_CODECS, Pipeline, WireDelta, decode_params, encode_params
from fedge.params import Params, TensorSpec, content_hash
from fedge.protocol import VERSION, Kind
from fedge.wire_fields import (
    DEFAULT_LIMITS,
    Limits,
    Reason,
    float_field,
    get_field,
    hash_field,
    int_field,
    metrics_field,
    name_field,
    now_ms,
    pack,
    refuse,
    unpack,
)

__all__ = [
    "DEFAULT_LIMITS",
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


# -- the header every message carries -----------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """Which model a message concerns: a readable id and the SHA-256 of its spec and layout."""

    id: str
    hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash}

    @classmethod
    def from_wire(cls, m: Any) -> ModelRef:
        if not isinstance(m, dict):
            raise refuse("field 'model' must be a map")
        model_id = get_field(m, "id", str)
        if not 0 < len(model_id) <= 128:
            raise refuse("model id must be 1-128 characters")
        return cls(model_id, hash_field(m, "hash"))


def model_ref(model_id: str, spec: Mapping[str, Any], layout: list[TensorSpec]) -> ModelRef:
    """The content hash that names a model: SHA-256 of msgpack([spec, layout])."""
    canonical = pack(
        {
            "spec": dict(sorted(spec.items())),
            "layout": [[name, list(shape)] for name, shape in layout],
        }
    )
    return ModelRef(model_id, hashlib.sha256(canonical).digest())


def _header(kind: Kind, m: Mapping[str, Any]) -> tuple[str, int, str, int]:
    version = m.get("v")
    if version != VERSION:
        raise refuse(
            f"protocol version {version!r}, this receiver speaks {VERSION}", Reason.VERSION
        )
    if m.get("kind") != kind.value:
        raise refuse(f"expected kind {kind.value!r}, got {m.get('kind')!r}", Reason.KIND)
    return (
        name_field(m, "federation"),
        int_field(m, "round"),
        name_field(m, "sender"),
        int_field(m, "ts"),
    )


def _envelope(kind: Kind, federation: str, round_number: int, sender: str, ts: int) -> dict:
    return {
        "v": VERSION,
        "kind": kind.value,
        "federation": federation,
        "round": round_number,
        "sender": sender,
        "ts": ts,
    }


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
        return cls(
            int_field(m, "epochs", 1, 1000),
            int_field(m, "batch_size", 1, 1 << 20),
            float_field(m, "lr", 0.0, 100.0),
        )


MAX_MODEL_FILE = 8 * 1024 * 1024  # a shipped .tflite file; the zoo's are well under 1 MiB


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
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
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
        federation, round_number, sender, ts = _header(cls.kind, m)
        spec = get_field(m, "model_spec", dict)
        if len(spec) > 32:
            raise refuse("model_spec has too many fields")
        layout = _layout(get_field(m, "layout", list))
        codec = get_field(m, "codec", str)
        try:
            codec = Pipeline(codec).name
        except ValueError as exc:
            raise refuse(f"task codec: {exc}") from None
        model_file = _model_file(m, spec)
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


def _model_file(m: Mapping[str, Any], spec: Mapping[str, Any]) -> bytes:
    """The optional shipped model file: bounded, and hashing to the spec's ``sha256``."""
    if "model_file" not in m:
        return b""
    data = m["model_file"]
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_MODEL_FILE:
        raise refuse(f"model_file must be 1..{MAX_MODEL_FILE} bytes (bin)")
    if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
        raise refuse("model_file does not match model_spec.sha256", Reason.MODEL)
    return data


def _layout(raw: list) -> list[TensorSpec]:
    if not 0 < len(raw) <= 256:
        raise refuse("layout must list 1-256 tensors")
    out: list[TensorSpec] = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], list)
            or len(item[1]) > 8
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 28 for d in item[1]
            )
        ):
            raise refuse(f"bad layout entry {item!r:.80}")
        out.append((item[0], tuple(item[1])))
    if len({name for name, _ in out}) != len(out):
        raise refuse("layout repeats a tensor name")
    if sum(int(np.prod(s, dtype=np.int64)) for _, s in out) > 1 << 28:
        raise refuse("layout too large")
    return out


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
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
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
        federation, round_number, sender, ts = _header(cls.kind, m)
        encoded = get_field(m, "weights", dict)
        weights = decode_params(encoded, layout, DOWNLINK_CODECS)
        if content_hash(weights) != hash_field(m, "weights_hash"):
            raise refuse("weights do not match weights_hash")
        final = get_field(m, "final", bool)
        return cls(
            federation,
            round_number,
            sender,
            ModelRef.from_wire(m.get("model")),
            weights,
            int_field(m, "deadline"),
            float_field(m, "fraction", 0.0, 1.0),
            int_field(m, "min_clients", 1, 1 << 20),
            final,
            metrics_field(m, "metrics", limits),
            opened=int_field(m, "opened"),
            weights_codec=encoded["codec"],
            ts=ts,
        )


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
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
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
        federation, round_number, sender, ts = _header(cls.kind, m)
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
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "state": self.state,
            "detail": self.detail,
            "caps": self.caps,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Status:
        federation, round_number, sender, ts = _header(cls.kind, m)
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
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "metrics": self.values,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Metrics:
        federation, round_number, sender, ts = _header(cls.kind, m)
        return cls(federation, round_number, sender, metrics_field(m, "metrics", limits), ts)


def encode(message: Task | Global | Update | Status | Metrics) -> bytes:
    return pack(message.to_wire())
