"""Spec -> trainable ``.tflite`` bytes + manifest entry, on TFLite builtin ops only.

Needs TensorFlow (the ``build`` extra). Two guards keep Flex out: the converter runs with
``TFLITE_BUILTINS`` only, and an op it cannot lower is reported by name (ModelError); then the
file's operator table is read back and any custom op (Flex ops are custom ops) is refused by
name too. The built file is loaded once more to record its signatures in the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from typing import Any

import numpy as np

from fedge.errors import ConfigError, ModelError
from fedge.modelbuild.spec import ModelSpec
from fedge.models.numpy_conv import ConvNet, weight_name
from fedge.models.tflite_model import SIGNATURES, weight_order
from fedge.params import Params

log = logging.getLogger(__name__)

_TF_OP = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_TF_OP_LIST = re.compile(r"^\s*tf\.([A-Za-z0-9_]+)\(", re.MULTILINE)


def initial_weights(spec: ModelSpec) -> Params:
    """Full-network weights from the spec's seed, pretrained with the numpy twin if asked."""
    net = ConvNet(spec.image, spec.layers, spec.n_classes, seed=spec.seed, name=spec.name)
    if spec.pretrain is not None:
        from fedge.data import load_dataset

        pre = spec.pretrain
        data = load_dataset(pre.dataset, seed=pre.seed)
        if data.n_features != net.n_features or data.n_classes != net.n_classes:
            raise ConfigError(
                f"{spec.name}: pretrain dataset {pre.dataset} has {data.n_features} features and "
                f"{data.n_classes} classes; the model wants {net.n_features} and {net.n_classes}"
            )
        fit = net.train(
            data.x_train,
            data.y_train,
            epochs=pre.epochs,
            batch_size=pre.batch_size,
            lr=pre.lr,
            seed=pre.seed,
        )
        acc = net.evaluate(data.x_test, data.y_test)["accuracy"]
        log.info(
            "%s: pretrained on %s: train loss %.4f, test accuracy %.4f",
            spec.name,
            pre.dataset,
            fit["loss"],
            acc,
        )
    return net.get_weights()


def flex_ops_in_error(message: str) -> list[str]:
    """The TensorFlow op names a builtins-only conversion failed on."""
    return sorted(set(_TF_OP.findall(message)) | set(_TF_OP_LIST.findall(message)))


def operators(content: bytes) -> list[str]:
    """Every operator of every subgraph: builtin names, or ``custom:<code>`` (Flex included)."""
    from tensorflow.lite.python import schema_py_generated as schema  # type: ignore

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for code in model.operatorCodes or []:
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if code.customCode:
            out.append("custom:" + code.customCode.decode())
        else:
            out.append(names.get(builtin, f"builtin#{builtin}"))
    return sorted(set(out))


def convert(spec: ModelSpec, weights: Params) -> bytes:
    """The trainable builtins-only file, or ModelError naming each op that would need Flex."""
    import tensorflow as tf  # type: ignore[import-untyped]

    from fedge.modelbuild.graph import TrainableNet

    net = TrainableNet(
        spec.image, spec.layers, spec.n_classes, weights, frozen=spec.frozen, ops=spec.ops
    )
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(net, tmp, signatures=net.signatures())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            content: bytes = converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError types
            ops = flex_ops_in_error(str(exc))
            if not ops:
                raise ModelError(f"{spec.name}: conversion failed: {str(exc)[:500]}") from exc
            raise ModelError(
                f"{spec.name}: needs ops that are not TFLite builtins (Flex): {', '.join(ops)}",
                reason="flex",
            ) from exc
    custom = [op for op in operators(content) if op.startswith("custom:")]
    if custom:
        raise ModelError(
            f"{spec.name}: converted model uses non-builtin ops: {', '.join(custom)}",
            reason="flex",
        )
    return content


def manifest_entry(spec: ModelSpec, content: bytes, file_name: str) -> dict[str, Any]:
    """What the manifest records of one built file (read back from the file itself)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=content)
    signatures: dict[str, Any] = {}
    for key in SIGNATURES:
        runner = interpreter.get_signature_runner(key)
        signatures[key] = {
            "inputs": {n: _shape(d) for n, d in sorted(runner.get_input_details().items())},
            "outputs": {n: _shape(d) for n, d in sorted(runner.get_output_details().items())},
        }
    weights = signatures["get_weights"]["outputs"]
    order = weight_order(list(weights))
    trainable_layers = list(range(spec.frozen, len(spec.layers)))
    expected = [weight_name(i, spec.layers[i], w) for i in trainable_layers for w in ("w", "b")]
    if order != expected:
        raise ModelError(f"{spec.name}: weight signatures {order} differ from {expected}")
    return {
        "file": file_name,
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
        "n_features": int(np.prod(spec.image)),
        "n_classes": spec.n_classes,
        "input": list(spec.image),
        "frozen_layers": spec.frozen,
        "signatures": signatures,
        "weights": [[name, weights[name]] for name in order],
        "ops": operators(content),
        "spec": spec.source,
        "tensorflow": tf.__version__,
    }


def _shape(detail: dict[str, Any]) -> list[int]:
    """The signature shape, -1 for the variable batch dimension."""
    sig = detail.get("shape_signature")
    shape = sig if sig is not None and len(sig) == len(detail["shape"]) else detail["shape"]
    return [int(d) for d in shape]
