"""The TFLite backend against its numpy twins, the shipped files, and bad input.

Needs a TFLite runtime (the ``tflite`` extra: ai-edge-litert; or tflite-runtime via
``scripts/test-tflite-legacy.sh``); skipped without one. No TensorFlow needed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from fedge.errors import ModelError, WireError
from fedge.models import MLP, build_model, model_from_spec, zoo
from fedge.models.numpy_conv import NUMPY_CONVS, ConvNet
from fedge.models.tflite_model import TFLiteModel, interpreter_class
from fedge.params import spec_of
from fedge.wire import Hyper, Task, encode, model_ref, unpack
from tests.helpers import run_fleet

try:
    RUNTIME = interpreter_class()[1]
except ModelError:
    RUNTIME = ""
needs_runtime = pytest.mark.skipif(not RUNTIME, reason="no TFLite runtime installed")


def digits_like(n: int, n_features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated, learnable data: class means plus noise (no download, no sklearn)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(10, n_features)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return (means[y] + rng.normal(size=(n, n_features)).astype(np.float32)), y


def twin(name: str, seed: int) -> ConvNet | MLP:
    """The numpy model with the same architecture as shipped ``tflite:name``."""
    if name in NUMPY_CONVS:
        image, layers = NUMPY_CONVS[name]
        return ConvNet(image, layers, 10, seed=seed)
    hidden = zoo.entry(name)["weights"][0][1][1]
    return MLP(zoo.entry(name)["n_features"], 10, hidden=[hidden], seed=seed)


# -- the shipped files (no runtime needed) -----------------------------------------------------


def test_manifest_lists_each_shipped_file_with_its_hash_and_four_signatures() -> None:
    assert {"mlp8", "conv8", "conv8-head", "mlp28", "conv28"} <= set(zoo.names())
    for name in zoo.names():
        entry, content = zoo.entry(name), zoo.read(name)
        assert hashlib.sha256(content).hexdigest() == entry["sha256"]
        assert len(content) == entry["bytes"] < 256 * 1024
        assert set(entry["signatures"]) == {"train", "infer", "get_weights", "set_weights"}
        assert entry["signatures"]["train"]["inputs"] == {
            "lr": [],
            "x": [-1, entry["n_features"]],
            "y": [-1],
        }
        assert not [op for op in entry["ops"] if op.startswith("custom")]  # no Flex


def test_numpy_code_paths_import_no_tflite_runtime() -> None:
    code = (
        "import sys; from fedge.models import build_model; import agent.core, aggregator.daemon; "
        "build_model('mlp', 4, 3); build_model('conv8', 64, 10); "
        "print(sorted(m for m in sys.modules if 'litert' in m or 'tflite' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_runtime_is_a_model_error_naming_the_extra() -> None:
    code = (
        "import os; os.environ['FEDGE_TFLITE_RUNTIME'] = 'tflite-runtime'\n"
        "import sys, types; sys.modules['tflite_runtime'] = None\n"
        "from fedge.errors import ModelError\nfrom fedge.models import build_model\n"
        "try:\n    build_model('tflite:conv8', 64, 10)\n"
        "except ModelError as e:\n    print(e.reason, str(e))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("runtime") and "fedge[tflite]" in out.stdout


# -- parity with numpy ------------------------------------------------------------------------


@needs_runtime
@pytest.mark.parametrize("name", ["mlp8", "conv8", "conv28"])
def test_fifty_sgd_steps_match_the_numpy_twin_to_1e_4(name: str) -> None:
    lite = build_model(f"tflite:{name}", zoo.entry(name)["n_features"], 10, seed=3)
    ref = twin(name, seed=3)
    start = lite.get_weights()
    ref.set_weights(
        dict(zip([n for n, _ in spec_of(ref.get_weights())], start.values(), strict=True))
    )
    x, y = digits_like(200, lite.n_features)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(50):
        batch = rng.choice(200, size=(16, 7, 32)[step % 3], replace=False)  # varying batch size
        loss_lite = lite.sgd_step(x[batch], y[batch], 0.05)
        ref_loss, grads = ref._data_loss_and_gradients(ref._params, x[batch], y[batch])
        for key, grad in grads.items():
            ref._params[key] -= np.float32(0.05) * grad
        losses.append((loss_lite, ref_loss))
    diffs = [abs(a - b) for a, b in losses]
    assert max(diffs) < 1e-4, diffs
    assert losses[-1][0] < losses[0][0]  # it learned
    for got, want in zip(lite.get_weights().values(), ref.get_weights().values(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


@needs_runtime
def test_train_uses_the_numpy_batch_order_so_same_seed_same_result() -> None:
    lite = build_model("tflite:conv8", 64, 10, seed=1)
    ref = build_model("conv8", 64, 10, seed=1)
    for a, b in zip(lite.get_weights().values(), ref.get_weights().values(), strict=True):
        np.testing.assert_array_equal(a, b)  # same initial weights from the same seed
    x, y = digits_like(150, 64, seed=2)
    fit_lite = lite.train(x, y, epochs=2, batch_size=16, lr=0.05, seed=9)
    fit_ref = ref.train(x, y, epochs=2, batch_size=16, lr=0.05, seed=9)
    assert fit_lite["steps"] == fit_ref["steps"] == 20
    assert abs(fit_lite["loss"] - fit_ref["loss"]) < 1e-4
    assert fit_lite["accuracy"] == fit_ref["accuracy"]
    np.testing.assert_allclose(lite.predict_logits(x), ref.predict_logits(x), atol=1e-4)


@needs_runtime
def test_head_model_federates_only_the_head_and_keeps_the_backbone() -> None:
    head = build_model("tflite:conv8-head", 64, 10, seed=0)
    assert [n for n, _ in spec_of(head.get_weights())] == ["dense1_w", "dense1_b"]
    x, y = digits_like(100, 64)
    zero = {n: np.zeros_like(a) for n, a in head.get_weights().items()}
    head.set_weights(zero)
    assert np.allclose(head.predict_logits(x), 0)  # every logit comes from the head
    head.set_weights(build_model("tflite:conv8-head", 64, 10, seed=0).get_weights())
    before = head.evaluate(x, y)["loss"]
    head.train(x, y, epochs=3, batch_size=16, lr=0.05, seed=0)
    assert head.evaluate(x, y)["loss"] < before


# -- bad input ----------------------------------------------------------------------------------


@needs_runtime
def test_bad_files_weights_and_specs_are_model_errors() -> None:
    with pytest.raises(ModelError, match="TFL3"):
        TFLiteModel(b"\x00" * 1000, name="junk")
    content = zoo.read("conv8")
    if RUNTIME != "tflite-runtime":  # 2.14 does not verify the buffer: it may crash instead
        with pytest.raises(ModelError):
            TFLiteModel(content[: len(content) // 2], name="truncated")
    model = build_model("tflite:conv8", 64, 10)
    weights = model.get_weights()
    with pytest.raises(ModelError, match="NaN"):
        model.set_weights({**weights, "conv0_b": np.full(16, np.nan, np.float32)})
    with pytest.raises(ModelError, match="shape"):
        model.set_weights({**weights, "conv0_b": np.zeros(15, np.float32)})
    spec = model.describe()
    with pytest.raises(ModelError) as info:
        model_from_spec({**spec, "sha256": "0" * 64})
    assert info.value.reason == "model_file"
    for bad in ({**spec, "sha256": 7}, {**spec, "name": "conv8"}, {**spec, "extra": 1}):
        with pytest.raises(ModelError):
            model_from_spec(bad)
    with pytest.raises(ModelError, match="shipped model file"):
        model_from_spec(spec, model_file=b"not it")


def tflite_task(spec: dict, layout: list, model_file: bytes = b"") -> bytes:
    ref = model_ref(spec["name"], spec, layout)
    return encode(
        Task("fed", "agg", ref, spec, layout, Hyper(1, 8, 0.1), "int8", model_file=model_file)
    )


def test_the_task_may_carry_the_model_file_checked_against_its_hash() -> None:
    content = zoo.read("mlp8")
    spec = {
        "framework": "tflite",
        "name": "tflite:new",
        "n_features": 64,
        "n_classes": 10,
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    layout = [
        ("dense0_w", (64, 64)),
        ("dense0_b", (64,)),
        ("dense1_w", (64, 10)),
        ("dense1_b", (10,)),
    ]
    task = Task.from_wire(unpack(tflite_task(spec, layout, content)))
    assert task.model_file == content
    with pytest.raises(WireError, match="does not match"):
        Task.from_wire(unpack(tflite_task({**spec, "sha256": "1" * 64}, layout, content)))


@needs_runtime
def test_an_agent_without_the_tasks_file_reports_an_error_and_does_not_train() -> None:
    from agent.core import AgentCore

    x, y = digits_like(40, 64)
    model = build_model("tflite:mlp8", 64, 10)
    spec, layout = model.describe(), spec_of(model.get_weights())
    agent = AgentCore("dev-1", "fed", x, y)
    agent.on_task(tflite_task({**spec, "sha256": "ab" * 32}, layout))
    assert agent.model is None and "local model file" in agent.problem
    # the same fleet moves to a model this device never had: the task ships the file
    renamed = {**spec, "name": "tflite:brand-new"}
    agent.on_task(tflite_task(renamed, layout, model.content))
    assert agent.problem == "" and agent.model is not None
    assert agent.model.describe() == renamed


@pytest.mark.integration
@needs_runtime
def test_fleet_of_tflite_conv8_agents_reaches_093_on_digits() -> None:
    done = run_fleet(
        *("--model", "tflite:conv8", "--clients", "20", "--rounds", "20"),
        *("--dataset", "digits", "--partition", "dirichlet:0.5", "--seed", "0"),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = float(done.stdout.split("final accuracy ")[1].split()[0])
    assert final >= 0.93, done.stdout[-1500:]
