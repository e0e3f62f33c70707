"""Which positions a sparse update keeps: delta-coded varints or a bitmap, whichever is smaller.

``delta``: LEB128 of the first index, then of each gap minus one (indices strictly increase).
``bitmap``: one bit per position of the flat vector, position i at bit i % 8 of byte i // 8.
"""

from __future__ import annotations

import numpy as np

from fedge.codecs.bits import decode_varints, encode_varints, pack_codes, unpack_codes
from fedge.errors import CodecError

CODINGS = ("delta", "bitmap")


def encode_indices(indices: np.ndarray, n: int) -> tuple[str, bytes]:
    """(coding, bytes) for strictly increasing ``indices`` into a vector of ``n`` values."""
    idx = np.asarray(indices, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    delta = encode_varints(gaps)
    if len(delta) <= (n + 7) // 8:
        return "delta", delta
    mask = np.zeros(n, dtype=np.uint8)
    mask[idx] = 1
    return "bitmap", pack_codes(mask, 1)


def decode_indices(coding: object, data: bytes, n: int, count: int) -> np.ndarray:
    """``count`` strictly increasing int64 indices below ``n``, or CodecError."""
    if coding == "delta":
        gaps = decode_varints(data, count).astype(np.int64)
        indices = np.cumsum(gaps + 1) - 1
        if count and int(indices[-1]) >= n:
            raise CodecError(f"index {int(indices[-1])} out of range for {n} values")
        return indices
    if coding == "bitmap":
        mask = unpack_codes(data, 1, n)
        indices = np.flatnonzero(mask)
        if indices.size != count:
            raise CodecError(f"bitmap marks {indices.size} positions, header says {count}")
        return indices.astype(np.int64)
    raise CodecError(f"unknown index coding {coding!r}; known: {list(CODINGS)}")
