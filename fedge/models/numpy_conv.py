"""A small convolutional classifier in pure numpy: convolution as image patches times a kernel.

This is the numpy twin of the conv nets that ``fedge-model build`` writes as builtins-only
TFLite files: the same layers, the same weight names and shapes, the same patch order, so a
TFLite backend and this one trained from the same weights on the same batches agree to
float32 rounding. Writing convolution as im2col (patches @ kernel matrix) is what keeps the
TFLite gradient on builtin ops (a Conv2D's filter gradient is a Flex op); here it just makes
forward and backward a matrix product each.

Layers: ``conv`` (kernel k, stride s, VALID padding, ReLU after) and ``dense`` (ReLU after all
but the last). Input rows are flattened ``height x width x channels`` images (C order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.errors import ModelError
from fedge.models.base import (
    MAX_PARAMETERS,
    SGDClassifier,
    check_features,
    check_labels,
    check_weights,
    descend,
    is_int,
    softmax_cross_entropy,
    weights_at,
)
from fedge.models.numpy_models import (
    dense_backward,
    dense_forward,
    glorot_uniform,
    he_normal,
    relu_backward,
    relu_forward,
)
from fedge.params import Params

MAX_LAYERS = 8


@dataclass(frozen=True)
class Layer:
    """One layer of a conv net: ``kind`` is "conv" (filters, kernel, stride) or "dense" (units)."""

    kind: str
    units: int  # filters for conv
    kernel: int = 0
    stride: int = 1


@dataclass(frozen=True)
class Shapes:
    """Every layer's weight shapes and output shape, derived once from the architecture."""

    weights: list[tuple[str, tuple[int, ...]]]  # layout order: l0 w, l0 b, l1 w, ...
    outputs: list[tuple[int, ...]]  # per layer, without the batch dimension


def conv_output(size: int, kernel: int, stride: int) -> int:
    """Output length of a VALID convolution along one axis."""
    return (size - kernel) // stride + 1


def weight_name(index: int, layer: Layer, which: str) -> str:
    """``conv0_w``, ``dense1_b``: identifiers, so TFLite signatures can use them as keys."""
    return f"{layer.kind}{index}_{which}"


def plan(image: Sequence[int], layers: Sequence[Layer], n_classes: int) -> Shapes:
    """Weight and output shapes, or ModelError for an architecture that does not fit."""
    if len(image) != 3 or not all(is_int(d) and 1 <= d <= 4096 for d in image):
        raise ModelError(f"image must be [height, width, channels], got {list(image)!r:.60}")
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise ModelError(f"a conv net has 1..{MAX_LAYERS} layers, got {len(layers)}")
    if layers[-1].kind != "dense" or layers[-1].units != n_classes:
        raise ModelError(f"the last layer must be dense with n_classes={n_classes} units")
    shape: tuple[int, ...] = tuple(int(d) for d in image)
    weights: list[tuple[str, tuple[int, ...]]] = []
    outputs: list[tuple[int, ...]] = []
    count = 0
    for i, layer in enumerate(layers):
        if not is_int(layer.units) or not 1 <= layer.units <= 4096:
            raise ModelError(f"layer {i}: units/filters must be 1..4096, got {layer.units!r}")
        if layer.kind == "conv":
            if len(shape) != 3:
                raise ModelError(f"layer {i}: a conv layer cannot follow a dense layer")
            h, w, c = shape
            k, s = layer.kernel, layer.stride
            if not (is_int(k) and is_int(s) and 1 <= k <= min(h, w) and 1 <= s <= k):
                raise ModelError(f"layer {i}: kernel 1..{min(h, w)} and stride 1..kernel needed")
            w_shape: tuple[int, ...] = (k * k * c, layer.units)
            shape = (conv_output(h, k, s), conv_output(w, k, s), layer.units)
        elif layer.kind == "dense":
            w_shape = (int(np.prod(shape)), layer.units)
            shape = (layer.units,)
        else:
            raise ModelError(f"layer {i}: kind must be 'conv' or 'dense', got {layer.kind!r:.20}")
        weights += [(weight_name(i, layer, "w"), w_shape), (weight_name(i, layer, "b"), shape[-1:])]
        count += int(np.prod(w_shape)) + shape[-1]
        outputs.append(shape)
    if count > MAX_PARAMETERS:
        raise ModelError(f"model would have {count} parameters; the limit is {MAX_PARAMETERS}")
    return Shapes(weights, outputs)


