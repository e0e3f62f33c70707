"""Small builders shared by the tests (messages over hand-made weights; no broker)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from fedge.codecs import Pipeline, encode_params
from fedge.params import Params, content_hash, spec_of
from fedge.wire import ModelRef, Update, encode, model_ref

SPEC = {"framework": "numpy", "arch": "logreg", "n_features": 4, "n_classes": 3, "hidden": []}


def weights(seed: int = 0) -> Params:
    rng = np.random.default_rng(seed)
    return {
        "dense0.w": rng.normal(size=(4, 3)).astype(np.float32),
        "dense0.b": rng.normal(size=3).astype(np.float32),
    }


LAYOUT = spec_of(weights())
MODEL = model_ref("logreg", SPEC, LAYOUT)


def delta(seed: int, scale: float = 0.1) -> Params:
    rng = np.random.default_rng(1000 + seed)
    return {n: (scale * rng.normal(size=s)).astype(np.float32) for n, s in LAYOUT}


def update_payload(
    client: str,
    round_number: int,
    base: Params | bytes,
    d: Params,
    *,
    codec: str = "float32",
    num_examples: int = 10,
    federation: str = "fed",
    seed: int = 0,
    ref: ModelRef = MODEL,  # the model reference (``model=`` overrides the wire field)
    **overrides: object,
) -> bytes:
    tensors, _ = encode_params(d, Pipeline(codec), np.random.default_rng(seed))
    update = Update(
        federation,
        round_number,
        client,
        ref,
        base if isinstance(base, bytes) else content_hash(base),  # the global, or its hash
        num_examples,
        tensors,
        {"loss": 0.5},
    )
    wire = update.to_wire()
    wire.update(overrides)
    from fedge.wire import pack

    return pack(wire) if overrides else encode(update)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until ``predicate`` holds; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def run_fleet(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``fedge-fleet ARGS`` as a user runs it, in a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *args], capture_output=True, text=True, timeout=timeout
    )
