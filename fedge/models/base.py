"""The one interface every model backend speaks, and the checks shared by all backends.

The aggregator and the agents only ever see ``Model``: weights go in and out as ``Params``
(ordered names, float32), training and evaluation return plain dicts of numbers, and
``describe()`` is the small spec that travels in a task so a device rebuilds the same
architecture. Weights and specs arrive from the network, so the checks here are strict and
raise only fedge errors.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from fedge.errors import ConfigError, DataError, ModelError, TrainingStopped
from fedge.params import Params

StopCheck = Callable[[], bool]

# Bounds on architectures; a spec from the network that exceeds them is refused before any
# allocation. MAX_PARAMETERS (128 MiB of float32) keeps a hostile spec from exhausting memory.
MAX_FEATURES = 100_000
MAX_CLASSES = 10_000
MAX_HIDDEN = 100_000
MAX_HIDDEN_LAYERS = 2
MAX_PARAMETERS = 1 << 25


@runtime_checkable
class Model(Protocol):
    """A classifier whose weights are named float32 tensors in a fixed order."""

    name: str  # canonical id, e.g. "logreg", "mlp:128", "mlp:128,64"

    def get_weights(self) -> Params:
        """Float32 copies in layout order (the order is part of the wire contract)."""
        ...

    def set_weights(self, params: Mapping[str, np.ndarray]) -> None:
        """Replace all weights; names, shapes and finiteness are checked (ModelError)."""
        ...

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
        """Seeded mini-batch SGD; returns {"loss", "accuracy", "steps"}. ``should_stop`` is
        asked before each step; when it says yes, TrainingStopped is raised."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy and accuracy: {"loss", "accuracy"}."""
        ...

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Unnormalised class scores, shape (n, n_classes)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A msgpack-able spec from which ``model_from_spec`` rebuilds this architecture."""
        ...

    @property
    def num_parameters(self) -> int: ...


def is_int(value: object) -> TypeGuard[int | np.integer]:
    """A real integer (numpy integers too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_range(what: str, value: object, low: int, high: int) -> int:
    if not is_int(value) or not low <= int(value) <= high:
        raise ModelError(f"{what} must be an integer in {low}..{high}, got {value!r:.40}")
    return int(value)


def check_architecture(
    n_features: object, n_classes: object, hidden: Sequence[object]
) -> tuple[int, int, tuple[int, ...]]:
    """Validated (n_features, n_classes, hidden), or ModelError before anything is allocated."""
    n_in = _check_range("n_features", n_features, 1, MAX_FEATURES)
    n_out = _check_range("n_classes", n_classes, 2, MAX_CLASSES)
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ModelError(f"at most {MAX_HIDDEN_LAYERS} hidden layers, got {len(hidden)}")
    sizes = tuple(_check_range("hidden size", h, 1, MAX_HIDDEN) for h in hidden)
    widths = (n_in, *sizes, n_out)
    count = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    if count > MAX_PARAMETERS:
        raise ModelError(f"model would have {count} parameters; the limit is {MAX_PARAMETERS}")
    return n_in, n_out, sizes


def check_weights(
    params: object, layout: Sequence[tuple[str, tuple[int, ...]]], dtype: type = np.float32
) -> Params:
    """Copies of ``params`` as ``dtype``, in layout order, after checking names, shapes, values."""
    if not isinstance(params, Mapping):
        raise ModelError(f"weights must be a mapping of name -> array, got {type(params).__name__}")
    expected = [name for name, _ in layout]
    missing = [n for n in expected if n not in params]
    unexpected = [str(n) for n in params if n not in expected]
    if missing or unexpected:
        raise ModelError(f"weight names differ: missing {missing}, unexpected {unexpected[:8]}")
    out: Params = {}
    for name, shape in layout:
        try:
            array = np.asarray(params[name])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{name}: not an array: {exc}") from exc
        if array.dtype.kind not in "biuf":
            raise ModelError(f"{name}: expected real numbers, got dtype {array.dtype}")
        if array.shape != shape:
            raise ModelError(f"{name}: expected shape {shape}, got {array.shape}")
        with np.errstate(over="ignore"):  # overflow shows up as inf, refused just below
            converted: np.ndarray = np.array(array, dtype=dtype, copy=True)
        if not np.all(np.isfinite(converted)):
            raise ModelError(f"{name}: contains NaN or infinity (as {np.dtype(dtype).name})")
        out[name] = converted
    return out


def check_features(x: object, n_features: int, dtype: type = np.float32) -> np.ndarray:
    """``x`` as a 2-D ``dtype`` array of finite values with ``n_features`` columns."""
    try:
        with np.errstate(over="ignore"):  # overflow shows up as inf, refused below
            array: np.ndarray = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"features are not numeric: {exc}") from exc
    if array.ndim != 2 or array.shape[1] != n_features:
        raise DataError(
            f"features must have shape (n, {n_features}), got {getattr(x, 'shape', array.shape)}"
        )
    if array.shape[0] == 0:
        raise DataError("no examples")
    if not np.all(np.isfinite(array)):
        raise DataError("features contain NaN or infinity")
    return array


