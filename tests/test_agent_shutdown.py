"""Stopping an agent: training abandoned between two steps, status offline, state intact."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.errors import TrainingStopped
from fedge.models import build_model


def test_training_stops_between_steps_when_asked() -> None:

    model = build_model("mlp:16", 8, 3, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    before = model.get_weights()
    calls: list[int] = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(TrainingStopped, match="after 3 steps"):
        model.train(x, y, epochs=50, batch_size=8, lr=0.1, seed=0, should_stop=stop_after_three)
    assert len(calls) == 4  # asked before each step; nothing after the answer was yes
    assert any(not np.array_equal(before[k], v) for k, v in model.get_weights().items())
