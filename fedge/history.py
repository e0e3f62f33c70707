"""The per-round history file: JSON Lines, one object per closed round, appended and fsynced.

A crash mid-write can leave a torn last line; the next append starts on a fresh line and
``read`` skips the torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        torn = end > 0 and handle.seek(end - 1) >= 0 and handle.read(1) != b"\n"
        line = json.dumps(record, sort_keys=True).encode("utf-8") + b"\n"
        handle.write(b"\n" + line if torn else line)  # after a torn line: a line of our own
        handle.flush()
        os.fsync(handle.fileno())


def append_missing(path: str | Path, record: dict[str, Any]) -> bool:
    """Append ``record`` unless the file already ends with it (same round and attempt).

    The aggregator keeps the last round's record in its checkpoint and calls this on start,
    so a crash between the checkpoint and the history write costs no line and duplicates none.
    """
    last = _last_record(Path(path))
    if last is not None and (last.get("round"), last.get("opened")) == (
        record.get("round"),
        record.get("opened"),
    ):
        return False
    append(path, record)
    return True


def _last_record(path: Path, tail: int = 1 << 20) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail))
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if line.strip():
            try:
                value = json.loads(line)
            except ValueError:
                return None  # a torn last line: nothing trustworthy to compare against
            return value if isinstance(value, dict) else None
    return None


def read(path: str | Path) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # blank, or torn by a crash mid-write
    return records
