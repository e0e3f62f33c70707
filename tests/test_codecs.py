"""Codec pipelines: round trips, error bounds, unbiasedness, top-k, index coding, defences."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.codecs import (
    Pipeline,
    accepted_names,
    decode_params,
    encode_params,
    lossless,
    parse_pipeline,
)
from fedge.codecs.bits import decode_varints, encode_varints, pack_codes, unpack_codes
from fedge.codecs.indices import decode_indices, encode_indices
from fedge.errors import WireError
from fedge.wire_fields import pack, unpack

ALL_CODECS = [
    "float32",
    "float16",
    "int8",
    "int8:block=16",
    "int8:round=nearest",
    "int4",
    "int4:block=7,round=nearest",
    "int2:block=32",
    "sign",
    "sign:block=5",
    "topk:0.1",
    "topk:0.05+int8",
    "topk:3+int4:block=2",
    "topk:0.2+sign",
    "topk:0.05+int8+zstd",
    "int8:block=64+zlib",
    "float16+zstd",
]
QUANTISERS = ["int8", "int4", "int2"]
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
layouts = st.lists(st.integers(1, 300), min_size=1, max_size=4)


def flat(draw_lengths: list[int], data: st.DataObject) -> np.ndarray:
    n = sum(draw_lengths)
    return data.draw(hnp.arrays(np.float32, n, elements=finite))


# -- specs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("int8", "int8"),
        ("int8:block=0", "int8"),
        ("int8:round=stochastic,block=256", "int8:block=256"),
        ("topk:0.050+int8+zstd", "topk:0.05+int8+zstd"),
        ("topk:500", "topk:500+float32"),
        ("sign:block=64", "sign:block=64"),
        ("int4:round=nearest", "int4:round=nearest"),
    ],
)
def test_specs_print_canonically(text: str, canonical: str) -> None:
    assert parse_pipeline(text).text() == canonical
    assert parse_pipeline(canonical).text() == canonical


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("int3", "unknown codec stage 'int3'"),
        ("int8+topk:0.1", "topk must be the first"),
        ("int8+int4", "must come once"),
        ("zstd+int8", "must come once"),
        ("int8:block=-1", "block must be"),
        ("int8:bits=4", "takes options"),
        ("float16:block=4", "takes options"),
        ("sign:round=nearest", "takes options"),
        ("int8:round=up", "round must be"),
        ("topk:1.5", "fraction must be in (0, 1)"),
        ("topk:0", "count must be >= 1"),
        ("topk", "needs a fraction or count"),
        ("int8+zstd:9", "takes no options"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_pipeline(text)
    assert words in str(info.value)


def test_biased_codecs_are_the_ones_error_feedback_is_for() -> None:
    assert not parse_pipeline("int8").biased and not parse_pipeline("float16").biased
    for text in ("topk:0.1+int8", "sign", "int4:round=nearest"):
        assert parse_pipeline(text).biased


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ALL_CODECS)
@given(lengths=layouts, data=st.data(), seed=st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_decode_gives_exactly_what_the_encoder_promised(
    codec: str, lengths: list[int], data: st.DataObject, seed: int
) -> None:
    x = flat(lengths, data)
    pipeline = Pipeline(codec)
    encoded = pipeline.encode(x, lengths, np.random.default_rng(seed))
    wire = unpack(pack(encoded.wire), _big())  # through msgpack, as on the network
    np.testing.assert_array_equal(pipeline.decode(wire, lengths), encoded.decoded)


@given(lengths=layouts, data=st.data())
@settings(max_examples=100, deadline=None)
def test_float32_is_exact_and_float16_is_a_cast(lengths: list[int], data: st.DataObject) -> None:
    x = flat(lengths, data)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(Pipeline("float32").encode(x, lengths, rng).decoded, x)
    np.testing.assert_array_equal(
        Pipeline("float16").encode(x, lengths, rng).decoded, x.astype(np.float16).astype(np.float32)
    )


def test_float16_saturates_instead_of_overflowing() -> None:
    x = np.array([1e6, -1e6, 1.0], dtype=np.float32)
    out = Pipeline("float16").encode(x, [3], np.random.default_rng(0)).decoded
    assert np.all(np.isfinite(out)) and out[0] == 65504 and out[1] == -65504


def test_params_round_trip_through_the_layout() -> None:
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.ones(4, np.float32)}
    wire, decoded = encode_params(params, Pipeline("int8:block=5"), rng)
    out = decode_params(unpack(pack(wire)), [("w", (3, 4)), ("b", (4,))], {"int8:block=5"})
    assert list(out) == ["w", "b"] and all(np.array_equal(out[k], decoded[k]) for k in out)


# -- error bounds and unbiasedness -----------------------------------------------------------


def scales_per_value(wire: dict[str, Any], lengths: list[int], block: int) -> np.ndarray:
    scales = np.frombuffer(wire["scales"], dtype="<f4")
    n = sum(lengths)
    if block:
        return np.repeat(scales, block)[:n]
    return np.repeat(scales, lengths)


@pytest.mark.parametrize("bits", QUANTISERS)
@pytest.mark.parametrize("block", [0, 8])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@given(lengths=layouts, data=st.data(), seed=st.integers(0, 2**32))
@settings(max_examples=25, deadline=None)
def test_quantiser_error_is_below_one_step_or_half_a_step(
    bits: str, block: int, rounding: str, lengths: list[int], data: st.DataObject, seed: int
) -> None:
    x = flat(lengths, data)
    encoded = Pipeline(f"{bits}:block={block},round={rounding}").encode(
        x, lengths, np.random.default_rng(seed)
    )
    step = scales_per_value(encoded.wire, lengths, block).astype(np.float64)
    bound = step if rounding == "stochastic" else step / 2
    error = np.abs(encoded.decoded.astype(np.float64) - x)
    assert np.all(error <= bound * (1 + 1e-5) + 1e-30)


@pytest.mark.parametrize("codec", ["int8", "int4:block=16", "int2:block=16"])
def test_stochastic_rounding_is_unbiased(codec: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=64).astype(np.float32)
    pipeline = Pipeline(codec)
    draws = 20_000
    total = np.zeros(64)
    for _ in range(draws):
        total += pipeline.encode(x, [64], rng).decoded
    step = float(np.max(np.abs(x)))  # one quantisation step is at most this
    # the mean of `draws` independent errors, each within one step: 5 sigma of U-like noise
    assert np.max(np.abs(total / draws - x)) < 5 * step / np.sqrt(draws)
    nearest = Pipeline(codec.replace(":block=16", "") + ":round=nearest")
    assert np.max(np.abs(nearest.encode(x, [64], rng).decoded - x)) > 0  # it really rounds


def test_sign_sends_the_mean_magnitude_per_block() -> None:
    x = np.array([1, -3, 2, -2, 0.5, -0.5], dtype=np.float32)
    out = Pipeline("sign:block=4").encode(x, [6], np.random.default_rng(0)).decoded
    np.testing.assert_allclose(out, [2, -2, 2, -2, 0.5, -0.5])


def test_all_zero_input_decodes_to_zeros() -> None:
    for codec in ALL_CODECS:
        encoded = Pipeline(codec).encode(np.zeros(50, np.float32), [50], np.random.default_rng(0))
        assert not np.any(encoded.decoded), codec


# -- top-k -----------------------------------------------------------------------------------


@given(lengths=layouts, data=st.data(), k=st.integers(1, 50))
@settings(max_examples=150, deadline=None)
def test_topk_keeps_exactly_the_k_largest_magnitudes(
    lengths: list[int], data: st.DataObject, k: int
) -> None:
    x = flat(lengths, data)
    encoded = Pipeline(f"topk:{k}").encode(x, lengths, np.random.default_rng(0))
    kept = np.flatnonzero(encoded.decoded != 0)
    want = min(k, x.size)
    assert encoded.wire["nnz"] == want
    positions = decode_indices(encoded.wire["index_coding"], encoded.wire["index"], x.size, want)
    assert positions.size == want and np.all(np.diff(positions) > 0)
    assert set(kept) <= set(positions)
    np.testing.assert_array_equal(encoded.decoded[positions], x[positions])
    dropped = np.setdiff1d(np.arange(x.size), positions)
    if dropped.size:
        assert np.min(np.abs(x[positions])) >= np.max(np.abs(x[dropped]))


def test_topk_fraction_rounds_up_and_keeps_at_least_one() -> None:
    assert parse_pipeline("topk:0.05").topk.k_for(9610) == 481  # type: ignore[union-attr]
    assert parse_pipeline("topk:0.001").topk.k_for(10) == 1  # type: ignore[union-attr]
    assert parse_pipeline("topk:500").topk.k_for(10) == 10  # type: ignore[union-attr]


@given(st.sets(st.integers(0, 4999), max_size=600))
@settings(max_examples=200, deadline=None)
def test_index_coding_round_trips_and_picks_the_smaller(chosen: set[int]) -> None:
    n = 5000
    indices = np.array(sorted(chosen), dtype=np.int64)
    coding, data = encode_indices(indices, n)
    np.testing.assert_array_equal(decode_indices(coding, data, n, indices.size), indices)
    gaps = np.diff(indices, prepend=-1) - 1
    assert len(data) == min(len(encode_varints(gaps)), (n + 7) // 8) or coding == "bitmap"
    if coding == "bitmap":
        assert len(encode_varints(gaps)) > (n + 7) // 8


def test_dense_selections_use_the_bitmap() -> None:
    coding, data = encode_indices(np.arange(0, 1000, 2), 1000)
    assert coding == "bitmap" and len(data) == 125


@given(st.lists(st.integers(0, 2**28 - 1), max_size=200))
@settings(max_examples=200, deadline=None)
def test_varints_round_trip(values: list[int]) -> None:
    data = encode_varints(np.array(values, dtype=np.uint64))
    assert decode_varints(data, len(values)).tolist() == values


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@given(data=st.data())
@settings(max_examples=50, deadline=None)
def test_bit_packing_round_trips(bits: int, data: st.DataObject) -> None:
    codes = data.draw(
        hnp.arrays(np.uint8, st.integers(0, 100), elements=st.integers(0, 2**bits - 1))
    )
    packed = pack_codes(codes, bits)
    assert len(packed) == (codes.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(packed, bits, codes.size), codes)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: decode_indices("delta", encode_varints(np.array([5, 0])), 6, 2), "out of range"),
        (lambda: decode_indices("delta", b"\x85", 100, 1), "does not hold"),
        (lambda: decode_indices("delta", b"\x80\x80\x80\x80\x01", 10**9, 1), "longer than"),
        (lambda: decode_indices("delta", b"\x01\x01", 100, 1), "does not hold"),
        (lambda: decode_indices("bitmap", b"\x00\xf0", 12, 0), "padding"),
        (lambda: decode_indices("bitmap", b"\x0f\x00", 12, 3), "marks 4"),
        (lambda: decode_indices("bitmap", b"\x0f", 12, 4), "bytes hold no"),
        (lambda: decode_indices("runs", b"", 12, 0), "unknown index coding"),
        (lambda: unpack_codes(b"\x10", 4, 1), "padding"),
    ],
)
def test_index_and_bit_decoders_refuse_bad_input(call: Callable[[], object], words: str) -> None:
    with pytest.raises(WireError) as info:
        call()
    assert words in str(info.value) and info.value.reason == "malformed"


# -- the lossless stage ----------------------------------------------------------------------


def test_zstd_and_zlib_shrink_redundant_updates_and_round_trip() -> None:
    x = np.zeros(4000, np.float32)
    x[::3] = 0.5
    for codec in ("int8+zstd", "int8+zlib"):
        encoded = Pipeline(codec).encode(x, [4000], np.random.default_rng(0))
        assert len(encoded.wire["z"]) < 1000
        np.testing.assert_array_equal(Pipeline(codec).decode(encoded.wire, [4000]), encoded.decoded)


def test_a_zstd_announcement_accepts_zlib_from_agents_without_zstandard() -> None:
    assert accepted_names("topk:0.05+int8+zstd") == {"topk:0.05+int8+zstd", "topk:0.05+int8+zlib"}
    assert accepted_names("int8") == {"int8"}


@pytest.mark.parametrize("stage", ["zstd", "zlib"])
def test_decompression_bombs_are_oversize(stage: str) -> None:
    bomb = lossless.compress(stage, pack({"data": bytes(10_000_000)}))
    wire = {"codec": f"int8+{stage}", "n": 100, "z": bomb}
    with pytest.raises(WireError) as info:
        Pipeline(f"int8+{stage}").decode(wire, [100])
    assert info.value.reason == "oversize"


@pytest.mark.parametrize("stage", ["zstd", "zlib"])
def test_corrupt_or_trailing_frames_are_malformed(stage: str) -> None:
    good = Pipeline(f"int8+{stage}").encode(
        np.ones(100, np.float32), [100], np.random.default_rng(0)
    )
    z = good.wire["z"]
    for bad in (z[: len(z) // 2], z + b"junk", b"\x00" * 16, b""):
        with pytest.raises(WireError) as info:
            Pipeline(f"int8+{stage}").decode({**good.wire, "z": bad}, [100])
        assert info.value.reason == "malformed"


def test_zlib_stream_that_is_not_msgpack_is_malformed() -> None:
    wire = {"codec": "int8+zlib", "n": 4, "z": zlib.compress(b"\xc1\xc1")}
    with pytest.raises(WireError):
        Pipeline("int8+zlib").decode(wire, [4])


# -- defensive decoding ----------------------------------------------------------------------


def encoded_wire(codec: str, n: int = 40) -> dict[str, Any]:
    x = np.linspace(-1, 1, n, dtype=np.float32)
    return dict(Pipeline(codec).encode(x, [n], np.random.default_rng(0)).wire)


@pytest.mark.parametrize(
    ("codec", "mutate", "reason"),
    [
        ("int8", lambda w: w.update(scales=w["scales"] + b"\0\0\0\0"), "malformed"),
        ("int8", lambda w: w.update(data=w["data"][:-1]), "malformed"),
        ("int8", lambda w: w.update(scales=np.float32([np.nan]).tobytes()), "nonfinite"),
        ("int8", lambda w: w.update(scales=np.float32([-1]).tobytes()), "malformed"),
        ("int8", lambda w: w.update(data=b"\xff" * 40), "malformed"),  # code 255 > 254
        ("int2", lambda w: w.update(data=b"\xff" * 10), "malformed"),  # code 3 > 2
        ("int8", lambda w: w.update(extra=1), "malformed"),
        ("int8", lambda w: w.pop("scales"), "malformed"),
        ("int8", lambda w: w.update(n=41), "shape"),
        ("int8", lambda w: w.update(n=True), "shape"),
        ("int8", lambda w: w.update(codec="int4"), "malformed"),
        ("int8", lambda w: w.update(codec=7), "malformed"),
        ("float32", lambda w: w.update(data=np.full(40, np.inf, "<f4").tobytes()), "nonfinite"),
        ("float16", lambda w: w.update(data=np.full(40, np.nan, "<f2").tobytes()), "nonfinite"),
        ("topk:4+int8", lambda w: w.update(nnz=41), "malformed"),
        ("topk:4+int8", lambda w: w.update(nnz=5), "malformed"),
        ("topk:4+int8", lambda w: w.update(nnz="4"), "malformed"),
        ("topk:4+int8", lambda w: w.update(index_coding="runs"), "malformed"),
        ("topk:4+int8", lambda w: w.update(index=b"\xff\xff\xff\xff\x7f" * 4), "malformed"),
        (
            "topk:4+int8",
            lambda w: w.update(index=encode_varints(np.array([0, 0, 0, 40]))),
            "malformed",
        ),
        ("int8+zlib", lambda w: w.update(z="text"), "malformed"),
        ("int8+zlib", lambda w: w.update(data=b""), "malformed"),
    ],
)
def test_inconsistent_fields_are_typed_rejections(
    codec: str, mutate: Callable[[dict[str, Any]], object], reason: str
) -> None:
    wire = encoded_wire(codec)
    mutate(wire)
    with pytest.raises(WireError) as info:
        decode_params(unpack(pack(wire)), [("w", (40,))], accepted_names(codec))
    assert info.value.reason == reason


@pytest.mark.parametrize("codec", ALL_CODECS)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_mutated_encodings_never_escape_as_anything_but_wire_error(
    codec: str, data: st.DataObject
) -> None:
    wire = encoded_wire(codec, 37)
    key = data.draw(st.sampled_from(sorted(wire)))
    value = data.draw(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            st.binary(max_size=64),
            st.just(wire[key][::-1] if isinstance(wire[key], bytes) else 0),
            st.text(max_size=8),
            st.floats(width=32),
        )
    )
    wire[key] = value
    try:
        decode_params(unpack(pack(wire)), [("w", (37,))], accepted_names(codec))
    except WireError:
        pass


def test_error_feedback_transmits_everything_eventually() -> None:
    """With the residual carried forward, what was sent sums to what was meant, minus the last
    residual: compression delays information, it does not lose it."""
    rng = np.random.default_rng(3)
    pipeline = Pipeline("topk:0.05+int8")
    residual = np.zeros(500, np.float32)
    meant = np.zeros(500)
    sent = np.zeros(500)
    for _ in range(60):
        delta = rng.normal(size=500).astype(np.float32)
        corrected = delta + residual
        decoded = pipeline.encode(corrected, [500], rng).decoded
        residual = corrected - decoded
        meant += delta
        sent += decoded
    np.testing.assert_allclose(sent + residual, meant, atol=1e-3)
    assert np.linalg.norm(residual) < 0.5 * np.linalg.norm(meant)


def _big() -> Any:
    from fedge.wire_fields import Limits

    return Limits(max_bytes=64 << 20)


def test_without_zstandard_agents_send_zlib_and_the_aggregator_accepts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    monkeypatch.setattr(lossless, "zstandard", None)  # a device without the zstd extra
    pipeline = Pipeline("topk:0.1+int8+zstd")
    assert pipeline.sent_as() == "topk:0.1+int8+zlib"
    wire = pipeline.encode(x, [64], np.random.default_rng(0)).wire
    monkeypatch.undo()
    out = decode_params(unpack(pack(wire)), [("w", (64,))], accepted_names("topk:0.1+int8+zstd"))
    assert np.count_nonzero(out["w"]) == 7
