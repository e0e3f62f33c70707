"""One agent's logic, pure of I/O: task and global payloads in, an update payload out.

The runtime calls ``on_task`` / ``on_global`` from the network thread (cheap: decode and
decide) and ``train`` from a worker thread. Every refusal is counted by reason and logged
once; nothing raises out of these methods except for programming errors.

Error feedback: when the task asks for it, the agent adds to each delta what compression
dropped from the previous one (the residual) and keeps the new residual. The residual is
saved with the round marker, atomically, only once the broker acknowledged the update, so a
restart neither loses nor double-counts it.

The outbox: a trained update is saved (``stage``) before it is sent and cleared once the broker
acknowledged it (``committed``). It survives a lost link and a restart and is sent again while
its round attempt is the current one; once a newer global arrives it is stale and dropped.
At most one update waits, so the outbox is bounded by one update's size.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge import params as P
from fedge.codecs import Pipeline
from fedge.errors import FedgeError, ModelError, WireError
from fedge.models import Model, model_from_spec
from fedge.models.base import StopCheck
from fedge.protocol import is_sampled
from fedge.signing import VerifyKey, open_signed
from fedge.statefile import read_msgpack, write_msgpack
from fedge.wire import Global, Limits, Metrics, Task, Update, encode, unpack

log = logging.getLogger(__name__)

STATE_FILE = "agent.msgpack"


@dataclass(frozen=True)
class TrainJob:
    task: Task
    model: Model
    global_model: Global


@dataclass(frozen=True)
class TrainResult:
    round: int
    opened: int
    update: bytes
    metrics: bytes
    values: dict[str, float]
    residual: np.ndarray  # error-feedback memory after this update (empty when off)


class AgentCore:
    """Decides whether to train on each global model and turns training into an update."""

    def __init__(
        self,
        client_id: str,
        federation: str,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int = 0,
        state_dir: str | Path | None = None,
        limits: Limits | None = None,
        verify_key: VerifyKey | None = None,
    ) -> None:
        if len(x) == 0 or len(x) != len(y):
            raise FedgeError(f"{client_id}: local data must be non-empty with len(x) == len(y)")
        self.client_id = client_id
        self.federation = federation
        self.x, self.y = x, y
        self.seed = seed
        self.state_dir = Path(state_dir) if state_dir else None
        self.limits = limits or Limits(max_bytes=64 * 1024 * 1024)
        self.verify_key = verify_key  # set: task and global must be signed by the aggregator
        self.task: Task | None = None
        self.model: Model | None = None
        self.problem = ""  # why this agent cannot train the current task, if it cannot
        self.current: tuple[int, int] = (0, 0)  # (round, opened) of the last global received
        self.rejections: Counter[str] = Counter()
        self._pending_global: bytes | None = None
        saved = read_msgpack(self.state_dir / STATE_FILE) if self.state_dir else None
        saved = saved if isinstance(saved, dict) else {}
        self.last_trained = int(saved.get("last_trained", 0))
        self.last_opened = int(saved.get("last_opened", 0))
        key, raw = saved.get("residual_model", b""), saved.get("residual", b"")
        usable = isinstance(key, bytes) and isinstance(raw, bytes) and len(raw) % 4 == 0
        self.residual_model = key if usable else b""
        self.residual = np.frombuffer(raw if usable else b"", dtype="<f4").copy()
        self.pending: TrainResult | None = _read_pending(saved.get("pending"))
        if self.pending is not None:
            log.info("%s: an update for round %d waits to be sent", client_id, self.pending.round)

    @property
    def num_examples(self) -> int:
        return int(len(self.y))

    def on_task(self, payload: bytes) -> None:
        try:
            inner = open_signed(payload, self.verify_key, self.limits)
            task = Task.from_wire(unpack(inner, self.limits), self.limits)
            if task.federation != self.federation:
                raise WireError(f"task for federation {task.federation!r}", reason="federation")
            try:
                model = model_from_spec(
                    task.model_spec, seed=self.seed, model_file=task.model_file or None
                )
            except ModelError as exc:
                if exc.reason not in ("model_file", "runtime"):
                    raise
                # a well-formed task this device cannot serve: say so on status, do not train
                self.problem = str(exc)
                log.error("%s: cannot train task: %s", self.client_id, self.problem)
                self.task, self.model = task, None
                return
            if P.spec_of(model.get_weights()) != task.layout:
                raise WireError("model spec and layout disagree", reason="shape")
            n_features = int(task.model_spec.get("n_features", -1))
            n_classes = int(task.model_spec.get("n_classes", -1))
            if self.x.shape[1] != n_features or int(self.y.max()) >= n_classes:
                self.problem = (
                    f"local data has {self.x.shape[1]} features and labels up to "
                    f"{int(self.y.max())}; model wants {n_features} features and "
                    f"{n_classes} classes"
                )
                log.error("%s: cannot train task: %s", self.client_id, self.problem)
                self.task, self.model = task, None
                return
        except (FedgeError, ValueError) as exc:
            self._reject("task", exc)
            return
        self.task, self.model, self.problem = task, model, ""
        log.info("%s: task %s (%s)", self.client_id, task.model.id, task.model.hash.hex()[:12])

    def on_global(self, payload: bytes) -> TrainJob | None:
        """A training job when this agent should train on this global model, else None."""
        if self.task is None:
            self._pending_global = payload  # retained messages may arrive in any order
            return None
        task, model = self.task, self.model
        try:
            inner = open_signed(payload, self.verify_key, self.limits)
            message = Global.from_wire(unpack(inner, self.limits), task.layout, self.limits)
            if message.federation != self.federation:
                raise WireError("global for another federation", reason="federation")
            if message.model != task.model:
                raise WireError("global for another model than the task", reason="model")
        except WireError as exc:
            self._reject("global", exc)
            return None
        # No ordering by round or clock: the retained global is the aggregator's latest word,
        # and a gateway's clock may jump back after a reboot. Only the exact attempt we
        # already delivered is skipped (an extension of a round republishes the same one).
        attempt = (message.round, message.opened)
        self.current = attempt
        if self.pending is not None:
            if (self.pending.round, self.pending.opened) == attempt:
                return None  # trained already: the runtime sends the waiting update again
            log.warning(
                "%s: dropping the unacknowledged update for round %d: the aggregator moved on "
                "to round %d",
                self.client_id,
                self.pending.round,
                message.round,
            )
            self.pending = None
            self._save()
        if message.final or model is None:
            return None
        if attempt == (self.last_trained, self.last_opened):
            return None
        if not is_sampled(self.federation, message.round, self.client_id, message.fraction):
            log.debug("%s: not sampled in round %d", self.client_id, message.round)
            return None
        return TrainJob(task, model, message)

    def take_pending_global(self) -> bytes | None:
        payload, self._pending_global = self._pending_global, None
        return payload

    def is_current(self, job: TrainJob) -> bool:
        """False when another global arrived while the job waited for the trainer."""
        message = job.global_model
        return (message.round, message.opened) == self.current and job.task is self.task

    def train(self, job: TrainJob, should_stop: StopCheck | None = None) -> TrainResult:
        """E local epochs from the global weights; the delta encoded with the task's codec.
        ``should_stop`` is asked before every SGD step (TrainingStopped when it says yes)."""
        task, message = job.task, job.global_model
        round_seed = _derive_seed(self.seed, self.client_id, message.round)
        started = time.perf_counter()
        job.model.set_weights(message.weights)
        fit = job.model.train(
            self.x,
            self.y,
            epochs=task.hyper.epochs,
            batch_size=task.hyper.batch_size,
            lr=task.hyper.lr,
            seed=round_seed,
            should_stop=should_stop,
        )
        delta = P.flatten(P.subtract(job.model.get_weights(), message.weights))
        if not np.all(np.isfinite(delta)):
            raise FedgeError(f"{self.client_id}: training diverged (non-finite weights)")
        memory = self._residual_for(task, delta.size)
        if memory is not None:
            delta = delta + memory
        pipeline = Pipeline(task.codec)
        lengths = [int(np.prod(shape, dtype=np.int64)) for _, shape in task.layout]
        encoded = pipeline.encode(delta, lengths, np.random.default_rng(round_seed + 1))
        residual = delta - encoded.decoded if task.error_feedback else np.zeros(0, np.float32)
        values = {
            "loss": float(fit["loss"]),
            "accuracy": float(fit["accuracy"]),
            "train_seconds": time.perf_counter() - started,
        }
        update = Update(
            self.federation,
            message.round,
            self.client_id,
            task.model,
            message.weights_hash,
            self.num_examples,
            encoded.wire,
        )  # local numbers travel on metrics/<client>, not on the scarce update uplink
        metrics = Metrics(
            self.federation,
            message.round,
            self.client_id,
            {**values, "num_examples": float(self.num_examples)},
        )
        return TrainResult(
            message.round, message.opened, encode(update), encode(metrics), values, residual
        )

    def _residual_for(self, task: Task, size: int) -> np.ndarray | None:
        """The saved residual when error feedback is on and it belongs to this model."""
        if not task.error_feedback or self.residual.size != size:
            return None
        if self.residual_model != _model_key(task):
            return None
        return self.residual

    def stage(self, result: TrainResult) -> None:
        """Keep ``result`` on disk until the broker acknowledges it (replacing any older one)."""
        self.pending = result
        self._save()

    def committed(
        self, round_number: int, opened: int = 0, residual: np.ndarray | None = None
    ) -> None:
        """The broker acknowledged our update for this attempt of the round: do not redo it,
        and from now on carry ``residual`` (None: keep the current one)."""
        self.last_trained, self.last_opened = round_number, opened
        if residual is not None:
            self.residual = np.asarray(residual, dtype=np.float32)
            self.residual_model = _model_key(self.task) if self.task and residual.size else b""
        if self.pending is not None and (self.pending.round, self.pending.opened) == (
            round_number,
            opened,
        ):
            self.pending = None
        self._save()

    def _save(self) -> None:
        if self.state_dir is None:
            return
        state: dict[str, object] = {
            "last_trained": self.last_trained,
            "last_opened": self.last_opened,
            "residual_model": self.residual_model,
            "residual": self.residual.astype("<f4").tobytes(),
        }
        if self.pending is not None:
            state["pending"] = {
                "round": self.pending.round,
                "opened": self.pending.opened,
                "update": self.pending.update,
                "residual": self.pending.residual.astype("<f4").tobytes(),
            }
        write_msgpack(self.state_dir / STATE_FILE, state)

    def _reject(self, what: str, exc: Exception) -> None:
        reason = getattr(exc, "reason", "malformed")
        self.rejections[f"{what}:{reason}"] += 1
        log.warning("%s: refused %s message: %s (%s)", self.client_id, what, reason, exc)


def _read_pending(raw: object) -> TrainResult | None:
    """The saved outbox entry, or None when absent or unusable (it is then retrained)."""
    if not isinstance(raw, dict):
        return None
    update, residual = raw.get("update"), raw.get("residual", b"")
    rnd, opened = raw.get("round"), raw.get("opened")
    if not (isinstance(update, bytes) and isinstance(residual, bytes) and len(residual) % 4 == 0):
        return None
    if not (isinstance(rnd, int) and isinstance(opened, int)):
        return None
    return TrainResult(rnd, opened, update, b"", {}, np.frombuffer(residual, "<f4").copy())


def _model_key(task: Task) -> bytes:
    """Which model a residual belongs to: id and content hash (same layout is not enough)."""
    return task.model.id.encode() + b"\0" + task.model.hash


def _derive_seed(seed: int, client_id: str, round_number: int) -> int:
    digest = hashlib.sha256(f"{seed}|{client_id}|{round_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
