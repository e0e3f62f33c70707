"""Named tensors: an ordered mapping name -> float32 ndarray, and the arithmetic on it.

Models, codecs and the aggregator all speak ``Params``; the order of names is the model's
order and is part of the wire contract (tensors travel in that order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

Params = dict[str, np.ndarray]
TensorSpec = tuple[str, tuple[int, ...]]


def spec_of(params: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """The (name, shape) list that identifies a model's layout."""
    return [(name, tuple(int(d) for d in array.shape)) for name, array in params.items()]


def num_parameters(params: Mapping[str, np.ndarray]) -> int:
    return int(sum(int(array.size) for array in params.values()))


def copy(params: Mapping[str, np.ndarray]) -> Params:
    return {name: np.array(array, dtype=np.float32, copy=True) for name, array in params.items()}


def zeros_like(params: Mapping[str, np.ndarray], dtype: type = np.float32) -> Params:
    return {name: np.zeros(array.shape, dtype=dtype) for name, array in params.items()}


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Params:
    """a - b, tensor by tensor (same layout required)."""
    _require_same_layout(a, b)
    return {name: (a[name] - b[name]).astype(np.float32) for name in a}


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Params:
    _require_same_layout(a, b)
    return {name: (a[name] + b[name]).astype(np.float32) for name in a}


def l2_norm(params: Mapping[str, np.ndarray]) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in params.values()))
    )


def all_finite(params: Mapping[str, np.ndarray]) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in params.values())


def flatten(params: Mapping[str, np.ndarray]) -> np.ndarray:
    """All tensors as one float32 vector, in layout order."""
    if not params:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in params.values()])


def unflatten(vector: np.ndarray, spec: Iterable[TensorSpec]) -> Params:
    """Inverse of ``flatten`` for a given layout."""
    out: Params = {}
    offset = 0
    for name, shape in spec:
        size = int(np.prod(shape, dtype=np.int64))
        out[name] = np.asarray(vector[offset : offset + size], dtype=np.float32).reshape(shape)
        offset += size
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} values, layout needs {offset}")
    return out


def content_hash(params: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, shapes and little-endian float32 bytes: identifies a set of weights."""
    digest = hashlib.sha256()
    for name, array in params.items():
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(repr(tuple(int(d) for d in array.shape)).encode("ascii"))
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.digest()


def allclose(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], atol: float = 1e-6) -> bool:
    return list(a) == list(b) and all(np.allclose(a[n], b[n], atol=atol, rtol=0) for n in a)


def _require_same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    if spec_of(a) != spec_of(b):
        raise ValueError(f"layouts differ: {spec_of(a)} vs {spec_of(b)}")
