"""msgpack envelopes: frozen message values with ``to_wire`` and a validating ``from_wire``.

Every byte from the network passes ``unpack`` (bounded: size, string/bin/array/map lengths)
and then one ``from_wire`` that checks every field's type and range. Any problem is a
``WireError`` whose ``reason`` is one of ``Reason``; nothing else escapes.
Checks that need state (round, model hash, duplicates) belong to the receiver.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import msgpack
import numpy as np

from fedge.codec import Float32Codec, WireTensor, decode_params, encode_params
from fedge.errors import WireError
from fedge.params import Params, TensorSpec, content_hash
from fedge.protocol import VERSION, Kind, valid_name


class Reason(str, Enum):
    """Why a message was refused. Counted per reason by every receiver."""

    MALFORMED = "malformed"  # not msgpack, wrong types, missing fields, bad codec fields
    OVERSIZE = "oversize"  # payload above the receiver's byte limit
    VERSION = "version"  # protocol version this receiver does not speak
    KIND = "kind"  # a message of another kind on this topic
    FEDERATION = "federation"  # addressed to another federation
    SENDER = "sender"  # sender field differs from the topic's client id
    MODEL = "model"  # model id/hash differs from the task's
    STALE = "stale"  # for a round that is closed or a global that is not current
    FUTURE = "future"  # for a round that has not started
    SHAPE = "shape"  # tensor names, order or shapes differ from the model
    NONFINITE = "nonfinite"  # NaN or Inf in a tensor, scale or metric
    DUPLICATE = "duplicate"  # a second update from the same client for the same round
    NORM = "norm"  # update norm above the configured bound


@dataclass(frozen=True)
class Limits:
    """Bounds applied before and while decoding; oversize input is refused unparsed."""

    max_bytes: int = 4 * 1024 * 1024
    max_items: int = 4096  # entries of any array or map
    max_str: int = 4096
    max_metrics: int = 32


DEFAULT_LIMITS = Limits()


def now_ms() -> int:
    return int(time.time() * 1000)


def pack(obj: Mapping[str, Any]) -> bytes:
    """msgpack with bin type for bytes and float32 for floats (compact; ts are integers)."""
    return msgpack.packb(obj, use_bin_type=True, use_single_float=True)


def unpack(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Bounded msgpack decode to a map with string keys, or WireError."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError("payload is not bytes", reason=Reason.MALFORMED.value)
    if len(payload) > limits.max_bytes:
        raise WireError(
            f"payload of {len(payload)} bytes exceeds {limits.max_bytes}",
            reason=Reason.OVERSIZE.value,
        )
    try:
        obj = msgpack.unpackb(
            bytes(payload),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types; all mean malformed
        raise WireError(f"not msgpack: {exc}", reason=Reason.MALFORMED.value) from None
    if not isinstance(obj, dict):
        raise WireError("message must be a msgpack map", reason=Reason.MALFORMED.value)
    return obj


# -- field readers: one place that knows how to refuse ---------------------------------------


def _bad(msg: str, reason: Reason = Reason.MALFORMED) -> WireError:
    return WireError(msg, reason=reason.value)


def _get(m: Mapping[str, Any], key: str, kinds: type | tuple[type, ...]) -> Any:
    if key not in m:
        raise _bad(f"missing field {key!r}")
    value = m[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _bad(f"field {key!r} must be {kinds}, got bool")
    if not isinstance(value, kinds):
        raise _bad(
            f"field {key!r} must be {getattr(kinds, '__name__', kinds)}, got {type(value).__name__}"
        )
    return value


def _int(m: Mapping[str, Any], key: str, lo: int = 0, hi: int = 2**53) -> int:
    value = _get(m, key, int)
    if not lo <= value <= hi:
        raise _bad(f"field {key!r}={value} outside [{lo}, {hi}]")
    return int(value)


def _float(m: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    value = float(_get(m, key, (int, float)))
    if not math.isfinite(value):
        raise _bad(f"field {key!r} is not finite", Reason.NONFINITE)
    if not lo <= value <= hi:
        raise _bad(f"field {key!r}={value} outside [{lo}, {hi}]")
    return value


def _name(m: Mapping[str, Any], key: str) -> str:
    value = _get(m, key, str)
    if not valid_name(value):
        raise _bad(f"field {key!r}={value!r} is not a valid name")
    return value


def _hash(m: Mapping[str, Any], key: str) -> bytes:
    value = _get(m, key, bytes)
    if len(value) != 32:
        raise _bad(f"field {key!r} must be 32 bytes (SHA-256)")
    return value


def _metrics(m: Mapping[str, Any], key: str, limits: Limits) -> dict[str, float]:
    value = m.get(key, {})
    if not isinstance(value, dict) or len(value) > limits.max_metrics:
        raise _bad(f"field {key!r} must be a map of at most {limits.max_metrics} numbers")
    out: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or len(name) > 64:
            raise _bad(f"metric {name!r} must be a number")
        if not math.isfinite(float(number)):
            raise _bad(f"metric {name!r} is not finite", Reason.NONFINITE)
        out[name] = float(number)
    return out


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
            raise _bad("field 'model' must be a map")
        model_id = _get(m, "id", str)
        if not 0 < len(model_id) <= 128:
            raise _bad("model id must be 1-128 characters")
        return cls(model_id, _hash(m, "hash"))


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
        raise _bad(f"protocol version {version!r}, this receiver speaks {VERSION}", Reason.VERSION)
    if m.get("kind") != kind.value:
        raise _bad(f"expected kind {kind.value!r}, got {m.get('kind')!r}", Reason.KIND)
    return _name(m, "federation"), _int(m, "round"), _name(m, "sender"), _int(m, "ts")


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
            raise _bad("field 'hyper' must be a map")
        return cls(
            _int(m, "epochs", 1, 1000),
            _int(m, "batch_size", 1, 1 << 20),
            _float(m, "lr", 0.0, 100.0),
        )


@dataclass(frozen=True)
class Task:
    """What the federation trains (retained on ``task``): model, layout, hyper-params, codec."""

    kind: ClassVar[Kind] = Kind.TASK
    federation: str
    sender: str
    model: ModelRef
    model_spec: dict[str, Any]
    layout: list[TensorSpec]
    hyper: Hyper
    codec: str
    round: int = 0
    ts: int = field(default_factory=now_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "model_spec": self.model_spec,
            "layout": [[n, list(s)] for n, s in self.layout],
            "hyper": self.hyper.to_wire(),
            "codec": self.codec,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Task:
        federation, round_number, sender, ts = _header(cls.kind, m)
        spec = _get(m, "model_spec", dict)
        if len(spec) > 32:
            raise _bad("model_spec has too many fields")
        layout = _layout(_get(m, "layout", list))
        codec = _get(m, "codec", str)
        return cls(
            federation,
            sender,
            ModelRef.from_wire(m.get("model")),
            spec,
            layout,
            Hyper.from_wire(m.get("hyper")),
            codec,
            round_number,
            ts,
        )


def _layout(raw: list) -> list[TensorSpec]:
    if not 0 < len(raw) <= 256:
        raise _bad("layout must list 1-256 tensors")
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
            raise _bad(f"bad layout entry {item!r:.80}")
        out.append((item[0], tuple(item[1])))
    if len({name for name, _ in out}) != len(out):
        raise _bad("layout repeats a tensor name")
    if sum(int(np.prod(s, dtype=np.int64)) for _, s in out) > 1 << 28:
        raise _bad("layout too large")
    return out


@dataclass(frozen=True)
class Global:
    """The global model for ``round`` (retained on ``global``): full float32 weights + rules.

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
    ts: int = field(default_factory=now_ms)

    @property
    def weights_hash(self) -> bytes:
        return content_hash(self.weights)

    def to_wire(self) -> dict[str, Any]:
        tensors = encode_params(self.weights, Float32Codec(), np.random.default_rng(0))
        return {
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "weights_hash": self.weights_hash,
            "weights": tensors,
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
        weights = decode_params(m.get("weights"), layout, allowed_codecs=("float32",))
        if content_hash(weights) != _hash(m, "weights_hash"):
            raise _bad("weights do not match weights_hash")
        final = _get(m, "final", bool)
        return cls(
            federation,
            round_number,
            sender,
            ModelRef.from_wire(m.get("model")),
            weights,
            _int(m, "deadline"),
            _float(m, "fraction", 0.0, 1.0),
            _int(m, "min_clients", 1, 1 << 20),
            final,
            _metrics(m, "metrics", limits),
            opened=_int(m, "opened"),
            ts=ts,
        )


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
    delta: list[WireTensor]
    metrics: dict[str, float] = field(default_factory=dict)
    ts: int = field(default_factory=now_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            **_envelope(self.kind, self.federation, self.round, self.sender, self.ts),
            "model": self.model.to_wire(),
            "base": self.base,
            "num_examples": self.num_examples,
            "delta": self.delta,
            "metrics": self.metrics,
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Update:
        federation, round_number, sender, ts = _header(cls.kind, m)
        delta = _get(m, "delta", list)
        return cls(
            federation,
            round_number,
            sender,
            ModelRef.from_wire(m.get("model")),
            _hash(m, "base"),
            _int(m, "num_examples", 1, 1 << 40),
            delta,
            _metrics(m, "metrics", limits),
            ts,
        )

    def decode_delta(self, layout: list[TensorSpec], codec: str | None = None) -> Params:
        """The float32 delta, checked against the model layout (and the task's codec)."""
        return decode_params(self.delta, layout, allowed_codecs=None if codec is None else (codec,))


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
        state = _get(m, "state", str)
        if state not in STATES:
            raise _bad(f"state {state!r} not one of {STATES}")
        detail = m.get("detail", "")
        caps = m.get("caps", {})
        if not isinstance(detail, str) or not isinstance(caps, dict) or len(caps) > 32:
            raise _bad("detail must be a string and caps a small map")
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
        return cls(federation, round_number, sender, _metrics(m, "metrics", limits), ts)


def encode(message: Task | Global | Update | Status | Metrics) -> bytes:
    return pack(message.to_wire())
