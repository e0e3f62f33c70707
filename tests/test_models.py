"""Numpy models: gradients match finite differences, training learns, weights and specs are
checked at the edges, and the registry turns names and network specs into models."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import ConfigError, DataError, ModelError
from fedge.models import (
    MLP,
    LogisticRegression,
    Model,
    build_model,
    model_from_spec,
    parse_model_name,
)
from fedge.models.numpy_models import (
    dense_backward,
    dense_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from fedge.params import num_parameters, spec_of

N_FEATURES, N_CLASSES = 5, 3

ARCHITECTURES: dict[str, Callable[..., Model]] = {
    "logreg": lambda seed=0, l2=0.0: LogisticRegression(N_FEATURES, N_CLASSES, seed=seed, l2=l2),
    "mlp1": lambda seed=0, l2=0.0: MLP(N_FEATURES, N_CLASSES, hidden=(6,), seed=seed, l2=l2),
    "mlp2": lambda seed=0, l2=0.0: MLP(N_FEATURES, N_CLASSES, hidden=(6, 4), seed=seed, l2=l2),
}
TENSORS = {
    "logreg": ["dense0.w", "dense0.b"],
    "mlp1": ["dense0.w", "dense0.b", "dense1.w", "dense1.b"],
    "mlp2": ["dense0.w", "dense0.b", "dense1.w", "dense1.b", "dense2.w", "dense2.b"],
}
CASES = [(arch, tensor) for arch, tensors in TENSORS.items() for tensor in tensors]


def blobs(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters, one per class: a problem every model should solve."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.normal(size=(N_CLASSES, N_FEATURES))
    y = rng.integers(0, N_CLASSES, size=n)
    x = centres[y] + rng.normal(size=(n, N_FEATURES))
    return x.astype(np.float32), y


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))


def numeric_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of f with respect to every entry of ``array`` (changed in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        up = f()
        array[index] = saved - eps
        down = f()
        array[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


# -- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "tensor"), CASES)
def test_gradient_of_each_tensor_matches_central_differences(arch: str, tensor: str) -> None:
    model = ARCHITECTURES[arch](seed=3, l2=0.01)
    rng = np.random.default_rng(7)
    params = {
        n: a.astype(np.float64) + 0.1 * rng.normal(size=a.shape)
        for n, a in model.get_weights().items()
    }
    x = rng.normal(size=(9, N_FEATURES))
    y = rng.integers(0, N_CLASSES, size=9)
    _, grads = model.loss_and_gradients(x, y, params=params)  # type: ignore[attr-defined]
    assert list(grads) == TENSORS[arch]
    assert grads[tensor].dtype == np.float64

    def loss() -> float:
        return model.loss_and_gradients(x, y, params=params)[0]  # type: ignore[attr-defined]

    assert relative_error(grads[tensor], numeric_gradient(loss, params[tensor])) < 1e-4


def test_dense_and_relu_backward_match_central_differences() -> None:
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    probe = rng.normal(size=(4, 2))  # loss = sum(probe * layer(x)), so dloss/dout = probe

    def dense_loss() -> float:
        return float(np.sum(probe * dense_forward(x, w, b)))

    dx, dw, db = dense_backward(probe, x, w)
    for analytic, array in ((dx, x), (dw, w), (db, b)):
        assert relative_error(analytic, numeric_gradient(dense_loss, array)) < 1e-4

    z = rng.normal(size=(4, 2))

    def relu_loss() -> float:
        return float(np.sum(probe * relu_forward(z)))

    dz = relu_backward(probe, relu_forward(z))
    assert relative_error(dz, numeric_gradient(relu_loss, z)) < 1e-4


def test_softmax_cross_entropy_gradient_matches_central_differences() -> None:
    rng = np.random.default_rng(1)
    logits, y = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5)
    _, dlogits = softmax_cross_entropy(logits, y)
    numeric = numeric_gradient(lambda: softmax_cross_entropy(logits, y)[0], logits)
    assert relative_error(dlogits, numeric) < 1e-4


def test_softmax_cross_entropy_is_finite_for_huge_logits() -> None:
    logits = np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 0.0]], dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([1, 0]))
    assert loss == pytest.approx((1e4 + np.log(2)) / 2, rel=1e-6)
    assert np.all(np.isfinite(dlogits))


# -- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_training_on_separable_blobs_lowers_loss_and_reaches_high_accuracy(arch: str) -> None:
    model = ARCHITECTURES[arch]()
    x, y = blobs()
    before = model.evaluate(x, y)["loss"]
    fit = model.train(x, y, epochs=20, batch_size=16, lr=0.05, seed=0)
    after = model.evaluate(x, y)
    assert fit["steps"] == 20 * 10
    assert after["loss"] < before / 4
    assert fit["accuracy"] == after["accuracy"] >= 0.97
    assert model.get_weights()["dense0.w"].dtype == np.float32


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_same_seeds_give_identical_weights_and_other_seeds_differ(arch: str) -> None:
    x, y = blobs(60)

    def trained(init_seed: int, train_seed: int) -> dict[str, np.ndarray]:
        model = ARCHITECTURES[arch](seed=init_seed)
        model.train(x, y, epochs=2, batch_size=8, lr=0.1, seed=train_seed)
        return model.get_weights()

    reference = trained(1, 2)
    for name, array in trained(1, 2).items():
        np.testing.assert_array_equal(array, reference[name])
    for other in (trained(1, 3), trained(4, 2)):
        assert any(not np.array_equal(other[n], reference[n]) for n in reference)


def test_bad_hyperparameters_are_config_errors() -> None:
    model = ARCHITECTURES["logreg"]()
    x, y = blobs(10)
    good = {"epochs": 1, "batch_size": 4, "lr": 0.1, "seed": 0}
    for key, bad in [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("seed", -1),
        ("epochs", 1.5),
    ]:
        with pytest.raises(ConfigError, match=key):
            model.train(x, y, **{**good, key: bad})


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros(N_FEATURES), np.zeros(1, int), "shape"),
        (np.zeros((4, N_FEATURES + 1)), np.zeros(4, int), "shape"),
        (np.zeros((0, N_FEATURES)), np.zeros(0, int), "no examples"),
        (np.full((2, N_FEATURES), np.nan), np.zeros(2, int), "NaN"),
        (np.zeros((2, N_FEATURES)), np.array([0, N_CLASSES]), "range"),
        (np.zeros((2, N_FEATURES)), np.array([-1, 0]), "range"),
        (np.zeros((2, N_FEATURES)), np.array([0.0, 1.0]), "integers"),
        (np.zeros((2, N_FEATURES)), np.zeros(3, int), "shape"),
    ],
)
def test_data_that_does_not_fit_the_model_is_a_data_error(
    x: np.ndarray, y: np.ndarray, match: str
) -> None:
    model = ARCHITECTURES["mlp1"]()
    with pytest.raises(DataError, match=match):
        model.evaluate(x, y)
    with pytest.raises(DataError):
        model.train(x, y, epochs=1, batch_size=2, lr=0.1, seed=0)


# -- weights --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_weights_round_trip_as_float32_copies_in_layout_order(arch: str) -> None:
    model = ARCHITECTURES[arch]()
    weights = model.get_weights()
    assert list(weights) == TENSORS[arch]
    assert all(a.dtype == np.float32 for a in weights.values())
    assert model.num_parameters == num_parameters(weights)
    assert all(not a.any() for n, a in weights.items() if n.endswith(".b"))

    weights["dense0.w"][:] = 7.0  # mutating what get_weights returned changes nothing
    assert not np.any(model.get_weights()["dense0.w"] == 7.0)

    new = {n: np.full(a.shape, 0.5, dtype=np.float64) for n, a in weights.items()}
    model.set_weights(new)
    new["dense0.w"][:] = 9.0  # nor does mutating what set_weights was given
    for array in model.get_weights().values():
        assert array.dtype == np.float32 and np.all(array == 0.5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w: w.pop("dense0.b"), "missing"),
        (lambda w: w.update(extra=np.zeros(1)), "unexpected"),
        (lambda w: w.update({"dense0.w": w["dense0.w"].T}), "shape"),
        (lambda w: w["dense0.b"].__setitem__(0, np.nan), "NaN"),
        (lambda w: w["dense0.w"].__setitem__((0, 0), np.inf), "NaN"),
        (lambda w: w.update({"dense0.b": np.array(["a", "b", "c", "d", "e", "f"])}), "real"),
    ],
)
def test_set_weights_refuses_bad_weights_and_keeps_the_old_ones(
    change: Callable[[dict[str, np.ndarray]], object], match: str
) -> None:
    model = ARCHITECTURES["mlp1"]()
    before = model.get_weights()
    bad = model.get_weights()
    change(bad)
    with pytest.raises(ModelError, match=match):
        model.set_weights(bad)
    for name, array in model.get_weights().items():
        np.testing.assert_array_equal(array, before[name])


def test_set_weights_refuses_values_that_overflow_float32() -> None:
    model = ARCHITECTURES["logreg"]()
    weights = {n: a.astype(np.float64) for n, a in model.get_weights().items()}
    weights["dense0.b"][0] = 1e300
    with pytest.raises(ModelError, match="NaN or infinity"):
        model.set_weights(weights)


# -- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical", "hidden"),
    [
        ("logreg", "logreg", []),
        ("mlp", "mlp:128", [128]),
        ("mlp:64", "mlp:64", [64]),
        ("mlp:128,64", "mlp:128,64", [128, 64]),
    ],
)
def test_build_model_accepts_the_documented_names(
    name: str, canonical: str, hidden: list[int]
) -> None:
    assert parse_model_name(name)["hidden"] == hidden
    model = build_model(name, 8, 4, seed=1)
    assert isinstance(model, Model)
    assert model.name == canonical == parse_model_name(name)["name"]
    assert model.describe()["hidden"] == hidden
    widths = [8, *hidden, 4]
    assert spec_of(model.get_weights()) == [
        item
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        for item in ((f"dense{i}.w", (a, b)), (f"dense{i}.b", (b,)))
    ]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "MLP",
        "logreg:4",
        "mlp:",
        "mlp:0",
        "mlp:1,2,3",
        "mlp:4,",
        "mlp: 4",
        "cnn",
        "mlp:100001",
        "mlp:" + "9" * 5000,
    ],
)
def test_unknown_model_names_are_config_errors_naming_the_allowed_forms(name: str) -> None:
    with pytest.raises(ConfigError, match="mlp"):
        build_model(name, 8, 4)


def test_mlp_rejects_zero_or_more_than_two_hidden_layers() -> None:
    for hidden in [(), (4, 4, 4)]:
        with pytest.raises(ModelError, match="hidden"):
            MLP(N_FEATURES, N_CLASSES, hidden=hidden)


@pytest.mark.parametrize("name", ["logreg", "mlp:16", "mlp:16,8"])
def test_model_from_its_own_description_has_the_same_architecture(name: str) -> None:
    model = build_model(name, 12, 5, seed=2)
    spec = model.describe()
    assert msgpack.unpackb(msgpack.packb(spec)) == spec
    rebuilt = model_from_spec(msgpack.unpackb(msgpack.packb(spec)), seed=2)
    assert rebuilt.name == model.name
    assert rebuilt.describe() == spec
    assert spec_of(rebuilt.get_weights()) == spec_of(model.get_weights())
    assert all(np.array_equal(a, model.get_weights()[n]) for n, a in rebuilt.get_weights().items())


GOOD_SPEC = {"framework": "numpy", "arch": "mlp", "n_features": 4, "n_classes": 3, "hidden": [8]}


@pytest.mark.parametrize(
    "changes",
    [
        {"framework": "torch"},
        {"arch": "cnn"},
        {"arch": None},
        {"n_features": 0},
        {"n_features": 100_001},
        {"n_features": True},
        {"n_features": 4.0},
        {"n_classes": 1},
        {"n_classes": 10_001},
        {"hidden": []},
        {"hidden": [1, 2, 3]},
        {"hidden": [0]},
        {"hidden": [100_001]},
        {"hidden": "8"},
        {"hidden": [8.0]},
        {"extra": 1},
        {"arch": "logreg"},
        {"hidden": [100_000, 100_000]},
        {"framework": np.array(["numpy"] * 2)},
    ],
)
def test_model_from_spec_refuses_bad_specs_with_model_error(changes: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        model_from_spec({**GOOD_SPEC, **changes})


def test_model_from_spec_refuses_missing_fields_and_non_maps() -> None:
    for bad in [{k: v for k, v in GOOD_SPEC.items() if k != "hidden"}, [], "mlp", None]:
        with pytest.raises(ModelError):
            model_from_spec(bad)  # type: ignore[arg-type]


junk = (
    st.none()
    | st.booleans()
    | st.floats()
    | st.text(max_size=4)
    | st.integers(-3, 60)
    | st.sampled_from([0, 100_001, 10**30, -(2**70), "numpy", "mlp", "logreg"])
    | st.lists(st.integers(-2, 60) | st.floats() | st.text(max_size=2), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid field three times in four, otherwise junk."""
    return st.tuples(st.integers(0, 3), valid, junk).map(lambda t: t[2] if t[0] == 3 else t[1])


fields = {
    "framework": mostly(st.just("numpy")),
    "arch": mostly(st.sampled_from(["logreg", "mlp"])),
    "n_features": mostly(st.integers(1, 40)),
    "n_classes": mostly(st.integers(2, 20)),
    "hidden": mostly(st.lists(st.integers(1, 40), max_size=3)),
}
full_spec = st.fixed_dictionaries(fields, optional={"extra": junk})
spec_like = full_spec | st.builds(
    lambda spec, drop: {k: v for k, v in spec.items() if k != drop},
    full_spec,
    st.sampled_from(sorted(fields)),
)


@given(spec_like)
@settings(max_examples=150, deadline=None)
def test_model_from_spec_raises_nothing_but_model_error_for_any_map(spec: dict) -> None:
    try:
        model = model_from_spec(spec)
    except ModelError:
        return
    assert model.describe() == spec
