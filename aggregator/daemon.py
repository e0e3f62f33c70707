"""The aggregator daemon: a thin loop of read message -> RoundState -> checkpoint -> publish.

Network callbacks only enqueue; one thread owns the round, so there is no locking around
the aggregation state. A rejected message is logged once, counted and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from aggregator import checkpoint
from aggregator.acks import AckLedger
from aggregator.enrolment import Enrolment
from aggregator.evaluation import resolve_dimensions
from aggregator.messages import Messages
from aggregator.presence import Presence
from aggregator.rounds import RoundRules, RoundState, round_record
from fedge import history, signing
from fedge.codecs import Pipeline
from fedge.config import AggregatorConfig
from fedge.credentials import mqtt_auth
from fedge.errors import ConfigError, DataError, ModelError, WireError
from fedge.models import Model, build_model
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session
from fedge.params import Params, num_parameters, spec_of
from fedge.protocol import Kind, Topics
from fedge.wire import (
    Limits,
    ModelRef,
    model_ref,
    now_ms,
)

log = logging.getLogger(__name__)

RESTORE_SETTLE_S = 5.0  # after a restart, time for the broker's backlog to arrive


class Aggregator:
    """Runs synchronous FedAvg rounds for one federation until ``rounds`` or ``stop``."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.on_round = on_round
        self.heartbeat = heartbeat  # called from the serving loop (sd_notify: READY, WATCHDOG)
        self.topics = Topics(config.federation)
        self.limits = Limits(max_bytes=config.max_update_bytes)
        self.auth = mqtt_auth(config)  # secrets read (and checked) now, not at connect
        self.enrolment = Enrolment(config.clients_file)
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
            config.short_round,
            self.enrolment.clients,
        )
        try:
            n_features, n_classes, self.eval_data = resolve_dimensions(config)
        except DataError as exc:
            raise ConfigError(
                f"key {'test_data' if config.test_data else 'dataset'!r}: {exc}"
            ) from None
        try:
            self.model: Model = build_model(config.model, n_features, n_classes, seed=config.seed)
        except (ConfigError, ModelError) as exc:
            raise ConfigError(f"key 'model': {exc}") from None
        self.spec = self.model.describe()
        self.layout = spec_of(self.model.get_weights())
        self.model_ref: ModelRef = model_ref(config.model, self.spec, self.layout)
        signer = signing.load_signing_key(config.signing_key) if config.signing_key else None
        self.messages = Messages(
            config, self.model, self.model_ref, self.spec, self.layout, signer
        )  # a ship_model without a model file is a config error, now
        self.rejections: Counter[str] = Counter()
        self.presence = Presence(config.federation, self.limits)
        self.round: RoundState | None = None
        self.finished = False
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self._loop: NetworkLoop | None = None
        self._session: Session | None = None
        self._round_started = 0.0
        self.acks = AckLedger(
            self._ack,
            self._save_round,
            batch=config.checkpoint_batch,
            interval_s=config.checkpoint_interval_s,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Serve until the configured rounds are done (0) or ``stop`` is set (0)."""
        stop = stop or threading.Event()
        start_round, weights, snapshot = self._resume()
        if snapshot is not None:  # before connecting: the broker's backlog folds into it
            self._restore_round(start_round, weights, snapshot)
        self._connect()
        try:
            if self.finished:
                self._beat()
                log.info(
                    "federation %s already finished at round %d",
                    self.config.federation,
                    start_round - 1,
                )
                self._publish_global(start_round, weights, final=True).result(10)
                return 0
            self._publish_task()
            if self.round is not None:
                self._publish_open_round()
            else:
                self._wait_for_clients(stop)
                self._open_round(start_round, weights)
            while not stop.is_set() and not self.finished:
                self._step()
            return 0
        finally:
            try:
                self.acks.settle()  # what is folded goes to disk before we let go of it
            except OSError as exc:
                log.error("cannot save the round (%s); the broker will deliver it again", exc)
            if self._loop is not None:
                self._loop.stop()

    def _wait_for_clients(self, stop: threading.Event) -> None:
        """Hold the first round until ``start_clients`` agents are online (bounded wait)."""
        wanted = self.config.start_clients
        deadline = time.monotonic() + self.rules.round_timeout_s
        while len(self.online) < wanted and time.monotonic() < deadline and not stop.is_set():
            self._beat()
            try:
                self._receive(self._inbox.get(timeout=0.1))
            except queue.Empty:
                pass
            self.acks.settle_if_due(self._inbox.empty())
        if len(self.online) < wanted:
            log.warning("only %d of %d agents online; starting anyway", len(self.online), wanted)

    def _resume(self) -> tuple[int, Params, dict[str, Any] | None]:
        """(round to run, its global, its saved snapshot if the crash came mid-round)."""
        saved = checkpoint.load(self.config.state_dir)
        if saved is None:
            log.info(
                "fresh federation %s: model %s (%d parameters)",
                self.config.federation,
                self.config.model,
                num_parameters(self.model.get_weights()),
            )
            return 1, self.model.get_weights(), checkpoint.load_round(self.config.state_dir)
        if saved.model_hash != self.model_ref.hash:
            raise ConfigError(
                f"{self.config.state_dir}: checkpoint is for another model; use "
                "another state_dir or move the checkpoint away"
            )
        self.finished = saved.finished
        self.rejections.update(saved.rejected)
        if saved.record and self.config.history:
            history.append_missing(self.config.history, saved.record)
        log.info("resuming federation %s at round %d", self.config.federation, saved.round)
        return saved.round, saved.weights, checkpoint.load_round(self.config.state_dir)

    def _connect(self) -> None:
        self._loop = NetworkLoop("aggregator-mqtt").start()
        self._session = self._loop.add(
            Session(
                self.config.mqtt_client_id,
                BrokerAddress.parse(self.config.broker),
                **self.auth.session_args(),
                subscriptions=[(self.topics.all_updates, 1), (self.topics.all_status, 1)],
                on_message=self._inbox.put,
                clean_session=False,  # the broker keeps what we have not acknowledged
                manual_ack=True,  # ... and we acknowledge only what is on disk (acks.py)
            )
        )
        if not self._session.wait_connected(15):
            log.warning("broker %s not reachable yet; still trying", self.config.broker)

    def _ack(self, messages: Sequence[Incoming]) -> None:
        if self._session is not None:
            self._session.ack(messages)

    def _save_round(self) -> None:
        if self.round is not None:
            checkpoint.save_round(self.config.state_dir, self.round.snapshot())

    def _publish_task(self) -> None:
        assert self._session is not None
        self._session.publish(self.topics.task, self.messages.task(self.rules), qos=1, retain=True)

    def _publish_global(self, round_number: int, weights: Params, **fields: Any) -> Future[None]:
        """``global`` for this round (fields: final, deadline_ms, opened_ms, metrics)."""
        assert self._session is not None
        payload = self.messages.global_model(self.rules, round_number, weights, **fields)
        return self._session.publish(self.topics.global_model, payload, qos=1, retain=True)

    def _new_round(self, round_number: int, weights: Params, deadline_ms: int) -> RoundState:
        return RoundState(
            self.config.federation,
            round_number,
            weights,
            self.model_ref,
            self.layout,
            self.rules,
            deadline_ms,
            self.limits,
        )

    def _open_round(
        self, round_number: int, weights: Params, metrics: dict[str, float] | None = None
    ) -> None:
        """A new attempt at a round: on disk before its global is out, so a restart knows it."""
        self._reload_clients()
        self.round = self._new_round(
            round_number, weights, now_ms() + int(self.rules.round_timeout_s * 1000)
        )
        self._round_started = time.monotonic()  # an extension keeps the clock running
        self._save_round()
        self._publish_open_round(metrics)
        log.info("round %d open (deadline in %.0fs)", round_number, self.rules.round_timeout_s)

    def _reload_clients(self) -> None:
        clients = self.enrolment.changed()
        if clients is not None:
            self.rules = dataclasses.replace(self.rules, clients=clients)

    def _restore_round(self, round_number: int, weights: Params, snapshot: dict[str, Any]) -> None:
        """Resume the round a crash interrupted: same attempt, same folded updates. The
        deadline gets a settle time, so the broker's backlog arrives before it can close."""
        state = self._new_round(round_number, weights, 0)
        try:
            state.restore(snapshot)
        except (ValueError, KeyError, TypeError) as exc:
            log.info("round snapshot not used (%s); the round opens afresh", exc)
            return
        settle_ms = int(min(self.rules.round_timeout_s, RESTORE_SETTLE_S) * 1000)
        state.deadline_ms = max(state.deadline_ms, now_ms() + settle_ms)
        self.round = state
        self._round_started = time.monotonic()
        log.info(
            "round %d resumed with %d updates folded (attempt %d)",
            state.round,
            state.count,
            state.opened_ms,
        )

    def _publish_open_round(self, metrics: dict[str, float] | None = None) -> None:
        state = self.round
        assert state is not None
        self._publish_global(
            state.round,
            state.global_weights,
            deadline_ms=state.deadline_ms,
            opened_ms=state.opened_ms,
            metrics=metrics,
        )

    @property
    def online(self) -> set[str]:
        return self.presence.online

    def network_healthy(self, max_silence: float = 30.0) -> bool:
        return self._loop is not None and self._loop.healthy(max_silence)

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _step(self) -> None:
        self._beat()
        try:
            self._receive(self._inbox.get(timeout=0.1))
        except queue.Empty:
            pass
        self._maybe_close()
        self.acks.settle_if_due(self._inbox.empty())

    def _receive(self, message: Incoming) -> None:
        self.acks.received(message, self.handle(message))

    def handle(self, message: Incoming) -> bool:
        """Route one message; never raises. True when it changed the round (an update folded)."""
        parsed = self.topics.parse(message.topic)
        if parsed is None:  # on update/+ or status/+, but the level names no valid client
            for kind in (Kind.UPDATE, Kind.STATUS):
                if message.topic.startswith(f"{self.topics.prefix}{kind.value}/"):
                    reason = "sender" if kind is Kind.UPDATE else "status:sender"
                    self._reject(reason, f"{kind.value} on {message.topic!r:.100}", "no client id")
            return False
        kind, client = parsed
        if kind is Kind.UPDATE and client is not None and self.round is not None:
            verdict = self.round.offer(client, message.payload)
            if verdict.accepted:
                return True
            self._reject(
                verdict.reason, f"round {self.round.round}: update from {client}", verdict.detail
            )
        elif kind is Kind.UPDATE:  # no round is open: the federation has finished
            self._reject("stale", f"update from {client}", "the federation has finished")
        elif kind is Kind.STATUS and client is not None:
            try:
                self.presence.update(client, message.payload)
            except WireError as exc:
                self._reject("status:" + exc.reason, f"status from {client}", str(exc))
        return False

    def _reject(self, reason: str, what: str, detail: str) -> None:
        self.rejections[reason] += 1
        log.warning("rejected %s: %s (%s)", what, reason, detail)

    def _maybe_close(self) -> None:
        state = self.round
        if state is None:
            return
        now = now_ms()
        if state.ready(now, self.online):
            self._close(state)
        elif state.overdue(now):
            self._short_round(state, now)

    def _short_round(self, state: RoundState, now: int) -> None:
        """A deadline without quorum: extend the attempt, or drop it and run the round again."""
        log.warning(
            "round %d: %d of %d required updates by the deadline; %s",
            state.round,
            state.count,
            self.rules.min_clients,
            "running it again" if self.rules.short_round == "rerun" else "extending it",
        )
        if self.rules.short_round == "rerun":
            self.acks.settle()  # acknowledge what is held before its updates are dropped
            self._open_round(state.round, state.global_weights)
            return
        state.extend(now)
        self._save_round()
        self._publish_open_round()

    def _close(self, state: RoundState) -> None:
        weights = state.close()
        metrics = self._evaluate(weights)
        next_round = state.round + 1
        final = bool(self.config.rounds) and state.round >= self.config.rounds
        record = round_record(
            state, metrics, weights, time.monotonic() - self._round_started, self.rejections
        )
        checkpoint.save(
            self.config.state_dir,
            checkpoint.Checkpoint(
                next_round, weights, self.model_ref.hash, final, record, dict(self.rejections)
            ),
        )
        self.acks.saved_elsewhere()  # the new global holds every folded update
        if self.config.history:
            history.append(self.config.history, record)
        if final:
            self.round = None
            self._publish_global(next_round, weights, final=True, metrics=metrics).result(10)
            self.finished = True
        else:
            self._open_round(next_round, weights, metrics)
        log.info(
            "round %d closed: %d clients, accuracy %s, rejected %s",
            state.round,
            state.count,
            metrics.get("accuracy"),
            dict(state.rejected),
        )
        if self.on_round is not None:
            self.on_round(record)

    def _evaluate(self, weights: Params) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        self.model.set_weights(weights)
        result = self.model.evaluate(self.eval_data.x, self.eval_data.y)
        return {"accuracy": float(result["accuracy"]), "loss": float(result["loss"])}
