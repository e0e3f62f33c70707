"""A codec pipeline applied to a whole model: one flat float32 vector in, one wire map out.

The vector is every tensor of the layout concatenated in layout order, so top-k is global and
the receiver needs only the layout to cut the result back into tensors. The wire map is
``{codec, n, ...stage fields}``, or ``{codec, n, z}`` when a lossless stage wraps the fields
(see docs/protocol.md, "Codecs"). Encoding also returns what the receiver will decode, which
is what error feedback subtracts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedge import params as P
from fedge.codecs import lossless
from fedge.codecs.indices import decode_indices, encode_indices
from fedge.codecs.spec import PipelineSpec, parse_pipeline
from fedge.codecs.values import Fields, decode_values, encode_values, segment_lengths
from fedge.errors import CodecError, WireError
from fedge.params import Params, TensorSpec
from fedge.wire_fields import Limits, pack, unpack

WireDelta = dict[str, Any]
_SPARSE_FIELDS = frozenset({"nnz", "index_coding", "index"})


@dataclass(frozen=True)
class Encoded:
    wire: WireDelta  # the map that travels
    decoded: np.ndarray  # flat float32: exactly what a receiver decodes from ``wire``


class Pipeline:
    """Encode and decode flat float32 vectors with one parsed codec pipeline."""

    def __init__(self, spec: str | PipelineSpec) -> None:
        self.spec = parse_pipeline(spec) if isinstance(spec, str) else spec
        self.name = self.spec.text()

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r})"

    def sent_as(self) -> str:
        """The codec name this process puts on the wire (zstd falls back to zlib if absent)."""
        if not self.spec.lossless:
            return self.name
        return replace(self.spec, lossless=lossless.available(self.spec.lossless)).text()

    def encode(
        self, vector: np.ndarray, tensor_lengths: Sequence[int], rng: np.random.Generator
    ) -> Encoded:
        x = np.ascontiguousarray(vector, dtype=np.float32).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError("refusing to encode NaN or infinite values")
        n, lengths = x.size, np.asarray(tensor_lengths, dtype=np.int64)
        if int(lengths.sum()) != n:
            raise ValueError(f"tensor lengths sum to {int(lengths.sum())}, vector has {n}")
        fields: Fields = {}
        values, idx = x, None
        if self.spec.topk is not None:
            k = self.spec.topk.k_for(n)
            idx = _top_indices(x, k)
            coding, index_bytes = encode_indices(idx, n)
            fields.update(nnz=int(k), index_coding=coding, index=index_bytes)
            values, lengths = x[idx], _kept_per_tensor(idx, lengths)
        segments = segment_lengths(values.size, self.spec.values.block, lengths)
        value_fields, decoded_values = encode_values(values, self.spec.values, segments, rng)
        fields.update(value_fields)
        if idx is None:
            decoded = decoded_values
        else:
            decoded = np.zeros(n, dtype=np.float32)
            decoded[idx] = decoded_values
        codec = self.sent_as()
        if self.spec.lossless:
            stage = lossless.available(self.spec.lossless)
            z = lossless.compress(stage, pack(fields))
            return Encoded({"codec": codec, "n": n, "z": z}, decoded)
        return Encoded({"codec": codec, "n": n, **fields}, decoded)

    def decode(self, wire: Mapping[str, Any], tensor_lengths: Sequence[int]) -> np.ndarray:
        """The flat float32 vector in ``wire``; WireError (never another exception) otherwise."""
        lengths = np.asarray(tensor_lengths, dtype=np.int64)
        n = int(lengths.sum())
        fields: Mapping[str, Any] = wire
        if self.spec.lossless:
            _expect_keys(wire, {"codec", "n", "z"})
            z = wire.get("z")
            if not isinstance(z, bytes):
                raise CodecError("codec field 'z' must be bytes")
            bound = 12 * n + 1024  # every stage's fields fit in this for n values
            inner = lossless.decompress(self.spec.lossless, z, bound)
            fields = unpack(inner, Limits(max_bytes=bound, max_items=16, max_str=64))
            expected = self._field_names()
        else:
            expected = self._field_names() | {"codec", "n"}
        _expect_keys(fields, expected)
        idx = None
        if self.spec.topk is not None:
            nnz = fields.get("nnz")
            if not isinstance(nnz, int) or isinstance(nnz, bool) or not 0 <= nnz <= n:
                raise CodecError(f"nnz {nnz!r:.40} is not an integer in 0..{n}")
            index = fields.get("index")
            if not isinstance(index, bytes):
                raise CodecError("codec field 'index' must be bytes")
            idx = decode_indices(fields.get("index_coding"), index, n, nnz)
            lengths = _kept_per_tensor(idx, lengths)
        m = n if idx is None else idx.size
        segments = segment_lengths(m, self.spec.values.block, lengths)
        values = decode_values(fields, self.spec.values, segments)
        if idx is None:
            out = values
        else:
            out = np.zeros(n, dtype=np.float32)
            out[idx] = values
        if not np.all(np.isfinite(out)):
            raise WireError("decoded values hold NaN or infinity", reason="nonfinite")
        return out

    def _field_names(self) -> set[str]:
        names = {"data"} | ({"scales"} if self.spec.values.quantised else set())
        return names | (set(_SPARSE_FIELDS) if self.spec.topk is not None else set())


def accepted_names(codec: str) -> set[str]:
    """Wire codec names a receiver announcing ``codec`` accepts (zstd senders may use zlib)."""
    spec = parse_pipeline(codec)
    names = {spec.text()}
    if spec.lossless == "zstd":
        names.add(replace(spec, lossless="zlib").text())
    return names


def encode_params(
    params: Mapping[str, np.ndarray], pipeline: Pipeline, rng: np.random.Generator
) -> tuple[WireDelta, Params]:
    """(wire map, decoded Params) for a whole model's tensors, in layout order."""
    spec = P.spec_of(params)
    encoded = pipeline.encode(P.flatten(params), _lengths(spec), rng)
    return encoded.wire, P.unflatten(encoded.decoded, spec)


