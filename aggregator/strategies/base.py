"""The strategy interface: a streaming fold over updates, O(model) memory whatever the fleet.

``start`` opens a round from the current global, ``fold`` adds one validated delta with its
weight as soon as it arrives, ``finish`` returns the next global. A strategy never holds the
list of updates, and its whole state is ``state()`` so a checkpoint can restore it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedge.params import Params


class Strategy(ABC):
    name: str

    @abstractmethod
    def start(self, global_weights: Mapping[str, np.ndarray]) -> None:
        """Begin a round whose updates are deltas against ``global_weights``."""

    @abstractmethod
    def fold(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Add one validated delta; must not fail for a delta of the right layout."""

    @abstractmethod
    def finish(self) -> Params:
        """The next global model from everything folded since ``start``."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to resume the open round (for checkpoints)."""

    @abstractmethod
    def restore(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``state``."""
