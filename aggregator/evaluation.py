"""What the aggregator evaluates each new global model on, and the model's input/output size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.config import AggregatorConfig


@dataclass(frozen=True)
class EvalData:
    x: np.ndarray
    y: np.ndarray


def resolve_dimensions(config: AggregatorConfig) -> tuple[int, int, EvalData | None]:
    """(n_features, n_classes, held-out data) from the dataset, the test file or the config."""
    if config.dataset:
        from fedge.data import load_dataset

        data = load_dataset(config.dataset, seed=config.seed)
        return data.n_features, data.n_classes, EvalData(data.x_test, data.y_test)
    if config.test_data:
        from fedge.data import load_npz

        x, y = load_npz(
            config.test_data,
            n_features=config.n_features or None,
            n_classes=config.n_classes or None,
        )
        return x.shape[1], config.n_classes or int(y.max()) + 1, EvalData(x, y)
    return config.n_features, config.n_classes, None
