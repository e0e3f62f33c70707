"""Train-step time per model, numpy backend vs TFLite backend, side by side.

    python benchmarks/train_step.py                 # table on stdout
    python benchmarks/train_step.py --json out.json --batch-size 32 --steps 200

Each row: one SGD step on one batch (generated data), median over ``--steps`` after warm-up,
for the numpy twin and the shipped TFLite file in the runtime this Python has.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

from fedge.models import MLP, build_model, zoo
from fedge.models.numpy_conv import NUMPY_CONVS, ConvNet
from fedge.models.tflite_model import TFLiteModel

MODELS = ("mlp8", "conv8", "mlp28", "conv28")


def numpy_twin(name: str, n_features: int) -> MLP | ConvNet:
    if name in NUMPY_CONVS:
        image, layers = NUMPY_CONVS[name]
        return ConvNet(image, layers, 10)
    return MLP(n_features, 10, hidden=[64 if name == "mlp8" else 16])


def step_numpy(model: MLP | ConvNet, x: np.ndarray, y: np.ndarray) -> None:
    _, grads = model._data_loss_and_gradients(model._params, x, y)
    for key, grad in grads.items():
        model._params[key] -= np.float32(0.05) * grad


def median_ms(fn: object, steps: int) -> float:
    for _ in range(5):
        fn()  # type: ignore[operator]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    rows = []
    for name in MODELS:
        lite = build_model(f"tflite:{name}", zoo.entry(name)["n_features"], 10)
        assert isinstance(lite, TFLiteModel)
        ref = numpy_twin(name, lite.n_features)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.batch_size, lite.n_features)).astype(np.float32)
        y = rng.integers(0, 10, args.batch_size)
        t_np = median_ms(lambda r=ref, a=x, b=y: step_numpy(r, a, b), args.steps)
        t_lite = median_ms(lambda m=lite, a=x, b=y: m.sgd_step(a, b, 0.05), args.steps)
        rows.append(
            {
                "model": name,
                "params": lite.num_parameters,
                "batch": args.batch_size,
                "numpy_ms": round(t_np, 4),
                "tflite_ms": round(t_lite, 4),
                "tflite_over_numpy": round(t_lite / t_np, 3),
                "runtime": lite.runtime,
            }
        )
    head = ("model", "params", "batch", "numpy ms", "tflite ms", "tflite/numpy")
    print("{:<8} {:>7} {:>5} {:>9} {:>9} {:>12}  runtime".format(*head))
    for r in rows:
        print(
            f"{r['model']:<8} {r['params']:>7} {r['batch']:>5} {r['numpy_ms']:>9.3f} "
            f"{r['tflite_ms']:>9.3f} {r['tflite_over_numpy']:>12.2f}  {r['runtime']}"
        )
    if args.json:
        meta = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "numpy": np.__version__,
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
