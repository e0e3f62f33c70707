"""Hostile input for the fuzz tests: values of every wrong type, mutations of valid messages at
any depth, byte-level damage, deep nesting and oversize payloads (hypothesis strategies).

Everything starts from a *valid* wire map, so most mutants get past the first checks and reach
the deep ones (codec fields, hashes, shapes) that purely random bytes never reach.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from typing import Any

import msgpack
from hypothesis import strategies as st

from fedge.codecs import lossless
from fedge.wire import pack, unpack

Wire = dict[str, Any]
SCALE = float(os.environ.get("FEDGE_FUZZ_SCALE", "1"))  # more cases for a deeper run


def examples(n: int) -> int:
    """``n`` cases, times ``FEDGE_FUZZ_SCALE``."""
    return max(1, int(n * SCALE))


INT_EDGES = [
    0,
    1,
    -1,
    2,
    255,
    256,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32,
    2**40 + 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
]
FLOAT_EDGES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 3.4e38, 1e39, 1e308, 5e-324, -1.0]
TEXT_EDGES = ["", "a/b", "+", "#", "x" * 65, "é", "\x00", "fed", "int8", "update", " "]
DEPTHS = [2, 8, 31, 32, 33, 100, 511, 1000, 1023]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_EDGES),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from(FLOAT_EDGES),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(TEXT_EDGES),
    st.binary(max_size=48),
)
keys = st.one_of(st.text(max_size=6), st.sampled_from(["codec", "n", "data", "id", "hash"]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=5,
)


def pick(draw: st.DrawFn, options: Sequence[Any]) -> Any:
    """One of ``options`` (cheaper than building a ``sampled_from`` strategy per call)."""
    return options[draw(st.integers(0, len(options) - 1))]


@st.composite
def near(draw: st.DrawFn, value: Any) -> Any:
    """A value of the same type as ``value``, wrong in content: truncated, extended, negated,
    off by one, flipped, emptied, huge."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        picked = pick(draw, [value + 1, value - 1, -value, value * 2**32, 2**63 - 1, -(2**63), 0])
        return min(max(picked, -(2**63)), 2**64 - 1)  # what msgpack can carry
    if isinstance(value, float):
        return pick(draw, [math.nan, math.inf, -math.inf, -value, value * 1e38, 0.0])
    if isinstance(value, bytes):
        if not value:
            return draw(st.binary(min_size=1, max_size=8))
        i = draw(st.integers(0, len(value) - 1))
        flipped = value[:i] + bytes([value[i] ^ (1 << draw(st.integers(0, 7)))]) + value[i + 1 :]
        return pick(
            draw,
            [value[:i], value + value[i:], value[::-1], flipped, b"", value + b"\0", value * 2],
        )
    if isinstance(value, str):
        return pick(draw, ["", value + "x", value[:-1], value.upper(), value * 70])
    if isinstance(value, list):
        if not value:
            return [draw(values)]
        i = draw(st.integers(0, len(value) - 1))
        return pick(draw, [value[:i] + value[i + 1 :], value + [value[i]], [], value[::-1]])
    if isinstance(value, dict):
        return {**value, draw(keys): draw(values)}
    return draw(values)


@st.composite
def mutated(draw: st.DrawFn, wire: Wire, max_mutations: int = 3) -> Wire:
    """``wire`` with 1..max_mutations fields, at any depth, replaced, damaged, dropped or added."""
    out = copy.deepcopy(wire)
    for _ in range(draw(st.integers(1, max_mutations))):
        _mutate_once(draw, out)
    return out


def _mutate_once(draw: st.DrawFn, root: Wire) -> None:
    parent: Any = root
    while True:
        slots = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
        if not slots:
            break
        slot = pick(draw, slots)
        child = parent[slot]
        if isinstance(child, (dict, list)) and child and draw(st.booleans()):
            parent = child  # go deeper
            continue
        op = pick(draw, ["replace", "near", "near", "drop", "add"])
        if op == "replace":
            parent[slot] = draw(values)
        elif op == "near":
            parent[slot] = draw(near(child))
        elif op == "drop":
            del parent[slot]
        else:
            _add(draw, parent)
        return
    _add(draw, parent)


def _add(draw: st.DrawFn, container: Any) -> None:
    if isinstance(container, dict):
        container[draw(keys)] = draw(values)
    else:
        container.append(draw(values))


