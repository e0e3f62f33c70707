"""Atomic state files: write to a temp file in the same directory, fsync, ``os.replace``.

A crash at any instant leaves either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_msgpack(path: str | Path, obj: Any) -> None:
    write_atomic(path, msgpack.packb(obj, use_bin_type=True))


def read_msgpack(path: str | Path) -> Any | None:
    """The stored object, or None when the file does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
