"""The aggregator's two outgoing messages, built and signed: the task and the global model.

Pure: the daemon decides when to publish; this says what the bytes are. Both are signed over
their exact encoded bytes when the aggregator holds a signing key (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.rounds import RoundRules
from fedge import signing
from fedge.config import AggregatorConfig
from fedge.errors import ConfigError
from fedge.models import Model
from fedge.params import Params, TensorSpec
from fedge.wire import Global, Hyper, ModelRef, Task, encode


def model_file(config: AggregatorConfig, model: Model) -> bytes:
    """The .tflite bytes for the task when ``ship_model`` is on (else nothing)."""
    content = getattr(model, "content", b"")
    if config.ship_model and not content:
        raise ConfigError(f"ship_model: model {config.model} has no model file to ship")
    return content if config.ship_model else b""


class Messages:
    def __init__(
        self,
        config: AggregatorConfig,
        model: Model,
        ref: ModelRef,
        spec: Mapping[str, Any],
        layout: list[TensorSpec],
        signer: signing.SigningKey | None,
    ) -> None:
        self.config, self.model, self.ref = config, model, ref
        self.spec, self.layout, self.signer = dict(spec), layout, signer
        self.file = model_file(config, model)  # a ship_model without a file fails now

    def task(self, rules: RoundRules) -> bytes:
        c = self.config
        task = Task(
            c.federation,
            c.mqtt_client_id,
            self.ref,
            self.spec,
            self.layout,
            Hyper(c.epochs, c.batch_size, c.lr),
            rules.codec,
            c.use_error_feedback,
            model_file=self.file,
        )
        return signing.seal(encode(task), self.signer)

    def global_model(
        self,
        rules: RoundRules,
        round_number: int,
        weights: Params,
        *,
        final: bool = False,
        deadline_ms: int = 0,
        opened_ms: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> bytes:
        message = Global(
            self.config.federation,
            round_number,
            self.config.mqtt_client_id,
            self.ref,
            weights,
            deadline_ms,
            rules.fraction,
            rules.min_clients,
            final,
            dict(metrics or {}),
            opened=opened_ms,
            weights_codec=rules.downlink,
        )
        return signing.seal(encode(message), self.signer)  # signed over these exact bytes
