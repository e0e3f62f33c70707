"""``fedge-model build`` rebuilds the shipped files and refuses Flex; needs TensorFlow.

Skipped where TensorFlow is not installed (CI installs no TensorFlow); run it in a venv with
the ``build`` extra: ``pip install -e '.[build,dev,tflite]' && pytest tests/test_modelbuild.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge.errors import ModelError
from fedge.models import zoo

tf = pytest.importorskip("tensorflow")

from fedge.modelbuild.cli import main  # noqa: E402
from fedge.modelbuild.convert import convert, initial_weights  # noqa: E402
from fedge.modelbuild.spec import load_specs, parse_model  # noqa: E402

SPECS = Path(zoo.__file__).parent / "specs.json"


def test_rebuilding_the_zoo_gives_the_shipped_layouts_and_bytes(tmp_path: Path) -> None:
    assert (
        main(
            [
                "build",
                str(SPECS),
                "--out",
                str(tmp_path),
                "--only",
                "conv8",
                "--only",
                "conv8-head",
                "--only",
                "mlp8",
            ]
        )
        == 0
    )
    rebuilt = json.loads((tmp_path / "manifest.json").read_text())["models"]
    for name, entry in rebuilt.items():
        shipped = zoo.entry(name)
        assert entry["weights"] == shipped["weights"]
        assert entry["signatures"] == shipped["signatures"]
        if entry["tensorflow"] == shipped["tensorflow"]:  # the converter is deterministic
            assert (tmp_path / entry["file"]).read_bytes() == zoo.read(name)


@pytest.mark.parametrize(
    ("ops", "flex_op"),
    [({"relu": "tf.nn.relu"}, "ReluGrad"), ({"conv": "tf.nn.conv2d"}, "Conv2DBackpropFilter")],
)
def test_a_model_that_needs_flex_is_refused_naming_the_op(ops: dict, flex_op: str) -> None:
    spec = parse_model(
        {
            "name": "bad",
            "input": [8, 8, 1],
            "n_classes": 10,
            "ops": ops,
            "layers": [{"conv": 4, "kernel": 3}, {"dense": 10}],
        }
    )
    with pytest.raises(ModelError, match=flex_op) as info:
        convert(spec, initial_weights(spec))
    assert info.value.reason == "flex"


def test_spec_file_parses_every_shipped_model() -> None:
    assert [s.name for s in load_specs(SPECS)] == ["mlp8", "conv8", "conv8-head", "mlp28", "conv28"]
