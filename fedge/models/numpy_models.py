"""Pure-numpy classifiers: softmax regression and a small ReLU MLP, with hand-written backprop.

Everything a device needs fits on a few screens and depends on numpy alone. Each layer is a
forward function beside its backward function; a network is a stack of dense layers with ReLU
between them and a softmax cross-entropy on top. Arithmetic is float32 (what travels on the
wire); only the loss is summed in float64. The layer functions follow the dtype of their
inputs, so the tests can run the same code in float64 for a finite-difference gradient check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedge.errors import ModelError
from fedge.models.base import (
    SGDClassifier,
    check_architecture,
    check_features,
    check_labels,
    check_weights,
    descend,
    is_int,
    is_real,
    softmax_cross_entropy,
    weights_at,
)
from fedge.params import Params

# -- layers: each forward beside its backward ------------------------------------------------


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x @ w + b; backward needs only x and w."""
    return x @ w + b


def dense_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dw, db) of x @ w + b, given dout = dloss/dout."""
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0)


def relu_backward(dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Gradient through relu, given its output (positive exactly where its input was)."""
    return dout * (out > 0)


# -- initialisation ---------------------------------------------------------------------------


def he_normal(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """He et al. 2015: variance 2/fan_in keeps ReLU activations at a steady scale."""
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot & Bengio 2010: small, symmetric weights for the linear output layer."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


# -- the network ------------------------------------------------------------------------------


class _DenseStack(SGDClassifier):
    """Dense layers with ReLU between them; the shared body of both public models."""

    arch = ""  # "logreg" or "mlp"; with the hidden sizes it makes the canonical name

    def __init__(
        self, n_features: int, n_classes: int, hidden: Sequence[int], seed: int, l2: float
    ) -> None:
        n_in, n_out, sizes = check_architecture(n_features, n_classes, hidden)
        if not is_int(seed) or seed < 0:
            raise ModelError(f"seed must be a non-negative integer, got {seed!r}")
        if not is_real(l2) or not 0.0 <= float(l2) < float("inf"):
            raise ModelError(f"l2 must be a finite number >= 0, got {l2!r}")
        self.n_features, self.n_classes, self.hidden = n_in, n_out, sizes
        self.l2 = float(l2)
        self.name = self.arch + (":" + ",".join(str(h) for h in sizes) if sizes else "")
        widths = (n_in, *sizes, n_out)
        self._depth = len(widths) - 1
        rng = np.random.default_rng(int(seed))
        self._params: Params = {}
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            last = i == self._depth - 1
            init = glorot_uniform if last else he_normal
            self._params[f"dense{i}.w"] = init(rng, fan_in, fan_out)
            self._params[f"dense{i}.b"] = np.zeros(fan_out, dtype=np.float32)
        self._layout = [(name, a.shape) for name, a in self._params.items()]

    # -- forward and backward over the whole stack --

    def _forward(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> list[np.ndarray]:
        """Each dense layer's input, then the logits (the last entry)."""
        activations = [x]
        for i in range(self._depth):
            z = dense_forward(activations[-1], params[f"dense{i}.w"], params[f"dense{i}.b"])
            activations.append(z if i == self._depth - 1 else relu_forward(z))
        return activations

    def _backward(
        self, params: Mapping[str, np.ndarray], activations: list[np.ndarray], dlogits: np.ndarray
    ) -> Params:
        grads: Params = {}
        dout = dlogits
        for i in reversed(range(self._depth)):
            w = params[f"dense{i}.w"]
            dx, grads[f"dense{i}.w"], grads[f"dense{i}.b"] = dense_backward(dout, activations[i], w)
            if self.l2:
                grads[f"dense{i}.w"] += w.dtype.type(self.l2) * w
            if i > 0:
                dout = relu_backward(dx, activations[i])
        return {name: grads[name] for name, _ in self._layout}

    def _penalty(self, params: Mapping[str, np.ndarray]) -> float:
        """0.5 * l2 * |w|^2 over the weight matrices (biases are not decayed)."""
        if not self.l2:
            return 0.0
        total = sum(
            float(np.sum(np.square(params[f"dense{i}.w"], dtype=np.float64)))
            for i in range(self._depth)
        )
        return 0.5 * self.l2 * total

    def _data_loss_and_gradients(
        self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
    ) -> tuple[float, Params]:
        """Cross-entropy (without the penalty) and the gradients of the full objective."""
        activations = self._forward(params, x)
        loss, dlogits = softmax_cross_entropy(activations[-1], y)
        return loss, self._backward(params, activations, dlogits)

    # -- public surface --

    def loss_and_gradients(
        self, x: np.ndarray, y: np.ndarray, *, params: Mapping[str, np.ndarray] | None = None
    ) -> tuple[float, Params]:
        """Objective (cross-entropy + L2 penalty) and its gradient, in layout order.

        ``params`` evaluates at other weights of the same layout, in their own float dtype
        (float64 for a gradient check); by default the model's float32 weights are used.
        """
        at, dtype = weights_at(params, self._params, self._layout)
        xs = check_features(x, self.n_features, dtype)
        ys = check_labels(y, xs.shape[0], self.n_classes)
        loss, grads = self._data_loss_and_gradients(at, xs, ys)
        return loss + self._penalty(at), grads

    def get_weights(self) -> Params:
        return {name: array.copy() for name, array in self._params.items()}

    def set_weights(self, params: Mapping[str, np.ndarray]) -> None:
        self._params = check_weights(params, self._layout)

    def _logits(self, xs: np.ndarray) -> np.ndarray:
        return self._forward(self._params, xs)[-1]

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One plain SGD step on one batch; the batch's mean cross-entropy before the step."""
        loss, grads = self._data_loss_and_gradients(self._params, x, y)
        descend(self._params, grads, lr)
        return loss

    def describe(self) -> dict[str, Any]:
        return {
            "framework": "numpy",
            "arch": self.arch,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "hidden": list(self.hidden),
        }

    @property
    def num_parameters(self) -> int:
        return int(sum(a.size for a in self._params.values()))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, n_features={self.n_features}, "
            f"n_classes={self.n_classes}, l2={self.l2})"
        )


class LogisticRegression(_DenseStack):
    """Multinomial softmax regression: one dense layer, "dense0.w" (n_features, n_classes)."""

    arch = "logreg"

    def __init__(self, n_features: int, n_classes: int, *, seed: int = 0, l2: float = 0.0) -> None:
        super().__init__(n_features, n_classes, (), seed, l2)


class MLP(_DenseStack):
    """One or two hidden ReLU layers (He init) under a linear softmax output (Glorot init)."""

    arch = "mlp"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        hidden: Sequence[int] = (128,),
        seed: int = 0,
        l2: float = 0.0,
    ) -> None:
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ModelError(f"hidden must be a sequence of layer sizes, got {hidden!r:.40}")
        if not 1 <= len(hidden) <= 2:
            raise ModelError(f"an MLP has 1 or 2 hidden layers, got {len(hidden)}")
        super().__init__(n_features, n_classes, hidden, seed, l2)