# -- convolution as patches, forward beside backward -------------------------------------------


def im2col(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """(n, h, w, c) -> (n, ho, wo, k*k*c), patch entries ordered (row offset, col offset, c)."""
    n, h, w, c = x.shape
    ho, wo = conv_output(h, kernel, stride), conv_output(w, kernel, stride)
    out = np.empty((n, ho, wo, kernel * kernel * c), dtype=x.dtype)
    for di in range(kernel):
        for dj in range(kernel):
            block = (di * kernel + dj) * c
            out[..., block : block + c] = x[
                :,
                di : di + stride * (ho - 1) + 1 : stride,
                dj : dj + stride * (wo - 1) + 1 : stride,
            ]
    return out


def col2im(dcols: np.ndarray, shape: tuple[int, ...], kernel: int, stride: int) -> np.ndarray:
    """The adjoint of ``im2col``: patch gradients summed back onto the image."""
    n, h, w, c = shape
    _, ho, wo, _ = dcols.shape
    dx = np.zeros(shape, dtype=dcols.dtype)
    for di in range(kernel):
        for dj in range(kernel):
            block = (di * kernel + dj) * c
            dx[
                :,
                di : di + stride * (ho - 1) + 1 : stride,
                dj : dj + stride * (wo - 1) + 1 : stride,
            ] += dcols[..., block : block + c]
    return dx


# -- the network ---------------------------------------------------------------------------


class ConvNet(SGDClassifier):
    """Conv layers (ReLU) then dense layers (ReLU between), softmax cross-entropy on top."""

    def __init__(
        self,
        image: Sequence[int],
        layers: Sequence[Layer],
        n_classes: int,
        *,
        seed: int = 0,
        name: str = "conv",
    ) -> None:
        self.image = tuple(int(d) for d in image)
        self.layers = list(layers)
        self.shapes = plan(self.image, self.layers, n_classes)
        if not is_int(seed) or seed < 0:
            raise ModelError(f"seed must be a non-negative integer, got {seed!r}")
        self.n_features = int(np.prod(self.image))
        self.n_classes = int(n_classes)
        self.name = name
        self._layout = self.shapes.weights
        self._params = init_weights(self._layout, seed)

    def _forward(
        self, params: Mapping[str, np.ndarray], x: np.ndarray
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(each layer's input as multiplied: patches or flat rows, each layer's output)."""
        inputs: list[np.ndarray] = []
        outputs: list[np.ndarray] = []
        h = x.reshape((x.shape[0], *self.image))
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            w, b = params[weight_name(i, layer, "w")], params[weight_name(i, layer, "b")]
            cols = im2col(h, layer.kernel, layer.stride) if layer.kind == "conv" else None
            rows = cols if cols is not None else h.reshape(h.shape[0], -1)
            inputs.append(rows)
            z = dense_forward(rows, w, b)
            h = z if i == last else relu_forward(z)
            outputs.append(h)
        return inputs, outputs

    def _backward(
        self,
        params: Mapping[str, np.ndarray],
        inputs: list[np.ndarray],
        outputs: list[np.ndarray],
        dlogits: np.ndarray,
    ) -> Params:
        grads: Params = {}
        dout = dlogits  # gradient at layer i's pre-activation, shaped like its output
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            wn, bn = weight_name(i, layer, "w"), weight_name(i, layer, "b")
            rows = inputs[i]
            dx, grads[wn], grads[bn] = dense_backward(
                dout.reshape(-1, dout.shape[-1]), rows.reshape(-1, rows.shape[-1]), params[wn]
            )
            if i == 0:
                break
            below = outputs[i - 1]
            if layer.kind == "conv":
                dx = col2im(dx.reshape(rows.shape), below.shape, layer.kernel, layer.stride)
            dout = relu_backward(dx.reshape(below.shape), below)
        return {name: grads[name] for name, _ in self._layout}

    def _data_loss_and_gradients(
        self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[float, Params]:
        inputs, outputs = self._forward(params, x)
        loss, dlogits = softmax_cross_entropy(outputs[-1], y)
        return loss, self._backward(params, inputs, outputs, dlogits)

    def loss_and_gradients(
        self, x: np.ndarray, y: np.ndarray, *, params: Mapping[str, np.ndarray] | None = None
    ) -> tuple[float, Params]:
        """Cross-entropy and its gradient (float64 when ``params`` are float64: gradient checks)."""
        at, dtype = weights_at(params, self._params, self._layout)
        xs = check_features(x, self.n_features, dtype)
        ys = check_labels(y, xs.shape[0], self.n_classes)
        return self._data_loss_and_gradients(at, xs, ys)

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One plain SGD step on one batch; the batch's mean cross-entropy before the step."""
        loss, grads = self._data_loss_and_gradients(self._params, x, y)
        descend(self._params, grads, lr)
        return loss

    def get_weights(self) -> Params:
        return {name: array.copy() for name, array in self._params.items()}

    def set_weights(self, params: Mapping[str, np.ndarray]) -> None:
        self._params = check_weights(params, self._layout)

    def _logits(self, xs: np.ndarray) -> np.ndarray:
        return self._forward(self._params, xs)[1][-1]

    def describe(self) -> dict[str, Any]:
        return {
            "framework": "numpy",
            "arch": "conv",
            "image": list(self.image),
            "layers": [[la.kind, la.units, la.kernel, la.stride] for la in self.layers],
            "n_features": self.n_features,
            "n_classes": self.n_classes,
        }

    @property
    def num_parameters(self) -> int:
        return int(sum(a.size for a in self._params.values()))


def init_weights(layout: Sequence[tuple[str, tuple[int, ...]]], seed: int) -> Params:
    """He-normal kernels under ReLU, Glorot-uniform for the output layer, zero biases.

    Drawn in layout order from ``default_rng(seed)``; the TFLite backend uses the same function,
    so both backends start from the same weights for the same seed.
    """
    rng = np.random.default_rng(int(seed))
    kernels = [name for name, shape in layout if name.endswith("_w")]
    out: Params = {}
    for name, shape in layout:
        if name.endswith("_w"):
            init = glorot_uniform if name == kernels[-1] else he_normal
            out[name] = init(rng, shape[0], int(np.prod(shape[1:])))
        else:
            out[name] = np.zeros(shape, dtype=np.float32)
    return out


def parse_layers(raw: object) -> list[Layer]:
    """Layers from their compact form ``[[kind, units, kernel, stride], ...]`` (ModelError)."""
    if not isinstance(raw, (list, tuple)) or not 1 <= len(raw) <= MAX_LAYERS:
        raise ModelError(f"layers must be a list of 1..{MAX_LAYERS} entries")
    out = []
    for item in raw:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 4
            or not isinstance(item[0], str)
            or not all(is_int(v) for v in item[1:])
        ):
            raise ModelError(f"bad layer {item!r:.60}: want [kind, units, kernel, stride]")
        out.append(Layer(item[0], int(item[1]), int(item[2]), int(item[3])))
    return out


# The numpy twins of the shipped TFLite conv nets (fedge/models/zoo/specs.json), for 10 classes.
NUMPY_CONVS: dict[str, tuple[tuple[int, int, int], tuple[Layer, ...]]] = {
    "conv8": ((8, 8, 1), (Layer("conv", 16, 3, 1), Layer("dense", 10))),
    "conv28": ((28, 28, 1), (Layer("conv", 8, 3, 2), Layer("conv", 16, 3, 2), Layer("dense", 10))),
}