def decode_params(wire: Any, layout: Sequence[TensorSpec], accepted: Collection[str]) -> Params:
    """Params from a wire map, checked against ``layout`` and the accepted codec names."""
    if not isinstance(wire, dict):
        raise CodecError("encoded tensors must be a map")
    codec = wire.get("codec")
    if not isinstance(codec, str) or codec not in accepted:
        raise CodecError(f"codec {codec!r:.80} is not the announced one ({sorted(accepted)})")
    n = wire.get("n")
    lengths = _lengths(layout)
    if not isinstance(n, int) or isinstance(n, bool) or n != sum(lengths):
        raise WireError(f"{n!r:.20} values, the model has {sum(lengths)}", reason="shape")
    try:
        pipeline = Pipeline(codec)
    except ValueError as exc:
        raise CodecError(str(exc)) from None
    return P.unflatten(pipeline.decode(wire, lengths), layout)


def _lengths(layout: Sequence[TensorSpec]) -> list[int]:
    return [int(np.prod(shape, dtype=np.int64)) for _, shape in layout]


def _top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest |x| (ties broken by position, deterministically)."""
    if k >= x.size:
        return np.arange(x.size, dtype=np.int64)
    magnitude = np.abs(x)
    picked = np.argpartition(-magnitude, k - 1, kind="introselect")[:k]
    return np.sort(picked).astype(np.int64)


def _kept_per_tensor(idx: np.ndarray, tensor_lengths: np.ndarray) -> np.ndarray:
    bounds = np.concatenate(([0], np.cumsum(tensor_lengths)))
    return np.diff(np.searchsorted(idx, bounds)).astype(np.int64)


def _expect_keys(fields: Mapping[str, Any], expected: set[str]) -> None:
    keys = set(fields)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(str(k)[:20] for k in keys - expected)
        raise CodecError(f"codec fields differ: missing {missing}, unexpected {extra[:5]}")
