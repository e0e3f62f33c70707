"""Federated Averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017).

new_global = global + sum_i(n_i * delta_i) / sum_i(n_i), which equals the mean of the
clients' parameters weighted by their example counts. The sum is kept in float64 so the
order in which updates arrive does not change the result beyond float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator.strategies.base import Strategy
from fedge.params import Params


def weighted_delta_sum(
    sums: dict[str, np.ndarray], delta: Mapping[str, np.ndarray], weight: float
) -> None:
    """sums += weight * delta, in place (float64)."""
    for name, value in delta.items():
        sums[name] += weight * np.asarray(value, dtype=np.float64)


def apply_mean(
    global_weights: Mapping[str, np.ndarray], sums: Mapping[str, np.ndarray], total_weight: float
) -> Params:
    """global + sums / total_weight, as float32; the global itself when nothing was folded."""
    if total_weight <= 0:
        return {n: np.array(v, dtype=np.float32) for n, v in global_weights.items()}
    return {
        name: (
            np.asarray(global_weights[name], dtype=np.float64) + sums[name] / total_weight
        ).astype(np.float32)
        for name in global_weights
    }


class FedAvg(Strategy):
    """Example-weighted mean of the clients' deltas, folded one update at a time."""

    name = "fedavg"

    def __init__(self) -> None:
        self._global: Params = {}
        self._sums: dict[str, np.ndarray] = {}
        self._total = 0.0

    def start(self, global_weights: Mapping[str, np.ndarray]) -> None:
        self._global = {n: np.array(v, dtype=np.float32) for n, v in global_weights.items()}
        self._sums = {n: np.zeros(v.shape, dtype=np.float64) for n, v in global_weights.items()}
        self._total = 0.0

    def fold(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        weighted_delta_sum(self._sums, delta, float(weight))
        self._total += float(weight)

    def finish(self) -> Params:
        return apply_mean(self._global, self._sums, self._total)

    @property
    def total_weight(self) -> float:
        return self._total

    def state(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "sums": {n: (list(a.shape), a.astype("<f8").tobytes()) for n, a in self._sums.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._total = float(state["total"])
        self._sums = {
            n: np.frombuffer(raw, dtype="<f8").reshape(shape).copy()
            for n, (shape, raw) in state["sums"].items()
        }
