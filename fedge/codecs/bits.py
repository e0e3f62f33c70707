"""Bit packing of small unsigned codes, and LEB128 varints, vectorised with numpy.

Layouts are part of the wire contract (docs/protocol.md): ``bits`` in {1, 2, 4, 8}; code i
sits in byte i // (8 / bits) at bit offset (i % (8 / bits)) * bits, least significant first;
unused high bits of the last byte are zero. Decoders check every length and padding bit.
"""

from __future__ import annotations

import numpy as np

from fedge.errors import CodecError

PACKABLE_BITS = (1, 2, 4, 8)
MAX_VARINT_BYTES = 4  # values < 2**28: every index gap of a layout fits (layouts < 2**28)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack uint8 codes (each < 2**bits) into bytes, first code in the lowest bits."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be one of {PACKABLE_BITS}")
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.tobytes()
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: codes.size] = codes
    lanes = padded.reshape(-1, per_byte)
    out = np.zeros(lanes.shape[0], dtype=np.uint8)
    for lane in range(per_byte):
        out |= lanes[:, lane] << np.uint8(lane * bits)
    return out.tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes in ``data``; CodecError on a wrong length or non-zero padding."""
    if len(data) != packed_size(count, bits):
        raise CodecError(
            f"{len(data)} bytes hold no {count} codes of {bits} bits "
            f"(expected {packed_size(count, bits)})"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    lanes = np.empty((raw.size, per_byte), dtype=np.uint8)
    for lane in range(per_byte):
        lanes[:, lane] = (raw >> np.uint8(lane * bits)) & mask
    flat = lanes.reshape(-1)
    if np.any(flat[count:]):
        raise CodecError("padding bits after the last code are not zero")
    return flat[:count]


def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low groups first, high bit set on all but the last."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size and int(v.max()) >= 1 << (7 * MAX_VARINT_BYTES):
        raise ValueError("varint value too large")
    lengths = np.ones(v.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        lengths += v >= np.uint64(1 << (7 * j))
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        has = lengths > j
        group = ((v[has] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = (lengths[has] > j + 1).astype(np.uint8) << np.uint8(7)
        out[starts[has] + j] = group | more
    return out.tobytes()


def decode_varints(data: bytes, count: int) -> np.ndarray:
    """Exactly ``count`` LEB128 values filling ``data``; CodecError on anything else."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != count or (raw.size and (ends.size == 0 or ends[-1] != raw.size - 1)):
        raise CodecError(f"varint stream of {raw.size} bytes does not hold exactly {count} values")
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_BYTES:
        raise CodecError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    position = np.arange(raw.size) - np.repeat(starts, lengths)
    groups = (raw & np.uint8(0x7F)).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(groups, starts)
