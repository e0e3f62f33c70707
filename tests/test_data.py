"""Bundled datasets, client partitions and the on-device data file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.data import (
    DATASETS,
    label_histogram,
    load_dataset,
    load_npz,
    parse_partition,
    partition,
    save_npz,
)
from fedge.errors import ConfigError, DataError

# --- datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_features", "n_classes", "n_samples"),
    [("digits", 64, 10, 1797), ("breast_cancer", 30, 2, 569)],
)
def test_bundled_dataset_loads_with_expected_shapes(
    name: str, n_features: int, n_classes: int, n_samples: int
) -> None:
    data = load_dataset(name, seed=0)
    assert (data.name, data.n_features, data.n_classes) == (name, n_features, n_classes)
    assert len(data.y_train) + len(data.y_test) == n_samples
    assert data.x_train.shape == (len(data.y_train), n_features)
    assert data.x_test.shape == (len(data.y_test), n_features)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert len(data.y_test) == pytest.approx(0.2 * n_samples, abs=1)
    assert set(np.unique(data.y_train)) == set(range(n_classes))


@pytest.mark.parametrize("name", DATASETS)
def test_training_features_are_standardised_on_train_split(name: str) -> None:
    x = load_dataset(name, seed=3).x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    std = x.std(axis=0)
    # constant columns (blank digit pixels) stay 0 rather than dividing by zero
    assert np.all((np.abs(std - 1.0) < 1e-4) | (std < 1e-6))
    assert np.isfinite(load_dataset(name, seed=3).x_test).all()


def test_dataset_split_is_deterministic_under_seed_and_varies_across_seeds() -> None:
    a, b = load_dataset("digits", seed=7), load_dataset("digits", seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_dataset("digits", seed=8)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("name", DATASETS)
def test_test_split_is_stratified(name: str) -> None:
    data = load_dataset(name, seed=1)
    train = np.bincount(data.y_train) / len(data.y_train)
    test = np.bincount(data.y_test, minlength=data.n_classes) / len(data.y_test)
    np.testing.assert_allclose(test, train, atol=0.02)


def test_unknown_dataset_is_a_config_error_naming_allowed_values() -> None:
    with pytest.raises(ConfigError, match="digits, breast_cancer"):
        load_dataset("mnist")


def test_test_fraction_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


# --- partitions -------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, 10 balanced classes


def assert_disjoint_and_complete(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("iid", ("iid", None)), ("dirichlet:0.5", ("dirichlet", 0.5)), (" IID ", ("iid", None))],
)
def test_partition_spec_parses_allowed_forms(text: str, parsed: tuple) -> None:
    assert parse_partition(text) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "noniid",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:abc",
        "dirichlet:nan",
        "dirichlet:inf",
        "iid:1",
    ],
)
def test_bad_partition_specs_are_rejected_with_allowed_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match="dirichlet:ALPHA"):
        parse_partition(spec)
    with pytest.raises(ConfigError):
        partition(LABELS, 3, spec, seed=0)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "dirichlet:100"])
def test_partition_is_disjoint_complete_and_deterministic(spec: str) -> None:
    parts = partition(LABELS, 7, spec, seed=5)
    assert len(parts) == 7
    assert_disjoint_and_complete(parts, len(LABELS))
    again = partition(LABELS, 7, spec, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 7, spec, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_partition_is_as_even_as_possible() -> None:
    sizes = [len(p) for p in partition(LABELS, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_partition_respects_min_size() -> None:
    assert min(len(p) for p in partition(LABELS, 20, "iid", seed=2, min_size=30)) >= 30
    # seed 0's first Dirichlet draw leaves a client below 10 samples, so it must redraw
    first = partition(LABELS, 20, "dirichlet:0.3", seed=0, min_size=0)
    assert min(len(p) for p in first) < 10
    parts = partition(LABELS, 20, "dirichlet:0.3", seed=0, min_size=10)
    assert min(len(p) for p in parts) >= 10
    assert_disjoint_and_complete(parts, len(LABELS))


def test_more_clients_than_min_size_allows_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot give"):
        partition(LABELS, 301, "iid", seed=0)
    with pytest.raises(ConfigError, match="n_clients"):
        partition(LABELS, 0, "iid", seed=0)


def test_unreachable_min_size_under_tiny_alpha_is_a_config_error() -> None:
    two_classes = np.repeat([0, 1], 50)
    with pytest.raises(ConfigError, match="larger alpha"):
        partition(two_classes, 10, "dirichlet:0.001", seed=0, min_size=5)


def mean_label_entropy(parts: list[np.ndarray], y: np.ndarray, n_classes: int) -> float:
    counts = label_histogram(y, parts, n_classes).astype(np.float64)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(h.mean())


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    skewed = mean_label_entropy(partition(LABELS, 10, "dirichlet:0.1", seed=0), LABELS, 10)
    mild = mean_label_entropy(partition(LABELS, 10, "dirichlet:100", seed=0), LABELS, 10)
    iid = mean_label_entropy(partition(LABELS, 10, "iid", seed=0), LABELS, 10)
    assert skewed < 0.6 * np.log(10) < mild
    assert abs(mild - iid) < 0.1


def test_label_histogram_counts_each_clients_labels() -> None:
    y = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 1, 3]])


@given(
    n_samples=st.integers(1, 200),
    n_classes=st.integers(1, 6),
    n_clients=st.integers(1, 30),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_any_dirichlet_partition_is_complete_or_a_config_error(
    n_samples: int, n_classes: int, n_clients: int, alpha: float, seed: int
) -> None:
    y = np.random.default_rng(seed).integers(0, n_classes, n_samples)
    try:
        parts = partition(y, n_clients, f"dirichlet:{alpha!r}", seed=seed)
    except ConfigError:
        return
    assert len(parts) == n_clients
    assert min(len(p) for p in parts) >= 2
    assert_disjoint_and_complete(parts, n_samples)


# --- the on-device data file ------------------------------------------------------------


def test_npz_round_trip_gives_float32_x_and_int64_y(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(5, 3))
    y = np.array([0, 2, 1, 1, 0], dtype=np.int32)
    path = tmp_path / "sub" / "data.npz"
    save_npz(path, x, y)
    lx, ly = load_npz(path, n_features=3, n_classes=3)
    assert lx.dtype == np.float32 and ly.dtype == np.int64
    np.testing.assert_allclose(lx, x, rtol=1e-6)
    np.testing.assert_array_equal(ly, y)
    assert [p.name for p in path.parent.iterdir()] == ["data.npz"]  # no temp file left


def test_save_refuses_data_it_could_not_load(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="length|samples"):
        save_npz(tmp_path / "d.npz", np.zeros((3, 2)), np.zeros(2, dtype=int))
    assert not (tmp_path / "d.npz").exists()


GOOD_X = np.ones((4, 3), dtype=np.float32)
GOOD_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("arrays", "kwargs", "problem"),
    [
        ({"y": GOOD_Y}, {}, "missing array"),
        ({"x": GOOD_X}, {}, "missing array"),
        ({"x": GOOD_X[0], "y": GOOD_Y}, {}, "2-D"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, {}, "1-D"),
        ({"x": GOOD_X, "y": GOOD_Y[:3]}, {}, "4 samples but y has 3"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, dtype=int)}, {}, "empty"),
        ({"x": np.where(np.eye(4, 3), np.nan, 1.0), "y": GOOD_Y}, {}, "NaN"),
        ({"x": np.full((4, 3), 1e300), "y": GOOD_Y}, {}, "infinite"),
        ({"x": GOOD_X.astype(str), "y": GOOD_Y}, {}, "numeric"),
        ({"x": GOOD_X, "y": GOOD_Y + 0.5}, {}, "integer"),
        ({"x": GOOD_X, "y": GOOD_Y.astype(str)}, {}, "integer"),
        ({"x": GOOD_X, "y": GOOD_Y - 1}, {}, "negative"),
        ({"x": GOOD_X, "y": GOOD_Y * 5}, {"n_classes": 2}, "out of range"),
        ({"x": GOOD_X, "y": GOOD_Y}, {"n_features": 4}, "expects 4"),
    ],
)
def test_defective_data_file_is_a_data_error_naming_file_and_problem(
    tmp_path: Path, arrays: dict, kwargs: dict, problem: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem) as info:
        load_npz(path, **kwargs)
    assert str(path) in str(info.value)


def test_integral_float_labels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, x=GOOD_X, y=GOOD_Y.astype(np.float64))
    np.testing.assert_array_equal(load_npz(path)[1], GOOD_Y)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "no such data file"), (b"", "unreadable"), (b"not a zip", "unreadable")],
)
def test_missing_or_unreadable_file_is_a_data_error(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "data.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_pickled_or_bare_npy_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([[object()]], dtype=object), y=GOOD_Y[:1])
    with pytest.raises(DataError, match="unreadable"):
        load_npz(pickled)
    bare = tmp_path / "x.npy"
    np.save(bare, GOOD_X)
    with pytest.raises(DataError, match="not an .npz"):
        load_npz(bare)
