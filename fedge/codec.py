"""Update codecs: how one tensor travels as bytes. One small class per codec, one registry.

A codec turns a float32 tensor into a wire map ``{name, shape, dtype, codec, data, ...}``
and back. Decoding is defensive: every inconsistency is a ``CodecError`` (a ``WireError``
with reason ``malformed``), never an out-of-bounds read or a stray numpy exception.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedge.errors import CodecError, WireError
from fedge.params import Params, TensorSpec

WireTensor = dict[str, Any]


class Codec(ABC):
    """Encodes one float32 tensor to a wire map and decodes it back."""

    name: str

    @abstractmethod
    def encode_data(self, array: np.ndarray, rng: np.random.Generator) -> WireTensor:
        """Codec fields for ``array`` (at least ``data``); the caller adds name/shape/codec."""

    @abstractmethod
    def decode_data(self, tensor: Mapping[str, Any], size: int) -> np.ndarray:
        """A flat float32 vector of ``size`` values from the codec fields, or CodecError."""

    def encode(self, name: str, array: np.ndarray, rng: np.random.Generator) -> WireTensor:
        values = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"tensor {name!r} holds non-finite values; refusing to encode")
        fields = self.encode_data(values.ravel(), rng)
        return {
            "name": name,
            "shape": [int(d) for d in values.shape],
            "dtype": "float32",
            "codec": self.name,
            **fields,
        }


class Float32Codec(Codec):
    """Identity: little-endian IEEE-754 float32, 4 bytes per value. The reference for ratios."""

    name = "float32"

    def encode_data(self, array: np.ndarray, rng: np.random.Generator) -> WireTensor:
        return {"data": array.astype("<f4").tobytes()}

    def decode_data(self, tensor: Mapping[str, Any], size: int) -> np.ndarray:
        data = _bytes_field(tensor, "data", 4 * size)
        return np.frombuffer(data, dtype="<f4").astype(np.float32)


class Int8Codec(Codec):
    """Per-tensor int8 with a float32 scale and unbiased stochastic rounding.

    scale = max|x| / 127; q = floor(x / scale + u), u ~ U[0, 1), so E[q * scale] = x and
    |q * scale - x| < scale. Stochastic rounding keeps FedAvg unbiased over many clients
    (Alistarh et al., QSGD, 2017).
    """

    name = "int8"
    levels = 127

    def encode_data(self, array: np.ndarray, rng: np.random.Generator) -> WireTensor:
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        scale = np.float32(peak / self.levels)
        if scale == 0.0 or not math.isfinite(float(scale)):
            return {"scale": 0.0, "data": bytes(array.size)}
        scaled = array.astype(np.float32) / scale
        noise = rng.random(array.size, dtype=np.float32)
        q = np.clip(np.floor(scaled + noise), -self.levels, self.levels).astype(np.int8)
        return {"scale": float(scale), "data": q.tobytes()}

    def decode_data(self, tensor: Mapping[str, Any], size: int) -> np.ndarray:
        scale = tensor.get("scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise CodecError("int8 tensor needs a numeric 'scale'")
        scale32 = np.float32(scale)
        if not math.isfinite(float(scale)) or scale < 0 or not np.isfinite(scale32):
            raise WireError(
                f"int8 scale {scale!r} is not a finite non-negative float32", reason="nonfinite"
            )
        data = _bytes_field(tensor, "data", size)
        return np.frombuffer(data, dtype=np.int8).astype(np.float32) * scale32


CODECS: dict[str, Codec] = {codec.name: codec for codec in (Float32Codec(), Int8Codec())}
DEFAULT_CODEC = "int8"


def get_codec(name: str) -> Codec:
    """The registered codec called ``name``; ValueError listing the known ones otherwise."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(sorted(CODECS))}") from None


def encode_params(
    params: Mapping[str, np.ndarray], codec: Codec, rng: np.random.Generator
) -> list[WireTensor]:
    """Every tensor of ``params`` in layout order."""
    return [codec.encode(name, array, rng) for name, array in params.items()]


def decode_params(
    tensors: Any, spec: Sequence[TensorSpec], *, allowed_codecs: Sequence[str] | None = None
) -> Params:
    """Wire tensors -> Params, checked against the model layout ``spec``.

    Raises WireError with reason ``shape`` (names, order, shapes, count), ``malformed``
    (types, codec fields, lengths) or ``nonfinite`` (NaN/Inf after decoding).
    """
    if not isinstance(tensors, list):
        raise CodecError("tensors must be a list")
    if len(tensors) != len(spec):
        raise WireError(f"{len(tensors)} tensors, model has {len(spec)}", reason="shape")
    out: Params = {}
    for tensor, (name, shape) in zip(tensors, spec, strict=True):
        out[name] = _decode_one(tensor, name, shape, allowed_codecs)
    return out


def _decode_one(
    tensor: Any, name: str, shape: tuple[int, ...], allowed_codecs: Sequence[str] | None
) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise CodecError(f"tensor {name!r} must be a map")
    if tensor.get("name") != name:
        raise WireError(f"expected tensor {name!r}, got {tensor.get('name')!r}", reason="shape")
    wire_shape = tensor.get("shape")
    if (
        not isinstance(wire_shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in wire_shape)
        or tuple(wire_shape) != tuple(shape)
    ):
        raise WireError(
            f"tensor {name!r} shape {wire_shape!r}, model has {list(shape)}", reason="shape"
        )
    if tensor.get("dtype") != "float32":
        raise CodecError(f"tensor {name!r} dtype {tensor.get('dtype')!r}; only float32 exists")
    codec_name = tensor.get("codec")
    if not isinstance(codec_name, str) or codec_name not in CODECS:
        raise CodecError(f"tensor {name!r} has unknown codec {codec_name!r}")
    if allowed_codecs is not None and codec_name not in allowed_codecs:
        raise CodecError(
            f"tensor {name!r} uses codec {codec_name!r}; task allows {list(allowed_codecs)}"
        )
    size = int(np.prod(shape, dtype=np.int64))
    values = CODECS[codec_name].decode_data(tensor, size)
    if not np.all(np.isfinite(values)):
        raise WireError(f"tensor {name!r} holds NaN or Inf", reason="nonfinite")
    return values.reshape(shape)


def _bytes_field(tensor: Mapping[str, Any], key: str, expected_len: int) -> bytes:
    data = tensor.get(key)
    if not isinstance(data, bytes):
        raise CodecError(f"tensor field {key!r} must be bytes")
    if len(data) != expected_len:
        raise CodecError(f"tensor field {key!r} has {len(data)} bytes, expected {expected_len}")
    return data
