"""Bounded msgpack decoding and typed field readers: the one place that knows how to refuse.

Every byte from the network passes ``unpack`` (size, string/bin/array/map lengths, nesting
depth) and then field readers that check type and range and raise ``WireError`` with a ``Reason``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from fedge.errors import WireError
from fedge.protocol import valid_name


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
    UNSIGNED = "unsigned"  # a plain task/global where a signed one is required
    SIGNATURE = "signature"  # signed by another key, or the signature does not verify
    NORM = "norm"  # update norm above the configured bound
    UNKNOWN = "unknown_client"  # a client id the receiver has not enrolled


@dataclass(frozen=True)
class Limits:
    """Bounds applied before and while decoding; oversize input is refused unparsed."""

    max_bytes: int = 4 * 1024 * 1024
    max_items: int = 4096  # entries of any array or map
    max_str: int = 4096
    max_metrics: int = 32
    max_depth: int = 32  # nested arrays/maps; every message needs fewer than 8


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
    if _too_deep(obj, limits.max_depth):
        raise WireError(
            f"arrays and maps nested deeper than {limits.max_depth}", reason=Reason.MALFORMED.value
        )
    return obj


def _too_deep(obj: dict[str, Any], limit: int) -> bool:
    """Whether containers nest beyond ``limit`` (iteratively: a deep payload must not be able to
    exhaust the stack of whatever later walks it, ``repr`` in an error message included)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


# -- field readers: one place that knows how to refuse ---------------------------------------


def refuse(msg: str, reason: Reason = Reason.MALFORMED) -> WireError:
    return WireError(msg, reason=reason.value)


def get_field(m: Mapping[str, Any], key: str, kinds: type | tuple[type, ...]) -> Any:
    if key not in m:
        raise refuse(f"missing field {key!r}")
    value = m[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise refuse(f"field {key!r} must be {kinds}, got bool")
    if not isinstance(value, kinds):
        raise refuse(
            f"field {key!r} must be {getattr(kinds, '__name__', kinds)}, got {type(value).__name__}"
        )
    return value


def int_field(m: Mapping[str, Any], key: str, lo: int = 0, hi: int = 2**53) -> int:
    value = get_field(m, key, int)
    if not lo <= value <= hi:
        raise refuse(f"field {key!r}={value} outside [{lo}, {hi}]")
    return int(value)


def float_field(
    m: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf
) -> float:
    value = float(get_field(m, key, (int, float)))
    if not math.isfinite(value):
        raise refuse(f"field {key!r} is not finite", Reason.NONFINITE)
    if not lo <= value <= hi:
        raise refuse(f"field {key!r}={value} outside [{lo}, {hi}]")
    return value


def name_field(m: Mapping[str, Any], key: str) -> str:
    value = get_field(m, key, str)
    if not valid_name(value):
        raise refuse(f"field {key!r}={value!r} is not a valid name")
    return value


def hash_field(m: Mapping[str, Any], key: str) -> bytes:
    value = get_field(m, key, bytes)
    if len(value) != 32:
        raise refuse(f"field {key!r} must be 32 bytes (SHA-256)")
    return value


def metrics_field(m: Mapping[str, Any], key: str, limits: Limits) -> dict[str, float]:
    value = m.get(key, {})
    if not isinstance(value, dict) or len(value) > limits.max_metrics:
        raise refuse(f"field {key!r} must be a map of at most {limits.max_metrics} numbers")
    out: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or len(name) > 64:
            raise refuse(f"metric {name!r} must be a number")
        if not math.isfinite(float(number)):
            raise refuse(f"metric {name!r} is not finite", Reason.NONFINITE)
        out[name] = float(number)
    return out
