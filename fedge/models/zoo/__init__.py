"""The shipped TFLite models: ``manifest.json`` and the ``.tflite`` files it lists.

Built by ``fedge-model build fedge/models/zoo/specs.json --out fedge/models/zoo``. Reading the
manifest and the files needs no TFLite runtime.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from fedge.errors import ModelError

MANIFEST = "manifest.json"


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """{"format": 1, "models": {name: entry}} of the shipped models."""
    try:
        data = json.loads(resources.files(__name__).joinpath(MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"shipped model manifest unreadable: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ModelError("shipped model manifest has no 'models' map")
    return data


def names() -> list[str]:
    return sorted(manifest()["models"])


def entry(name: str) -> dict[str, Any]:
    models = manifest()["models"]
    if name not in models:
        raise ModelError(
            f"no shipped TFLite model {name!r:.40}; shipped: {', '.join(sorted(models))}",
            reason="model_file",
        )
    result: dict[str, Any] = models[name]
    return result


def read(name: str) -> bytes:
    """The bytes of a shipped model file."""
    try:
        return resources.files(__name__).joinpath(entry(name)["file"]).read_bytes()
    except OSError as exc:
        raise ModelError(f"shipped model {name!r}: {exc}", reason="model_file") from exc
