"""The trainable TensorFlow module a ``.tflite`` file is converted from (needs TensorFlow).

Every choice here is about staying on TFLite builtin ops so the file trains on plain
tflite-runtime / ai-edge-litert, which ship no Flex (TensorFlow) kernels:

- ReLU is ``tf.maximum(z, 0)``: the gradient of ``tf.nn.relu`` is ``ReluGrad``, a Flex op.
- Convolution is image patches (``tf.slice`` per kernel offset, whose gradient is a ``Pad``)
  times a kernel matrix: the filter gradient of ``tf.nn.conv2d`` is a Flex op.
- Cross-entropy is written out (log-sum-exp, one-hot): no fused loss op.
- Weights are resource variables read and written through the ``get_weights`` /
  ``set_weights`` signatures; no Save/Restore ops.

The layer math mirrors ``fedge.models.numpy_conv`` exactly (patch order, names, shapes), so the
numpy backend is a reference the TFLite file must agree with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf  # type: ignore[import-untyped]

from fedge.models.numpy_conv import Layer, conv_output, weight_name

SIGNATURES = ("train", "infer", "get_weights", "set_weights")


def _relu(z: Any, how: str) -> Any:
    if how == "tf.nn.relu":  # for demonstrating the refusal: its gradient is Flex
        return tf.nn.relu(z)
    return tf.maximum(z, 0.0)


def _offset_blocks(h: Any, kernel: int, stride: int) -> list[Any]:
    """Per kernel offset (row-major), the (n, ho, wo, c) input pixels it sees.

    ``tf.slice`` (gradient: a 4-D ``Pad``) and reshapes only: concatenating the blocks, or a
    6-D reshape for the stride, would need ``ConcatOffset`` or a 6-D ``Pad`` in the gradient,
    which TFLite builtins lack for a variable batch size.
    """
    height, width, channels = (int(d) for d in h.shape[1:])
    ho, wo = conv_output(height, kernel, stride), conv_output(width, kernel, stride)
    need_h, need_w = kernel - 1 + stride * ho, kernel - 1 + stride * wo
    if stride > 1 and (need_h > height or need_w > width):
        h = tf.pad(h, [[0, 0], [0, max(0, need_h - height)], [0, max(0, need_w - width)], [0, 0]])
    blocks = []
    for di in range(kernel):
        for dj in range(kernel):
            if stride == 1:
                blocks.append(tf.slice(h, [0, di, dj, 0], [-1, ho, wo, channels]))
                continue
            block = tf.slice(h, [0, di, dj, 0], [-1, stride * ho, stride * wo, channels])
            rows = tf.reshape(block, [-1, ho, stride, stride * wo * channels])
            rows = tf.slice(rows, [0, 0, 0, 0], [-1, ho, 1, stride * wo * channels])
            cols = tf.reshape(rows, [-1, ho * wo, stride, channels])
            cols = tf.slice(cols, [0, 0, 0, 0], [-1, ho * wo, 1, channels])
            blocks.append(tf.reshape(cols, [-1, ho, wo, channels]))
    return blocks


def _conv(h: Any, w: Any, b: Any, layer: Layer) -> Any:
    """Patches times kernel matrix, as a sum over kernel offsets of block @ kernel rows.

    Equal to ``im2col(h) @ w + b`` with numpy_conv's patch order (offset-major, channel-minor).
    """
    channels = int(h.shape[-1])
    terms = []
    for k, block in enumerate(_offset_blocks(h, layer.kernel, layer.stride)):
        rows = tf.slice(w, [k * channels, 0], [channels, layer.units])
        terms.append(tf.tensordot(block, rows, axes=1))
    return tf.add_n(terms) + b


class TrainableNet(tf.Module):  # type: ignore[misc]
    """Layers from a spec; the first ``frozen`` layers are constants, the rest variables."""

    def __init__(
        self,
        image: tuple[int, int, int],
        layers: list[Layer],
        n_classes: int,
        weights: Mapping[str, np.ndarray],
        *,
        frozen: int = 0,
        ops: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.image, self.layers, self.n_classes = image, layers, n_classes
        self.n_features = int(np.prod(image))
        self.ops = dict(ops or {})
        self.frozen = frozen
        self.constants: dict[str, Any] = {}
        self.variables_by_name: dict[str, Any] = {}
        for i, layer in enumerate(layers):
            for which in ("w", "b"):
                name = weight_name(i, layer, which)
                value = np.asarray(weights[name], dtype=np.float32)
                if i < frozen:
                    self.constants[name] = tf.constant(value)
                else:
                    self.variables_by_name[name] = tf.Variable(value, name=name)
        self.trainable = list(self.variables_by_name.values())
        self.trainable_names = list(self.variables_by_name)

    def _weight(self, name: str) -> Any:
        return self.variables_by_name.get(name, self.constants.get(name))

    def logits(self, x: Any) -> Any:
        h = tf.reshape(x, [-1, *self.image])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            w, b = (
                self._weight(weight_name(i, layer, "w")),
                self._weight(weight_name(i, layer, "b")),
            )
            if layer.kind == "conv":
                if self.ops.get("conv") == "tf.nn.conv2d":  # demonstrates the refusal
                    kernel = tf.reshape(w, [layer.kernel, layer.kernel, -1, layer.units])
                    z = tf.nn.conv2d(h, kernel, layer.stride, "VALID") + b
                else:
                    z = _conv(h, w, b, layer)
            else:
                z = tf.matmul(tf.reshape(h, [-1, int(w.shape[0])]), w) + b
            h = z if i == last else _relu(z, self.ops.get("relu", "maximum"))
        return h

    def loss(self, logits: Any, y: Any) -> Any:
        """Mean softmax cross-entropy.

        ``log_softmax`` then the picked entries summed as one (1, n*k) @ (n*k, 1) product:
        an elementwise op between two tensors of unknown batch size would need
        ``BroadcastGradientArgs`` in the gradient, which is not a TFLite builtin.
        """
        logp = tf.nn.log_softmax(logits)
        onehot = tf.reshape(tf.one_hot(y, self.n_classes), [1, -1])
        total = tf.matmul(onehot, tf.reshape(logp, [-1, 1]))
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return -tf.reshape(total, []) / count

    def signatures(self) -> dict[str, Any]:
        """The four concrete functions, keyed by signature name."""
        x_spec = tf.TensorSpec([None, self.n_features], tf.float32, name="x")
        y_spec = tf.TensorSpec([None], tf.int32, name="y")
        lr_spec = tf.TensorSpec([], tf.float32, name="lr")

        @tf.function(input_signature=[x_spec, y_spec, lr_spec])
        def train(x: Any, y: Any, lr: Any) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                loss = self.loss(self.logits(x), y)
            grads = tape.gradient(loss, self.trainable)
            for var, grad in zip(self.trainable, grads, strict=True):
                var.assign_sub(lr * grad)
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(x: Any) -> dict[str, Any]:
            return {"logits": self.logits(x)}

        @tf.function(input_signature=[])
        def get_weights() -> dict[str, Any]:
            return {name: var.read_value() for name, var in self.variables_by_name.items()}

        specs = [
            tf.TensorSpec(var.shape, tf.float32, name=name)
            for name, var in self.variables_by_name.items()
        ]

        @tf.function(input_signature=specs)
        def set_weights(*tensors: Any) -> dict[str, Any]:
            for var, value in zip(self.trainable, tensors, strict=True):
                var.assign(value)
            return {"ok": tf.constant(1, tf.int32)}

        return {
            "train": train.get_concrete_function(),
            "infer": infer.get_concrete_function(),
            "get_weights": get_weights.get_concrete_function(),
            "set_weights": set_weights.get_concrete_function(),
        }
