"""Model names from config and model specs from the network, turned into models.

A name ("logreg", "mlp", "mlp:64", "mlp:128,64") is what an operator writes; a spec
(``Model.describe()``) is what travels in a task. Names are config, so a bad one is a
ConfigError; specs are untrusted input, so any bad one is a ModelError and nothing else.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from typing import Any

from fedge.errors import ConfigError, ModelError
from fedge.models.base import MAX_HIDDEN, MAX_HIDDEN_LAYERS, Model, is_int
from fedge.models.numpy_models import MLP, LogisticRegression

DEFAULT_HIDDEN = 128
ALLOWED_NAMES = (
    f"'logreg', 'mlp' (= mlp:{DEFAULT_HIDDEN}), 'mlp:H' or 'mlp:H1,H2' "
    f"(hidden sizes 1..{MAX_HIDDEN})"
)
SPEC_KEYS = frozenset({"framework", "arch", "n_features", "n_classes", "hidden"})
_MLP_NAME = re.compile(r"mlp:([0-9]+(?:,[0-9]+)*)")


def parse_model_name(name: str) -> dict[str, Any]:
    """{"name": canonical id, "arch": "logreg"|"mlp", "hidden": [sizes]} for a model name."""
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {type(name).__name__}")
    if name == "logreg":
        return {"name": "logreg", "arch": "logreg", "hidden": []}
    if name == "mlp":
        return {"name": f"mlp:{DEFAULT_HIDDEN}", "arch": "mlp", "hidden": [DEFAULT_HIDDEN]}
    match = _MLP_NAME.fullmatch(name)
    if match is None:
        raise ConfigError(f"unknown model {name!r:.60}; allowed: {ALLOWED_NAMES}")
    parts = match.group(1).split(",")
    if len(parts) > MAX_HIDDEN_LAYERS:
        raise ConfigError(
            f"model {name!r}: at most {MAX_HIDDEN_LAYERS} hidden layers; allowed: {ALLOWED_NAMES}"
        )
    if not all(len(p) <= len(str(MAX_HIDDEN)) and 1 <= int(p) <= MAX_HIDDEN for p in parts):
        raise ConfigError(f"model {name!r:.60}: hidden sizes must be 1..{MAX_HIDDEN}")
    hidden = [int(p) for p in parts]
    return {"name": "mlp:" + ",".join(map(str, hidden)), "arch": "mlp", "hidden": hidden}


def build_model(name: str, n_features: int, n_classes: int, *, seed: int = 0) -> Model:
    """The model a config names, freshly initialised from ``seed``."""
    parsed = parse_model_name(name)
    if parsed["arch"] == "logreg":
        return LogisticRegression(n_features, n_classes, seed=seed)
    return MLP(n_features, n_classes, hidden=parsed["hidden"], seed=seed)


def model_from_spec(spec: Mapping[str, Any], *, seed: int = 0) -> Model:
    """Rebuild the architecture a spec describes; any malformed spec raises ModelError only."""
    if not isinstance(spec, Mapping):
        raise ModelError(f"model spec must be a map, got {type(spec).__name__}")
    keys = set(spec.keys())
    if keys != SPEC_KEYS:
        missing = sorted(SPEC_KEYS - keys)
        unexpected = sorted(_short(k) for k in keys - SPEC_KEYS)[:8]
        raise ModelError(f"model spec fields differ: missing {missing}, unexpected {unexpected}")
    framework, arch, hidden = spec["framework"], spec["arch"], spec["hidden"]
    if not isinstance(framework, str) or framework != "numpy":
        raise ModelError(f"model spec framework {_short(framework)} is not 'numpy'")
    if not isinstance(hidden, (list, tuple)) or not all(is_int(h) for h in hidden):
        raise ModelError(f"model spec hidden must be a list of integers, got {_short(hidden)}")
    if not is_int(seed) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer, got {_short(seed)}")
    n_features, n_classes = spec["n_features"], spec["n_classes"]
    if isinstance(arch, str) and arch == "logreg":
        if hidden:
            raise ModelError("model spec for logreg must have no hidden layers")
        return LogisticRegression(n_features, n_classes, seed=seed)
    if isinstance(arch, str) and arch == "mlp":
        return MLP(n_features, n_classes, hidden=[int(h) for h in hidden], seed=seed)
    raise ModelError(f"model spec arch {_short(arch)} is not 'logreg' or 'mlp'")


def _short(value: object) -> str:
    """A bounded repr for error messages about untrusted values."""
    return reprlib.repr(value)[:60]
