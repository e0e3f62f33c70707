"""Split a training set among emulated clients: evenly (IID) or with Dirichlet label skew.

The label-skew recipe is Hsu, Qi & Brown (2019), "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification": for each class, draw client shares
from Dirichlet(alpha) and cut that class's samples accordingly. Small alpha gives each client
few classes; large alpha approaches IID. Everything is drawn from one seeded generator, so
every process of a fleet computes the same split independently.
"""

from __future__ import annotations

import math

import numpy as np

from fedge.errors import ConfigError, DataError

FORMS = "'iid' or 'dirichlet:ALPHA' with ALPHA > 0 (e.g. 'dirichlet:0.5')"
MAX_TRIES = 100  # Dirichlet redraws before giving up on min_size


def parse_partition(spec: str) -> tuple[str, float | None]:
    """``("iid", None)`` or ``("dirichlet", alpha)``; anything else is a ConfigError."""
    text = spec.strip().lower()
    if text == "iid":
        return "iid", None
    kind, sep, value = text.partition(":")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(value)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return "dirichlet", alpha
    raise ConfigError(f"bad partition {spec!r}; allowed: {FORMS}")


def partition(
    y: np.ndarray, n_clients: int, spec: str, *, seed: int, min_size: int = 2
) -> list[np.ndarray]:
    """One sorted int64 index array per client; disjoint, covering ``y``, fixed by ``seed``."""
    kind, alpha = parse_partition(spec)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {y.shape}")
    if n_clients < 1:
        raise ConfigError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients * min_size > len(y):
        raise ConfigError(
            f"{len(y)} samples cannot give {n_clients} clients {min_size} samples each"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        parts = np.array_split(rng.permutation(len(y)), n_clients)
    else:
        parts = _dirichlet(y, n_clients, alpha, rng, min_size)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    y: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    """Redraw the per-class shares until every client holds at least ``min_size`` samples."""
    by_class = [np.flatnonzero(y == label) for label in np.unique(y)]
    for _ in range(MAX_TRIES):
        shares: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            if not np.isfinite(p).all():  # older numpy underflows at tiny alpha: the limit
                p = np.eye(n_clients)[rng.integers(n_clients)]
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                shares[client].append(chunk)
        parts = [np.concatenate(s) for s in shares]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ConfigError(
        f"dirichlet:{alpha:g} left some of {n_clients} clients with fewer than {min_size} "
        f"samples in {MAX_TRIES} draws; use fewer clients, a smaller min_size or a larger alpha"
    )


def label_histogram(y: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Counts per (client, class), to show or test how skewed a partition is."""
    y = np.asarray(y)
    counts = np.zeros((len(parts), n_classes), dtype=np.int64)
    for client, idx in enumerate(parts):
        row = np.bincount(y[idx], minlength=n_classes)
        if len(row) > n_classes:
            raise DataError(f"labels reach {len(row) - 1}, beyond n_classes={n_classes}")
        counts[client] = row
    return counts
