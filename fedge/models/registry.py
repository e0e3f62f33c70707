"""Model names from config and model specs from the network, turned into models.

A name ("logreg", "mlp", "mlp:64", "mlp:128,64", "conv8", "tflite:conv8") is what an operator
writes; a spec (``Model.describe()``) is what travels in a task. Names are config, so a bad one
is a ConfigError; specs are untrusted input, so any bad one is a ModelError and nothing else.
A TFLite spec pins its file by SHA-256: a device whose file differs refuses with
``reason="model_file"`` instead of training another model.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from typing import Any

from fedge.errors import ConfigError, ModelError
from fedge.models.base import MAX_HIDDEN, MAX_HIDDEN_LAYERS, Model, is_int
from fedge.models.numpy_conv import NUMPY_CONVS, ConvNet, parse_layers
from fedge.models.numpy_models import MLP, LogisticRegression

DEFAULT_HIDDEN = 128
ALLOWED_NAMES = (
    f"'logreg', 'mlp' (= mlp:{DEFAULT_HIDDEN}), 'mlp:H' or 'mlp:H1,H2' "
    f"(hidden sizes 1..{MAX_HIDDEN}), {', '.join(repr(n) for n in NUMPY_CONVS)} (numpy conv nets) "
    "or 'tflite:NAME' (a shipped TFLite model: see `fedge-model list`)"
)
SPEC_KEYS = frozenset({"framework", "arch", "n_features", "n_classes", "hidden"})
CONV_SPEC_KEYS = frozenset({"framework", "arch", "n_features", "n_classes", "image", "layers"})
TFLITE_SPEC_KEYS = frozenset({"framework", "name", "sha256", "n_features", "n_classes"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TFLITE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_MLP_NAME = re.compile(r"mlp:([0-9]+(?:,[0-9]+)*)")


def parse_model_name(name: str) -> dict[str, Any]:
    """{"name": canonical id, "arch": "logreg"|"mlp", "hidden": [sizes]} for a model name."""
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {type(name).__name__}")
    if name == "logreg":
        return {"name": "logreg", "arch": "logreg", "hidden": []}
    if name == "mlp":
        return {"name": f"mlp:{DEFAULT_HIDDEN}", "arch": "mlp", "hidden": [DEFAULT_HIDDEN]}
    if name in NUMPY_CONVS:
        return {"name": name, "arch": "conv", "hidden": []}
    if name.startswith("tflite:"):
        file_name = name[len("tflite:") :]
        if not _TFLITE_NAME.fullmatch(file_name):
            raise ConfigError(f"model {name!r:.60}: tflite:NAME with NAME like 'conv8'")
        return {"name": name, "arch": "tflite", "hidden": [], "file": file_name}
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
    if parsed["arch"] == "tflite":
        return _tflite_model(parsed["file"], n_features, n_classes, seed)
    if parsed["arch"] == "conv":
        image, layers = NUMPY_CONVS[name]
        if int(n_features) != ConvNet(image, layers, n_classes).n_features:
            raise ConfigError(f"model {name}: wants {image} images, data has {n_features} features")
        return ConvNet(image, layers, n_classes, seed=seed, name=name)
    if parsed["arch"] == "logreg":
        return LogisticRegression(n_features, n_classes, seed=seed)
    return MLP(n_features, n_classes, hidden=parsed["hidden"], seed=seed)


def _tflite_model(file_name: str, n_features: int, n_classes: int, seed: int) -> Model:
    """A shipped TFLite model; its size must match the data (ConfigError: this is config)."""
    from fedge.models import zoo
    from fedge.models.tflite_model import TFLiteModel

    try:
        entry = zoo.entry(file_name)
    except ModelError as exc:
        raise ConfigError(str(exc)) from exc
    if (entry["n_features"], entry["n_classes"]) != (n_features, n_classes):
        raise ConfigError(
            f"model tflite:{file_name} maps {entry['n_features']} features to "
            f"{entry['n_classes']} classes; the data has {n_features} and {n_classes}"
        )
    return TFLiteModel(zoo.read(file_name), name=f"tflite:{file_name}", seed=seed)


def model_from_spec(
    spec: Mapping[str, Any], *, seed: int = 0, model_file: bytes | None = None
) -> Model:
    """Rebuild the architecture a spec describes; any malformed spec raises ModelError only.

    ``model_file``: the TFLite file the task shipped (checked against the spec's hash); without
    it a TFLite spec is served from the shipped models, which must have that exact hash.
    """
    if not isinstance(spec, Mapping):
        raise ModelError(f"model spec must be a map, got {type(spec).__name__}")
    framework, arch = spec.get("framework"), spec.get("arch")
    if isinstance(framework, str) and framework == "tflite":
        return _tflite_from_spec(spec, seed, model_file)
    if (
        isinstance(framework, str)
        and framework == "numpy"
        and isinstance(arch, str)
        and arch == "conv"
    ):
        return _conv_from_spec(spec, seed)
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


def _check_keys(spec: Mapping[str, Any], wanted: frozenset[str]) -> None:
    keys = set(spec.keys())
    if keys != wanted:
        missing = sorted(wanted - keys)
        unexpected = sorted(_short(k) for k in keys - wanted)[:8]
        raise ModelError(f"model spec fields differ: missing {missing}, unexpected {unexpected}")


def _conv_from_spec(spec: Mapping[str, Any], seed: int) -> Model:
    _check_keys(spec, CONV_SPEC_KEYS)
    image = spec["image"]
    if not isinstance(image, (list, tuple)) or not all(is_int(d) for d in image):
        raise ModelError(f"model spec image must be a list of integers, got {_short(image)}")
    if not is_int(seed) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer, got {_short(seed)}")
    net = ConvNet(image, parse_layers(spec["layers"]), spec["n_classes"], seed=seed)
    if spec["n_features"] != net.n_features:
        raise ModelError(f"model spec n_features {_short(spec['n_features'])} != image size")
    return net


def _tflite_from_spec(spec: Mapping[str, Any], seed: int, model_file: bytes | None) -> Model:
    from fedge.models.tflite_model import TFLiteModel, sha256_hex

    _check_keys(spec, TFLITE_SPEC_KEYS)
    name, digest = spec["name"], spec["sha256"]
    if not isinstance(name, str) or not name.startswith("tflite:"):
        raise ModelError(f"tflite model spec name must be 'tflite:NAME', got {_short(name)}")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ModelError(f"tflite model spec sha256 must be 64 hex digits, got {_short(digest)}")
    if not is_int(seed) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer, got {_short(seed)}")
    if model_file is not None:
        if sha256_hex(model_file) != digest:
            raise ModelError(f"{name}: shipped model file does not match the task's sha256")
        content = model_file
    else:
        from fedge.models import zoo

        content = zoo.read(name[len("tflite:") :])
        local = sha256_hex(content)
        if local != digest:
            raise ModelError(
                f"{name}: the local model file is sha256 {local[:12]}, the task wants "
                f"{digest[:12]}; update the device's fedge or have the aggregator ship the file",
                reason="model_file",
            )
    model = TFLiteModel(content, name=name, seed=seed)
    if (model.n_features, model.n_classes) != (spec["n_features"], spec["n_classes"]):
        raise ModelError(f"{name}: spec size differs from the file's")
    return model


def _short(value: object) -> str:
    """A bounded repr for error messages about untrusted values."""
    return reprlib.repr(value)[:60]
