"""The declarative spec of a trainable model, parsed and checked without TensorFlow.

A spec file is JSON: ``{"models": [MODEL, ...]}`` with, per model::

    {"name": "conv8", "input": [8, 8, 1], "n_classes": 10, "seed": 0,
     "layers": [{"conv": 16, "kernel": 3, "stride": 1}, {"dense": 10}],
     "frozen": 0,                        # leading layers baked in as constants (backbone)
     "pretrain": {"dataset": "digits", "epochs": 10, "batch_size": 16, "lr": 0.05},
     "ops": {"relu": "maximum", "conv": "patches"}}

``frozen`` > 0 makes a transfer-learning model: only the later layers (the head) are
variables, trained and federated. ``pretrain`` trains the whole net with the numpy twin first
so a frozen backbone is worth freezing. ``ops`` exists to show what Flex would be needed for
(``"relu": "tf.nn.relu"``, ``"conv": "tf.nn.conv2d"``): the builder refuses such models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError, ModelError
from fedge.models.base import is_int
from fedge.models.numpy_conv import Layer, plan

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
MODEL_KEYS = {"name", "input", "n_classes", "seed", "layers", "frozen", "pretrain", "ops"}
PRETRAIN_KEYS = {"dataset", "epochs", "batch_size", "lr", "seed"}
OPS = {"relu": ("maximum", "tf.nn.relu"), "conv": ("patches", "tf.nn.conv2d")}


@dataclass(frozen=True)
class Pretrain:
    dataset: str
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """One model to build; ``source`` is the spec as written (recorded in the manifest)."""

    name: str
    image: tuple[int, int, int]
    n_classes: int
    layers: list[Layer]
    seed: int = 0
    frozen: int = 0
    pretrain: Pretrain | None = None
    ops: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def load_specs(path: str | Path) -> list[ModelSpec]:
    """Every model of a spec file, or ConfigError naming the file and the bad key."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read spec: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ConfigError(f'{path}: want {{"models": [...]}}')
    specs = [parse_model(m, where=f"{path}: models[{i}]") for i, m in enumerate(raw["models"])]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: model names repeat: {names}")
    return specs


def parse_model(raw: object, *, where: str = "model") -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a map")
    unknown = sorted(set(raw) - MODEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(MODEL_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: want {NAME.pattern}, got {name!r:.40}")
    image = raw.get("input")
    if not isinstance(image, list) or len(image) != 3 or not all(is_int(d) for d in image):
        raise ConfigError(f"{where}.input: want [height, width, channels]")
    n_classes, seed, frozen = raw.get("n_classes"), raw.get("seed", 0), raw.get("frozen", 0)
    if not is_int(n_classes) or not is_int(seed) or not is_int(frozen):
        raise ConfigError(f"{where}: n_classes, seed and frozen must be integers")
    layers = [_layer(item, f"{where}.layers[{i}]") for i, item in enumerate(raw.get("layers", []))]
    try:
        plan(tuple(image), layers, int(n_classes))
    except ModelError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not 0 <= frozen < len(layers):
        raise ConfigError(f"{where}.frozen: 0..{len(layers) - 1} (the last layer always trains)")
    ops = raw.get("ops", {})
    if not isinstance(ops, Mapping) or any(ops.get(k, OPS[k][0]) not in OPS[k] for k in OPS):
        raise ConfigError(f"{where}.ops: allowed {OPS}")
    if set(ops) - set(OPS):
        raise ConfigError(f"{where}.ops: unknown keys {sorted(set(ops) - set(OPS))}")
    return ModelSpec(
        name,
        (int(image[0]), int(image[1]), int(image[2])),
        int(n_classes),
        layers,
        int(seed),
        int(frozen),
        _pretrain(raw.get("pretrain"), f"{where}.pretrain"),
        dict(ops),
        dict(raw),
    )


def _layer(item: object, where: str) -> Layer:
    if isinstance(item, Mapping) and "dense" in item and set(item) == {"dense"}:
        return Layer("dense", _int(item["dense"], where))
    if isinstance(item, Mapping) and "conv" in item and set(item) <= {"conv", "kernel", "stride"}:
        return Layer(
            "conv",
            _int(item["conv"], where),
            _int(item.get("kernel", 3), where),
            _int(item.get("stride", 1), where),
        )
    raise ConfigError(
        f'{where}: want {{"dense": units}} or {{"conv": filters, "kernel": k, "stride": s}}'
    )


def _int(value: object, where: str) -> int:
    if not is_int(value):
        raise ConfigError(f"{where}: {value!r:.20} is not an integer")
    return int(value)


def _pretrain(raw: object, where: str) -> Pretrain | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - PRETRAIN_KEYS or "dataset" not in raw:
        raise ConfigError(f"{where}: want a map with 'dataset' and any of {sorted(PRETRAIN_KEYS)}")
    try:
        return Pretrain(**dict(raw))
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
