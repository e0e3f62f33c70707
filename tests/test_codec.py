"""Codecs: exact round trips, int8 error bound and unbiasedness, defensive decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.codec import CODECS, Int8Codec, decode_params, encode_params, get_codec
from fedge.errors import WireError

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)


@given(hnp.arrays(np.float32, shapes, elements=finite32), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_float32_round_trip_is_exact(array: np.ndarray, seed: int) -> None:
    tensors = encode_params({"w": array}, get_codec("float32"), np.random.default_rng(seed))
    out = decode_params(tensors, [("w", array.shape)])
    np.testing.assert_array_equal(out["w"], array)


@given(hnp.arrays(np.float32, shapes, elements=finite32), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_int8_error_is_below_one_scale_step(array: np.ndarray, seed: int) -> None:
    tensors = encode_params({"w": array}, Int8Codec(), np.random.default_rng(seed))
    scale = tensors[0]["scale"]
    assert len(tensors[0]["data"]) == array.size
    out = decode_params(tensors, [("w", array.shape)])["w"]
    bound = np.float32(scale) * (1 + 1e-5) + 1e-30
    assert np.all(np.abs(out - array) <= bound)


def test_int8_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=64).astype(np.float32)
    codec = Int8Codec()
    draws = [
        decode_params(encode_params({"w": x}, codec, np.random.default_rng(s)), [("w", x.shape)])[
            "w"
        ]
        for s in range(4000)
    ]
    scale = np.max(np.abs(x)) / 127
    mean_error = np.mean(draws, axis=0) - x
    # the standard error of each mean is at most scale/2/sqrt(4000) ~ scale * 0.008
    assert np.max(np.abs(mean_error)) < 0.04 * scale


def test_int8_of_all_zeros_is_zero_with_zero_scale() -> None:
    tensors = encode_params({"w": np.zeros(5, np.float32)}, Int8Codec(), np.random.default_rng())
    assert tensors[0]["scale"] == 0.0
    assert not decode_params(tensors, [("w", (5,))])["w"].any()


def test_encoding_refuses_non_finite_input() -> None:
    with pytest.raises(ValueError):
        encode_params(
            {"w": np.array([1.0, np.nan], np.float32)}, Int8Codec(), np.random.default_rng()
        )


def _one(codec: str = "int8") -> list[dict]:
    return encode_params(
        {"w": np.ones((2, 3), np.float32)}, get_codec(codec), np.random.default_rng(0)
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.update(data=t["data"][:-1]), "malformed"),
        (lambda t: t.update(data="text"), "malformed"),
        (lambda t: t.update(scale=float("nan")), "nonfinite"),
        (lambda t: t.update(scale=-1.0), "nonfinite"),
        (lambda t: t.update(scale="1"), "malformed"),
        (lambda t: t.update(shape=[3, 2]), "shape"),
        (lambda t: t.update(shape=[2, True]), "shape"),
        (lambda t: t.update(name="v"), "shape"),
        (lambda t: t.update(codec="zstd"), "malformed"),
        (lambda t: t.update(dtype="float64"), "malformed"),
        (lambda t: t.pop("data"), "malformed"),
    ],
)
def test_decoding_rejects_inconsistent_tensors_with_a_reason(mutate, reason: str) -> None:
    tensors = _one()
    mutate(tensors[0])
    with pytest.raises(WireError) as info:
        decode_params(tensors, [("w", (2, 3))])
    assert info.value.reason == reason


def test_decoding_rejects_nan_in_float32_data() -> None:
    tensors = _one("float32")
    tensors[0]["data"] = np.array([np.nan] * 6, "<f4").tobytes()
    with pytest.raises(WireError) as info:
        decode_params(tensors, [("w", (2, 3))])
    assert info.value.reason == "nonfinite"


def test_decoding_enforces_the_announced_codec() -> None:
    with pytest.raises(WireError):
        decode_params(_one("float32"), [("w", (2, 3))], allowed_codecs=("int8",))


def test_wrong_tensor_count_is_a_shape_rejection() -> None:
    with pytest.raises(WireError) as info:
        decode_params(_one(), [("w", (2, 3)), ("b", (3,))])
    assert info.value.reason == "shape"


def test_registry_lists_int8_and_float32() -> None:
    assert set(CODECS) == {"int8", "float32"}
    with pytest.raises(ValueError, match="known"):
        get_codec("int4")
