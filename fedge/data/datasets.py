"""Small bundled datasets for emulating a fleet on one machine.

Only scikit-learn's bundled loaders are used, so nothing is downloaded and every run of the
same seed sees the same split. Features are standardised with training statistics only, so
the test split never leaks into what the clients see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASETS = ("digits", "breast_cancer")


@dataclass(frozen=True)
class Dataset:
    """A standardised, stratified train/test split of one bundled dataset."""

    name: str
    x_train: np.ndarray  # float32, (n_train, n_features)
    y_train: np.ndarray  # int64, (n_train,)
    x_test: np.ndarray  # float32, (n_test, n_features)
    y_test: np.ndarray  # int64, (n_test,)
    n_features: int
    n_classes: int


def _bundled(name: str) -> Any:
    """The scikit-learn Bunch for ``name``; imported lazily because devices never need it."""
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise DataError(
            f"dataset {name!r} needs scikit-learn; install the 'fleet' extra: "
            "pip install 'fedge[fleet]'"
        ) from exc
    loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}
    return loaders[name]()


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load a bundled dataset, split it (stratified, seeded) and standardise it on train."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = _bundled(name)
    from sklearn.model_selection import train_test_split

    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    log.debug("loaded %s: %d train, %d test", name, len(y_train), len(y_test))
    return Dataset(
        name=name,
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        n_features=int(x.shape[1]),
        n_classes=len(bunch.target_names),
    )


def emulated_split(
    name: str, num_clients: int, spec: str, *, seed: int
) -> tuple[Dataset, list[np.ndarray]]:
    """A bundled dataset and each emulated client's training rows.

    The fleet emulator and a standalone emulated ``fedge-agent`` both use this, so client i
    holds the same rows either way. One example per client is allowed (a large fleet on a
    small dataset).
    """
    from fedge.data.partition import partition

    data = load_dataset(name, seed=seed)
    return data, partition(data.y_train, num_clients, spec, seed=seed, min_size=1)
