"""The aggregator daemon: a thin loop of read message -> RoundState -> checkpoint -> publish.

Network callbacks only enqueue; one thread owns the round, so there is no locking around
the aggregation state. A rejected message is logged once, counted and otherwise ignored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator import checkpoint
from aggregator.rounds import RoundRules, RoundState
from fedge import history, signing
from fedge.codecs import Pipeline
from fedge.config import AggregatorConfig
from fedge.credentials import mqtt_auth
from fedge.errors import ConfigError, WireError
from fedge.models import Model, build_model
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session
from fedge.params import Params, num_parameters, spec_of
from fedge.protocol import Kind, Topics
from fedge.wire import (
    Global,
    Hyper,
    Limits,
    ModelRef,
    Status,
    Task,
    encode,
    model_ref,
    now_ms,
    unpack,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    x: np.ndarray
    y: np.ndarray


def resolve_dimensions(config: AggregatorConfig) -> tuple[int, int, EvalData | None]:
    """(n_features, n_classes, held-out data) from the dataset, the test file or the config."""
    if config.dataset:
        from fedge.data import load_dataset

        data = load_dataset(config.dataset, seed=config.seed)
        return data.n_features, data.n_classes, EvalData(data.x_test, data.y_test)
    if config.test_data:
        from fedge.data import load_npz

        x, y = load_npz(
            config.test_data,
            n_features=config.n_features or None,
            n_classes=config.n_classes or None,
        )
        return x.shape[1], config.n_classes or int(y.max()) + 1, EvalData(x, y)
    return config.n_features, config.n_classes, None


class Aggregator:
    """Runs synchronous FedAvg rounds for one federation until ``rounds`` or ``stop``."""

    def __init__(
        self, config: AggregatorConfig, *, on_round: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.config = config
        self.on_round = on_round
        self.topics = Topics(config.federation)
        self.limits = Limits(max_bytes=config.max_update_bytes)
        self.auth = mqtt_auth(config)  # secrets read (and checked) now, not at connect
        self.signer = signing.load_signing_key(config.signing_key) if config.signing_key else None
        codec = Pipeline(config.codec)
        if codec.sent_as() != codec.name:
            log.warning(
                "no 'zstandard' package: announcing %s instead of %s", codec.sent_as(), codec.name
            )
        self.rules = RoundRules(
            config.fraction,
            config.min_clients,
            config.target_clients,
            config.round_timeout_s,
            config.max_update_norm,
            codec.sent_as(),
            config.downlink,
        )
        n_features, n_classes, self.eval_data = resolve_dimensions(config)
        self.model: Model = build_model(config.model, n_features, n_classes, seed=config.seed)
        self.spec = self.model.describe()
        self.layout = spec_of(self.model.get_weights())
        self.model_ref: ModelRef = model_ref(config.model, self.spec, self.layout)
        self._model_file()  # a ship_model without a model file is a config error, now
        self.rejections: Counter[str] = Counter()
        self.online: set[str] = set()
        self.round: RoundState | None = None
        self.finished = False
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self._loop: NetworkLoop | None = None
        self._session: Session | None = None
        self._round_started = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Serve until the configured rounds are done (0) or ``stop`` is set (0)."""
        stop = stop or threading.Event()
        start_round, weights = self._resume()
        self._connect()
        try:
            if self.finished:
                log.info(
                    "federation %s already finished at round %d",
                    self.config.federation,
                    start_round - 1,
                )
                self._publish_global(start_round, weights, final=True).result(10)
                return 0
            self._publish_task()
            self._wait_for_clients(stop)
            self._open_round(start_round, weights)
            while not stop.is_set() and not self.finished:
                self._step()
            return 0
        finally:
            self._disconnect()

    def _wait_for_clients(self, stop: threading.Event) -> None:
        """Hold the first round until ``start_clients`` agents are online (bounded wait)."""
        wanted = self.config.start_clients
        deadline = time.monotonic() + self.rules.round_timeout_s
        while len(self.online) < wanted and time.monotonic() < deadline and not stop.is_set():
            try:
                self.handle(self._inbox.get(timeout=0.1))
            except queue.Empty:
                pass
        if len(self.online) < wanted:
            log.warning("only %d of %d agents online; starting anyway", len(self.online), wanted)

    def _resume(self) -> tuple[int, Params]:
        saved = checkpoint.load(self.config.state_dir)
        if saved is None:
            log.info(
                "fresh federation %s: model %s (%d parameters)",
                self.config.federation,
                self.config.model,
                num_parameters(self.model.get_weights()),
            )
            return 1, self.model.get_weights()
        if saved.model_hash != self.model_ref.hash:
            raise ConfigError(
                f"{self.config.state_dir}: checkpoint is for another model; use "
                "another state_dir or move the checkpoint away"
            )
        self.finished = saved.finished
        log.info("resuming federation %s at round %d", self.config.federation, saved.round)
        return saved.round, saved.weights

    def _connect(self) -> None:
        self._loop = NetworkLoop("aggregator-mqtt").start()
        self._session = self._loop.add(
            Session(
                self.config.mqtt_client_id,
                BrokerAddress.parse(self.config.broker),
                **self.auth.session_args(),
                subscriptions=[(self.topics.all_updates, 1), (self.topics.all_status, 1)],
                on_message=self._inbox.put,
                clean_session=False,  # the broker queues updates while we restart
            )
        )
        if not self._session.wait_connected(15):
            log.warning("broker %s not reachable yet; still trying", self.config.broker)

    def _disconnect(self) -> None:
        if self._loop is not None:
            self._loop.stop()

    # -- rounds ------------------------------------------------------------------------------

    def _publish_task(self) -> None:
        task = Task(
            self.config.federation,
            self.config.mqtt_client_id,
            self.model_ref,
            self.spec,
            self.layout,
            Hyper(self.config.epochs, self.config.batch_size, self.config.lr),
            self.rules.codec,
            self.config.use_error_feedback,
            model_file=self._model_file(),
        )
        assert self._session is not None
        self._session.publish(
            self.topics.task, signing.seal(encode(task), self.signer), qos=1, retain=True
        )

    def _model_file(self) -> bytes:
        """The .tflite bytes for the task when ``ship_model`` is on (else nothing)."""
        content = getattr(self.model, "content", b"")
        if self.config.ship_model and not content:
            raise ConfigError(f"ship_model: model {self.config.model} has no model file to ship")
        return content if self.config.ship_model else b""

    def _publish_global(
        self,
        round_number: int,
        weights: Params,
        *,
        final: bool = False,
        deadline_ms: int = 0,
        opened_ms: int = 0,
        metrics: dict[str, float] | None = None,
    ) -> Any:
        message = Global(
            self.config.federation,
            round_number,
            self.config.mqtt_client_id,
            self.model_ref,
            weights,
            deadline_ms,
            self.rules.fraction,
            self.rules.min_clients,
            final,
            metrics or {},
            opened=opened_ms,
            weights_codec=self.rules.downlink,
        )
        assert self._session is not None
        payload = signing.seal(encode(message), self.signer)  # signed over these exact bytes
        return self._session.publish(self.topics.global_model, payload, qos=1, retain=True)

    def _open_round(
        self, round_number: int, weights: Params, metrics: dict[str, float] | None = None
    ) -> None:
        deadline = now_ms() + int(self.rules.round_timeout_s * 1000)
        self.round = RoundState(
            self.config.federation,
            round_number,
            weights,
            self.model_ref,
            self.layout,
            self.rules,
            deadline,
            self.limits,
        )
        self._round_started = time.monotonic()
        self._publish_global(
            round_number,
            weights,
            deadline_ms=deadline,
            opened_ms=self.round.opened_ms,
            metrics=metrics,
        )
        log.info("round %d open (deadline in %.0fs)", round_number, self.rules.round_timeout_s)

    def _step(self) -> None:
        try:
            message = self._inbox.get(timeout=0.1)
        except queue.Empty:
            message = None
        if message is not None:
            self.handle(message)
        self._maybe_close()

    def handle(self, message: Incoming) -> None:
        """Route one message; never raises."""
        parsed = self.topics.parse(message.topic)
        if parsed is None:
            return
        kind, client = parsed
        if kind is Kind.UPDATE and client is not None and self.round is not None:
            verdict = self.round.offer(client, message.payload)
            if not verdict.accepted:
                self.rejections[verdict.reason] += 1
                log.warning(
                    "round %d: rejected update from %s: %s (%s)",
                    self.round.round,
                    client,
                    verdict.reason,
                    verdict.detail,
                )
        elif kind is Kind.UPDATE:  # no round is open: the federation has finished
            self.rejections["stale"] += 1
            log.warning("update from %s after the final round: stale", client)
        elif kind is Kind.STATUS and client is not None:
            self._handle_status(client, message.payload)

    def _handle_status(self, client: str, payload: bytes) -> None:
        if not payload:  # a cleared retained status
            self.online.discard(client)
            return
        try:
            status = Status.from_wire(unpack(payload, self.limits), self.limits)
        except WireError as exc:
            self.rejections["status:" + exc.reason] += 1
            log.warning("bad status from %s: %s", client, exc)
            return
        if status.sender != client or status.federation != self.config.federation:
            self.rejections["status:sender"] += 1
            return
        if status.state == "online":
            self.online.add(client)
        else:
            self.online.discard(client)

    def _maybe_close(self) -> None:
        state = self.round
        if state is None:
            return
        now = now_ms()
        if state.ready(now, self.online):
            self._close(state)
        elif state.overdue(now):
            state.extend(now)
            log.warning(
                "round %d: %d of %d required updates by the deadline; extended by %.0fs",
                state.round,
                state.count,
                self.rules.min_clients,
                self.rules.round_timeout_s,
            )
            self._publish_global(
                state.round,
                state.global_weights,
                deadline_ms=state.deadline_ms,
                opened_ms=state.opened_ms,
            )

    def _close(self, state: RoundState) -> None:
        weights = state.close()
        metrics = self._evaluate(weights)
        next_round = state.round + 1
        final = bool(self.config.rounds) and state.round >= self.config.rounds
        checkpoint.save(
            self.config.state_dir,
            checkpoint.Checkpoint(next_round, weights, self.model_ref.hash, final),
        )
        record = {
            "round": state.round,
            "clients": state.count,
            "examples": int(sum(state.contributors.values())),
            "accuracy": metrics.get("accuracy"),
            "loss": metrics.get("loss"),
            "params": num_parameters(weights),
            "uplink_bytes": state.uplink_bytes,
            "float32_bytes": state.float32_bytes,
            "seconds": round(time.monotonic() - self._round_started, 3),
            "rejected": dict(state.rejected),
            "extensions": state.extensions,
            "codec": self.rules.codec,
            "ts": now_ms(),
        }
        if self.config.history:
            history.append(self.config.history, record)
        if final:
            self.round = None
            self._publish_global(next_round, weights, final=True, metrics=metrics).result(10)
            self.finished = True
        else:
            self._open_round(next_round, weights, metrics)
        log.info(
            "round %d closed: %d clients, accuracy %s",
            state.round,
            state.count,
            metrics.get("accuracy"),
        )
        if self.on_round is not None:
            self.on_round(record)

    def _evaluate(self, weights: Params) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        self.model.set_weights(weights)
        result = self.model.evaluate(self.eval_data.x, self.eval_data.y)
        return {"accuracy": float(result["accuracy"]), "loss": float(result["loss"])}
