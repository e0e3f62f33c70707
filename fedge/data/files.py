"""The on-device data file: an ``.npz`` holding ``x`` (samples x features) and ``y`` (labels).

A device trains on whatever file it is given, so the loader trusts nothing: no pickles, and
every defect is a DataError naming the file and the problem, raised before training starts.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from fedge.errors import DataError
from fedge.statefile import write_atomic

_INT64_MAX = np.iinfo(np.int64).max


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a data file atomically (temp file, fsync, ``os.replace``) as float32 / int64."""
    x, y = _checked(str(path), np.asarray(x), np.asarray(y), None, None)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    write_atomic(path, buffer.getvalue())


def load_npz(
    path: str | Path, *, n_features: int | None = None, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 ``x`` and int64 ``y`` from a data file, checked against the model's shape."""
    name = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{name}: not an .npz archive (expected arrays 'x' and 'y')")
        with loaded as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{name}: missing array(s) {', '.join(missing)}")
            x, y = archive["x"], archive["y"]
    except FileNotFoundError as exc:
        raise DataError(f"{name}: no such data file") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{name}: unreadable .npz ({exc})") from exc
    return _checked(name, x, y, n_features, n_classes)


def _checked(
    name: str, x: np.ndarray, y: np.ndarray, n_features: int | None, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes, values and labels; return contiguous float32 x and int64 y."""
    if x.ndim != 2:
        raise DataError(f"{name}: x must be 2-D (samples x features), got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{name}: y must be 1-D labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{name}: x has {len(x)} samples but y has {len(y)} labels")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name}: empty data, x has shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise DataError(f"{name}: x has {x.shape[1]} features, the model expects {n_features}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{name}: x must be numeric, got dtype {x.dtype}")
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: x contains NaN or infinite values (or overflows float32)")
    return x, _labels(name, y, n_classes)


def _labels(name: str, y: np.ndarray, n_classes: int | None) -> np.ndarray:
    """Integer labels in ``[0, n_classes)``; integral floats are accepted, nothing else."""
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{name}: y must hold integer labels, got non-integer values")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{name}: y must hold integer labels, got dtype {y.dtype}")
    low, high = y.min(), y.max()
    if low < 0:
        raise DataError(f"{name}: y has negative label {low}")
    if high > _INT64_MAX:
        raise DataError(f"{name}: y has label {high}, too large for int64")
    if n_classes is not None and high >= n_classes:
        raise DataError(f"{name}: y has label {high}, out of range for {n_classes} classes")
    return np.ascontiguousarray(y, dtype=np.int64)
