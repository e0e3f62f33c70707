"""Value coders: how a flat float32 vector travels, as floats, b-bit levels or 1-bit signs.

Quantisers scale each segment (a block of values, or a tensor) by one float32. ``intN`` maps
x to q in [-L, L], L = 2**(N-1) - 1, scale = max|x| / L, stored as the code q + L in N bits;
stochastic rounding q = floor(x / scale + u), u ~ U[0, 1), makes E[q * scale] = x (QSGD,
Alistarh et al. 2017). ``sign`` sends one bit per value and scale = mean|x| per segment
(scaled sign, Karimireddy et al. 2019): biased, so it wants error feedback.
Each encoder also returns what the receiver will decode, for error feedback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedge.codecs.bits import pack_codes, packed_size, unpack_codes
from fedge.codecs.spec import ValueCoder
from fedge.errors import CodecError, WireError

FLOAT16_MAX = float(np.finfo(np.float16).max)
Fields = dict[str, Any]


def segment_lengths(m: int, block: int, tensor_lengths: np.ndarray) -> np.ndarray:
    """Lengths of the segments that share a scale: blocks of ``block``, or the tensors."""
    if block <= 0:
        return np.asarray(tensor_lengths, dtype=np.int64)
    full, rest = divmod(m, block)
    return np.array([block] * full + ([rest] if rest else []), dtype=np.int64)


def encode_values(
    x: np.ndarray, coder: ValueCoder, lengths: np.ndarray, rng: np.random.Generator
) -> tuple[Fields, np.ndarray]:
    """(wire fields, decoded values) for the float32 vector ``x``."""
    if coder.kind == "float32":
        data = x.astype("<f4")
        return {"data": data.tobytes()}, data.astype(np.float32)
    if coder.kind == "float16":
        data = np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2")  # saturate, never inf
        return {"data": data.tobytes()}, data.astype(np.float32)
    if coder.kind == "sign":
        return _encode_sign(x, lengths)
    return _encode_uniform(x, coder, lengths, rng)


def decode_values(fields: Mapping[str, Any], coder: ValueCoder, lengths: np.ndarray) -> np.ndarray:
    """The float32 values the fields hold; CodecError / WireError(nonfinite) otherwise."""
    m = int(lengths.sum())
    if coder.kind == "float32":
        return np.frombuffer(_bytes(fields, "data", 4 * m), dtype="<f4").astype(np.float32)
    if coder.kind == "float16":
        return np.frombuffer(_bytes(fields, "data", 2 * m), dtype="<f2").astype(np.float32)
    scales = _scales(fields, lengths.size)
    data = _bytes(fields, "data", packed_size(m, coder.bits))
    codes = unpack_codes(data, coder.bits, m)
    per_value = np.repeat(scales, lengths)
    if coder.kind == "sign":
        return np.where(codes == 1, per_value, -per_value).astype(np.float32)
    levels = _levels(coder.bits)
    if m and int(codes.max()) > 2 * levels:
        raise CodecError(f"{coder.kind} code {int(codes.max())} above the top level {2 * levels}")
    with np.errstate(over="ignore"):  # a huge scale gives inf: refused as nonfinite by the caller
        return (codes.astype(np.float32) - np.float32(levels)) * per_value


def _levels(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _segment_reduce(values: np.ndarray, lengths: np.ndarray, op: np.ufunc) -> np.ndarray:
    """op.reduceat over consecutive segments; empty segments give 0."""
    out = np.zeros(lengths.size, dtype=np.float32)
    nonempty = lengths > 0
    if values.size:
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        out[nonempty] = op.reduceat(values, starts)
    return out


def _encode_uniform(
    x: np.ndarray, coder: ValueCoder, lengths: np.ndarray, rng: np.random.Generator
) -> tuple[Fields, np.ndarray]:
    levels = _levels(coder.bits)
    peaks = _segment_reduce(np.abs(x), lengths, np.maximum)
    scales = (peaks / np.float32(levels)).astype(np.float32)
    per_value = np.repeat(scales, lengths)
    safe = np.where(per_value > 0, per_value, np.float32(1))
    scaled = x / safe
    if coder.rounding == "stochastic":
        q = np.floor(scaled + rng.random(x.size, dtype=np.float32))
    else:
        q = np.rint(scaled)
    q = np.clip(q, -levels, levels)
    codes = (q + levels).astype(np.uint8)
    fields = {"scales": scales.astype("<f4").tobytes(), "data": pack_codes(codes, coder.bits)}
    return fields, (q.astype(np.float32) * per_value)


def _encode_sign(x: np.ndarray, lengths: np.ndarray) -> tuple[Fields, np.ndarray]:
    sums = _segment_reduce(np.abs(x).astype(np.float32), lengths, np.add)
    scales = (sums / np.maximum(lengths, 1)).astype(np.float32)
    positive = x >= 0
    per_value = np.repeat(scales, lengths)
    fields = {
        "scales": scales.astype("<f4").tobytes(),
        "data": pack_codes(positive.astype(np.uint8), 1),
    }
    return fields, np.where(positive, per_value, -per_value).astype(np.float32)


def _scales(fields: Mapping[str, Any], count: int) -> np.ndarray:
    scales = np.frombuffer(_bytes(fields, "scales", 4 * count), dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(scales)):
        raise WireError("a quantiser scale is NaN or infinite", reason="nonfinite")
    if np.any(scales < 0):
        raise CodecError("a quantiser scale is negative")
    return scales


def _bytes(fields: Mapping[str, Any], key: str, expected: int) -> bytes:
    data = fields.get(key)
    if not isinstance(data, bytes):
        raise CodecError(f"codec field {key!r} must be bytes")
    if len(data) != expected:
        raise CodecError(f"codec field {key!r} has {len(data)} bytes, expected {expected}")
    return data
