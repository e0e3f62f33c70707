"""The aggregator's state on disk, two files, each written atomically.

``checkpoint.msgpack``: the next round to run and its global weights, written after a round
closes and before its successor's global is published, so a restart republishes exactly the
model the fleet may already have seen, never an older one. It also keeps the closed round's
history record and the running rejection counts, so neither is lost to a crash.

``round.msgpack``: the open round's partial sum, contributors and clock, written before its
global is published and then after every batch of accepted updates, always before those
updates are acknowledged to the broker. A snapshot for another round or global is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.errors import ConfigError
from fedge.params import Params
from fedge.statefile import read_msgpack, write_msgpack

log = logging.getLogger(__name__)

FILENAME = "checkpoint.msgpack"
ROUND_FILENAME = "round.msgpack"
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the round to run next (its global is ``weights``)
    weights: Params
    model_hash: bytes
    finished: bool = False
    record: dict[str, Any] = field(default_factory=dict)  # history line of the closed round
    rejected: dict[str, int] = field(default_factory=dict)  # all rejections so far, by reason


def save(state_dir: str | Path, checkpoint: Checkpoint) -> None:
    write_msgpack(
        Path(state_dir) / FILENAME,
        {
            "format": FORMAT,
            "round": checkpoint.round,
            "finished": checkpoint.finished,
            "model_hash": checkpoint.model_hash,
            "record": checkpoint.record,
            "rejected": checkpoint.rejected,
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
            int(raw["round"]),
            weights,
            bytes(raw["model_hash"]),
            bool(raw.get("finished", False)),
            dict(raw.get("record") or {}),
            {str(k): int(v) for k, v in (raw.get("rejected") or {}).items()},
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{path}: unreadable checkpoint ({exc}); move it away to start the federation afresh"
        ) from None


def save_round(state_dir: str | Path, snapshot: dict[str, Any]) -> None:
    write_msgpack(Path(state_dir) / ROUND_FILENAME, snapshot)


def load_round(state_dir: str | Path) -> dict[str, Any] | None:
    """The open round's snapshot, or None. Writes are atomic, so an unreadable file means a
    damaged disk: a ConfigError, since the updates it held are acknowledged and gone."""
    path = Path(state_dir) / ROUND_FILENAME
    try:
        raw = read_msgpack(path)
    except Exception as exc:
        raise ConfigError(
            f"{path}: unreadable round snapshot ({exc}); move it away to restart the round"
        ) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: round snapshot is not a map; move it away")
    return raw
