"""The aggregator's checkpoint: the next round to run and its global weights, written atomically.

Written after a round closes and before its successor's global is published, so a restart
republishes exactly the model the fleet may already have seen, never an older one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.errors import ConfigError
from fedge.params import Params
from fedge.statefile import read_msgpack, write_msgpack

log = logging.getLogger(__name__)

FILENAME = "checkpoint.msgpack"
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the round to run next (its global is ``weights``)
    weights: Params
    model_hash: bytes
    finished: bool = False


def save(state_dir: str | Path, checkpoint: Checkpoint) -> None:
    write_msgpack(
        Path(state_dir) / FILENAME,
        {
            "format": FORMAT,
            "round": checkpoint.round,
            "finished": checkpoint.finished,
            "model_hash": checkpoint.model_hash,
            "weights": [
                [name, list(a.shape), np.ascontiguousarray(a, dtype="<f4").tobytes()]
                for name, a in checkpoint.weights.items()
            ],
        },
    )


def load(state_dir: str | Path) -> Checkpoint | None:
    """The latest checkpoint, or None for a fresh state dir; a corrupt one is a ConfigError."""
    path = Path(state_dir) / FILENAME
    try:
        raw = read_msgpack(path)
        if raw is None:
            return None
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        weights = {
            name: np.frombuffer(data, dtype="<f4").reshape(shape).copy()
            for name, shape, data in raw["weights"]
        }
        return Checkpoint(
            int(raw["round"]), weights, bytes(raw["model_hash"]), bool(raw.get("finished", False))
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{path}: unreadable checkpoint ({exc}); move it away to start the federation afresh"
        ) from None