def check_labels(y: object, n_examples: int, n_classes: int) -> np.ndarray:
    """``y`` as an int64 vector of ``n_examples`` labels in 0..n_classes-1."""
    array = np.asarray(y)
    if array.size == 0:
        raise DataError("no labels")
    if array.dtype.kind not in "iu":
        raise DataError(f"labels must be integers, got dtype {array.dtype}")
    if array.shape != (n_examples,):
        raise DataError(f"labels must have shape ({n_examples},), got {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= n_classes:
        raise DataError(f"labels must be in 0..{n_classes - 1}, got range {low}..{high}")
    return array.astype(np.int64, copy=False)


def is_real(value: object) -> TypeGuard[numbers.Real]:
    """A real number (numpy floats too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_hyper(epochs: object, batch_size: object, lr: object, seed: object) -> None:
    if not is_int(epochs) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not is_real(lr) or not 0.0 < float(lr) < float("inf"):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def weights_at(
    params: Mapping[str, np.ndarray] | None,
    own: Params,
    layout: Sequence[tuple[str, tuple[int, ...]]],
) -> tuple[Params, type]:
    """(weights, dtype) to evaluate a loss at: the model's own float32 weights, or ``params``
    checked against the layout in their own float width (float64 for a gradient check)."""
    if params is None:
        return own, np.float32
    wide = any(getattr(a, "dtype", None) == np.float64 for a in params.values())
    dtype: type = np.float64 if wide else np.float32
    return check_weights(params, layout, dtype), dtype


def descend(params: Params, grads: Mapping[str, np.ndarray], lr: float) -> None:
    """One plain SGD update in place: w -= lr * grad, in float32."""
    step = np.float32(lr)
    for name, grad in grads.items():
        params[name] -= step * grad


def train_sgd(
    step: Callable[[np.ndarray, np.ndarray, float], float],
    evaluate: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    should_stop: StopCheck | None = None,
) -> dict[str, float]:
    """Mini-batch SGD with ``step(x_batch, y_batch, lr) -> batch mean loss``.

    Every backend trains through here, so they share one batch order
    (``default_rng(seed).permutation(n)`` each epoch): numpy and TFLite models trained from the
    same weights on the same data agree. ``shape`` is (n_features, n_classes). Returns
    {"loss": mean loss over the last epoch's batches, "accuracy" on ``x`` after the last step,
    "steps"}.

    ``should_stop`` is asked before every step: a daemon asked to stop abandons training at
    the next step boundary (TrainingStopped) instead of finishing epochs nobody will use.
    """
    check_hyper(epochs, batch_size, lr, seed)
    xs = check_features(x, shape[0])
    ys = check_labels(y, xs.shape[0], shape[1])
    rng = np.random.default_rng(int(seed))
    n, steps, epoch_loss = xs.shape[0], 0, 0.0
    for _ in range(int(epochs)):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, int(batch_size)):
            if should_stop is not None and should_stop():
                raise TrainingStopped(f"training stopped after {steps} steps")
            batch = order[start : start + int(batch_size)]
            total += step(xs[batch], ys[batch], lr) * batch.size
            steps += 1
        epoch_loss = total / n
    return {"loss": epoch_loss, "accuracy": evaluate(xs, ys)["accuracy"], "steps": steps}


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and dloss/dlogits, via log-sum-exp so large logits cannot overflow."""
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(np.sum(log_probs[rows, y], dtype=np.float64)) / n
    dlogits = np.exp(log_probs)
    dlogits[rows, y] -= 1
    return loss, dlogits / logits.dtype.type(n)


class SGDClassifier:
    """What every backend shares once it gives logits and takes one SGD step: checked
    ``predict_logits`` and ``evaluate``, and ``train`` through ``train_sgd`` (one batch order)."""

    name: str
    n_features: int
    n_classes: int

    def _logits(self, xs: np.ndarray) -> np.ndarray:
        """Class scores for already checked features."""
        raise NotImplementedError

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD step on one checked batch; the batch's mean loss."""
        raise NotImplementedError

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return self._logits(check_features(x, self.n_features))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        xs = check_features(x, self.n_features)
        return self._metrics(xs, check_labels(y, xs.shape[0], self.n_classes))

    def _metrics(self, xs: np.ndarray, ys: np.ndarray) -> dict[str, float]:
        logits = self._logits(xs)
        loss, _ = softmax_cross_entropy(logits, ys)
        return {"loss": loss, "accuracy": float(np.mean(logits.argmax(axis=1) == ys))}

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
        """Mini-batch SGD, reshuffled each epoch from ``seed``: the same seed, the same weights.

        "loss" is the mean loss over the last epoch's batches (as seen while training);
        "accuracy" is measured on ``x`` after the last step.
        """
        shape = (self.n_features, self.n_classes)
        return train_sgd(
            self.sgd_step, self._metrics, x, y, shape,
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, should_stop=should_stop,
        )  # fmt: skip
