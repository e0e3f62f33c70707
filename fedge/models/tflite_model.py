"""The TFLite backend: a ``.tflite`` file with train / infer / get_weights / set_weights.

The file is the architecture; this class only drives its four signatures. tflite-runtime 2.14
does not verify a flatbuffer before using it (a truncated file can crash the process), so
files are pinned by SHA-256 (the task's spec) before they get here, and the identifier is
checked here; ai-edge-litert verifies the whole buffer. The runtime is
imported lazily (numpy-only agents never load one): ``tflite_runtime`` when importable (the
last release, 2.14, for 32-bit boards and numpy < 2), else ``ai_edge_litert`` (its successor).
``FEDGE_TFLITE_RUNTIME=tflite-runtime|ai-edge-litert`` forces one.

Training uses the numpy backend's batch order (``default_rng(seed).permutation(n)`` per
epoch), so the two backends trained from the same weights on the same data agree.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedge.errors import ModelError
from fedge.models.base import (
    SGDClassifier,
    StopCheck,
    check_weights,
)
from fedge.models.numpy_conv import init_weights
from fedge.params import Params, TensorSpec

SIGNATURES = ("train", "infer", "get_weights", "set_weights")
RUNTIMES = ("tflite-runtime", "ai-edge-litert")
INSTALL_HINT = (
    "install a TFLite runtime: pip install 'fedge[tflite]' (ai-edge-litert; Python 3.10+, "
    "64-bit) or 'fedge[tflite-legacy]' (tflite-runtime 2.14; numpy<2, Python <= 3.11, 32-bit ARM)"
)
MAX_FILE_BYTES = 64 * 1024 * 1024
_WEIGHT = re.compile(r"[a-z]+([0-9]+)_([wb])")


def weight_order(names: list[str]) -> list[str]:
    """Layout order of weight signature keys: by layer index, kernel before bias."""
    keyed = []
    for name in names:
        match = _WEIGHT.fullmatch(name)
        if match is None:
            raise ModelError(f"weight {name!r:.40} is not named like 'conv0_w' / 'dense1_b'")
        keyed.append(((int(match.group(1)), match.group(2) == "b"), name))
    return [name for _, name in sorted(keyed)]


def interpreter_class() -> tuple[Any, str]:
    """(Interpreter class, runtime name), or ModelError saying which extra to install."""
    wanted = os.environ.get("FEDGE_TFLITE_RUNTIME", "")
    if wanted and wanted not in RUNTIMES:
        raise ModelError(
            f"FEDGE_TFLITE_RUNTIME={wanted!r}: use one of {RUNTIMES}", reason="runtime"
        )
    errors = []
    for runtime in RUNTIMES:
        if wanted and runtime != wanted:
            continue
        try:
            if runtime == "tflite-runtime":
                from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]
            else:
                from ai_edge_litert.interpreter import (  # type: ignore[import-untyped]
                    Interpreter,
                )
            return Interpreter, runtime
        except Exception as exc:  # ImportError, or a numpy ABI mismatch raised at import
            errors.append(f"{runtime}: {type(exc).__name__}: {exc}")
    raise ModelError(f"no TFLite runtime ({'; '.join(errors)}); {INSTALL_HINT}", reason="runtime")


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class TFLiteModel(SGDClassifier):
    """A trainable TFLite file behind the ``Model`` interface (weights named like ``conv0_w``)."""

    def __init__(self, content: bytes, *, name: str, seed: int = 0) -> None:
        if not isinstance(content, (bytes, bytearray)) or not 0 < len(content) <= MAX_FILE_BYTES:
            raise ModelError(f"{name}: model file must be 1..{MAX_FILE_BYTES} bytes")
        if bytes(content[4:8]) != b"TFL3":
            raise ModelError(f"{name}: not a TFLite flatbuffer (no TFL3 identifier)")
        self.name = name
        self.content = bytes(content)  # the aggregator may ship it in the task
        self.sha256 = sha256_hex(self.content)
        interpreter_cls, self.runtime = interpreter_class()
        try:
            self._interpreter = interpreter_cls(model_content=bytes(content))
            listed = self._interpreter.get_signature_list()
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError on bad files
            raise ModelError(f"{name}: not a loadable TFLite model: {exc}") from exc
        missing = [s for s in SIGNATURES if s not in listed]
        if missing:
            raise ModelError(f"{name}: model lacks signatures {missing} (has {sorted(listed)})")
        self._runners = {s: self._interpreter.get_signature_runner(s) for s in SIGNATURES}
        outputs = self._runners["get_weights"].get_output_details()
        order = weight_order(list(outputs))
        self._layout: list[TensorSpec] = [
            (n, tuple(int(d) for d in outputs[n]["shape"])) for n in order
        ]
        if sorted(self._runners["set_weights"].get_input_details()) != sorted(order):
            raise ModelError(f"{name}: set_weights and get_weights name different tensors")
        x_shape = _signature_shape(self._runners["infer"].get_input_details(), "x")
        logits = _signature_shape(self._runners["infer"].get_output_details(), "logits")
        if len(x_shape) != 2 or len(logits) != 2 or min(x_shape[1], logits[1]) < 1:
            raise ModelError(f"{name}: infer must map (n, features) -> (n, classes)")
        self.n_features, self.n_classes = int(x_shape[1]), int(logits[1])
        self.set_weights(init_weights(self._layout, seed))

    # -- the Model interface --

    def get_weights(self) -> Params:
        out = self._run("get_weights")
        return {n: np.array(out[n], dtype=np.float32, copy=True) for n, _ in self._layout}

    def set_weights(self, params: Mapping[str, np.ndarray]) -> None:
        checked = check_weights(params, self._layout)
        self._run("set_weights", **checked)

    def _logits(self, xs: np.ndarray) -> np.ndarray:
        return np.asarray(self._run("infer", x=xs)["logits"], dtype=np.float32)

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step in the interpreter on one (already checked) batch; its mean loss."""
        out = self._run(
            "train",
            x=np.ascontiguousarray(x, dtype=np.float32),
            y=np.ascontiguousarray(y, dtype=np.int32),
            lr=np.float32(lr),
        )
        return float(out["loss"])

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        should_stop: StopCheck | None = None,
    ) -> dict[str, float]:
        """``SGDClassifier.train``; a non-finite loss (the file has no guard) is an error."""
        fit = super().train(
            x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, should_stop=should_stop
        )
        if not np.isfinite(fit["loss"]):
            raise ModelError(f"{self.name}: training diverged (loss {fit['loss']})")
        return fit

    def describe(self) -> dict[str, Any]:
        """The file's name and content hash: the task's model hash pins the exact file."""
        return {
            "framework": "tflite",
            "name": self.name,
            "sha256": self.sha256,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
        }

    @property
    def num_parameters(self) -> int:
        return int(sum(np.prod(shape) for _, shape in self._layout))

    def _run(self, signature: str, **inputs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._runners[signature](**inputs)
        except Exception as exc:  # a runtime error inside the interpreter
            raise ModelError(f"{self.name}: {signature} failed: {exc}") from exc
        return result

    def __repr__(self) -> str:
        return f"TFLiteModel(name={self.name!r}, sha256={self.sha256[:12]}, runtime={self.runtime})"


def _signature_shape(details: Mapping[str, Any], key: str) -> list[int]:
    if key not in details:
        raise ModelError(f"signature lacks tensor {key!r} (has {sorted(details)})")
    detail = details[key]
    sig = detail.get("shape_signature")
    shape = sig if sig is not None and len(sig) else detail["shape"]
    return [int(d) for d in shape]