def encode_any(wire: Any, single_float: bool) -> bytes:
    """msgpack as fedge sends it (float32) or as another client might (float64); floats beyond
    float32's range go as float64 either way."""
    try:
        return msgpack.packb(wire, use_bin_type=True, use_single_float=single_float)
    except OverflowError:
        return msgpack.packb(wire, use_bin_type=True, use_single_float=False)


def nested(depth: int, container: str = "array") -> bytes:
    """msgpack bytes of ``depth`` one-element arrays or maps around nil (deeper than msgpack's
    own packer writes)."""
    layer = b"\x91" if container == "array" else b"\x81\xa1k"
    return layer * depth + b"\xc0"


def with_raw_field(wire: Wire, key: str, raw: bytes) -> bytes:
    """``pack(wire)`` with field ``key`` set to the msgpack bytes ``raw`` (e.g. ``nested``)."""
    rest = {k: v for k, v in wire.items() if k != key}
    body = pack(rest)[1 if len(rest) < 16 else 3 :]
    n = len(rest) + 1
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + body + msgpack.packb(key) + raw


@st.composite
def damaged(draw: st.DrawFn, payload: bytes) -> bytes:
    """``payload`` truncated, extended, bit-flipped, with bytes inserted, or spliced."""
    i = draw(st.integers(0, max(0, len(payload) - 1)))
    op = pick(draw, ["truncate", "extend", "flip", "insert", "overwrite"])
    if op == "truncate":
        return payload[:i]
    if op == "extend":
        return payload + draw(st.binary(min_size=1, max_size=32))
    if op == "insert":
        return payload[:i] + draw(st.binary(min_size=1, max_size=8)) + payload[i:]
    if op == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=8))
        return payload[:i] + junk + payload[i + len(junk) :]
    if not payload:
        return b"\xff"
    bit = 1 << draw(st.integers(0, 7))
    return payload[:i] + bytes([payload[i] ^ bit]) + payload[i + 1 :]


@st.composite
def inner_mutated(draw: st.DrawFn, encoded: Wire) -> Wire:
    """An encoded vector with a lossless stage whose *compressed* fields are mutated and
    compressed again, so the mutants get past decompression (else like ``mutated``)."""
    if "z" not in encoded or not draw(st.booleans()):
        return draw(mutated(encoded))
    stage = encoded["codec"].rsplit("+", 1)[1]
    inner = unpack(lossless.decompress(stage, encoded["z"], 1 << 24))
    changed = draw(mutated(inner))
    raw = encode_any(changed, draw(st.booleans()))
    return {**encoded, "z": lossless.compress(stage, raw)}


@st.composite
def hostile(
    draw: st.DrawFn, wire: Wire, *, nested_keys: tuple[str, ...] = (), max_bytes: int = 0
) -> bytes:
    """One hostile payload derived from the valid message ``wire``.

    ``nested_keys``: fields holding an encoded vector (``delta``, ``weights``), whose
    compressed inner fields are mutated too. ``max_bytes`` > 0 adds payloads just above it.
    """
    kind = pick(
        draw,
        ["mutated"] * 6
        + ["nested_field"] * (3 if nested_keys else 0)
        + ["damaged"] * 2
        + ["deep", "random_map", "random_bytes", "empty", "not_a_map"]
        + (["oversize"] if max_bytes else []),
    )
    single = draw(st.booleans())
    if kind == "mutated":
        return encode_any(draw(mutated(wire)), single)
    if kind == "nested_field":
        key = pick(draw, nested_keys)
        return encode_any({**wire, key: draw(inner_mutated(wire[key]))}, single)
    if kind == "damaged":
        return draw(damaged(pack(wire)))
    if kind == "deep":
        key = pick(draw, [*wire, "extra"])
        depth = pick(draw, DEPTHS)
        return with_raw_field(wire, key, nested(depth, pick(draw, ["array", "map"])))
    if kind == "random_map":  # some of the valid fields, the others random
        kept = draw(st.sets(st.sampled_from(sorted(wire))))
        fields = draw(st.dictionaries(st.sampled_from(sorted(wire)) | keys, values, max_size=12))
        return encode_any({**{k: wire[k] for k in kept}, **fields}, single)
    if kind == "random_bytes":
        return draw(st.binary(max_size=256))
    if kind == "empty":
        return b""
    if kind == "not_a_map":
        return encode_any(draw(values), single)
    return pack(wire) + b"\0" * (max_bytes - len(pack(wire)) + draw(st.integers(1, 4096)))
