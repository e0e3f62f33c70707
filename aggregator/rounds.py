"""The round state machine, pure: feed it payloads and the clock, it says what to do.

No broker, no files: the daemon reads messages, calls ``offer`` / ``ready`` / ``close``, and
publishes what comes back. A refused update leaves every field of the round untouched.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.strategies import FedAvg, Strategy
from fedge import params as P
from fedge.codecs import DOWNLINK_CODECS, Pipeline, accepted_names, encode_params
from fedge.errors import WireError
from fedge.params import Params, TensorSpec
from fedge.protocol import is_sampled
from fedge.wire import Limits, ModelRef, Reason, Update, downlink_encode, now_ms, pack, unpack

log = logging.getLogger(__name__)


SHORT_ROUND_POLICIES = ("extend", "rerun")
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class RoundRules:
    """When a round may close and what updates must look like.

    ``target_clients`` 0 means every sampled online client. ``codec`` is the update pipeline
    agents must use; ``downlink`` how the global model travels (float32 or float16).
    ``short_round`` says what a deadline without quorum does: ``extend`` keeps the updates and
    waits another timeout, ``rerun`` drops them and opens a new attempt that every sampled
    agent trains again. ``clients`` (when given) is the set of client ids allowed to send.
    """

    fraction: float = 1.0
    min_clients: int = 1
    target_clients: int = 0
    round_timeout_s: float = 60.0
    max_update_norm: float = 0.0  # 0 = no bound
    codec: str = "int8"
    downlink: str = "float32"
    short_round: str = "extend"
    clients: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {self.min_clients}")
        if self.target_clients and self.target_clients < self.min_clients:
            raise ValueError("target_clients must be 0 or >= min_clients")
        if self.round_timeout_s <= 0:
            raise ValueError("round_timeout_s must be positive")
        object.__setattr__(self, "codec", Pipeline(self.codec).name)  # canonical, or ValueError
        if self.downlink not in DOWNLINK_CODECS:
            raise ValueError(f"downlink must be one of {DOWNLINK_CODECS}, got {self.downlink!r}")
        if self.short_round not in SHORT_ROUND_POLICIES:
            raise ValueError(f"short_round must be one of {SHORT_ROUND_POLICIES}")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    client: str
    reason: str = ""
    detail: str = ""


@dataclass
class RoundState:
    """One open round: the global it started from, the fold so far, who contributed."""

    federation: str
    round: int
    global_weights: Params
    model: ModelRef
    layout: list[TensorSpec]
    rules: RoundRules
    deadline_ms: int
    limits: Limits = field(default_factory=Limits)
    strategy: Strategy = field(default_factory=FedAvg)
    contributors: dict[str, int] = field(default_factory=dict)  # client -> num_examples
    uplink_bytes: int = 0
    float32_bytes: int = 0
    rejected: Counter = field(default_factory=Counter)
    extensions: int = 0
    opened_ms: int = field(default_factory=now_ms)  # marks this attempt of the round

    def __post_init__(self) -> None:
        # agents train from the weights as they decode them (float16 downlink rounds them)
        self.base_hash = P.content_hash(
            downlink_encode(self.global_weights, self.rules.downlink)[1]
        )
        self._accepted = accepted_names(self.rules.codec)
        self._sampling: dict[str, bool] = {}
        self._f32_delta = float32_delta_size(self.global_weights)
        self.strategy.start(self.global_weights)

    @property
    def count(self) -> int:
        return len(self.contributors)

    def offer(self, topic_client: str, payload: bytes) -> Verdict:
        """Validate and fold one update payload; any refusal changes nothing."""
        try:
            update, delta = self._validate(topic_client, payload)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            return Verdict(False, topic_client, exc.reason, str(exc))
        except Exception as exc:  # a decoder bug: validation changes nothing, so refuse and live
            log.exception("round %d: validating an update from %s failed", self.round, topic_client)
            self.rejected["internal"] += 1
            return Verdict(False, topic_client, "internal", f"{type(exc).__name__}")
        self.strategy.fold(delta, float(update.num_examples))
        self.contributors[topic_client] = update.num_examples
        self.uplink_bytes += len(payload)
        # the same message with a float32 delta: a map's size is the sum of its entries
        self.float32_bytes += len(payload) - len(pack({"delta": update.delta})) + self._f32_delta
        return Verdict(True, topic_client)

    def _validate(self, topic_client: str, payload: bytes) -> tuple[Update, Params]:
        if self.rules.clients is not None and topic_client not in self.rules.clients:
            raise WireError(f"client {topic_client!r} is not enrolled", reason=Reason.UNKNOWN.value)
        update = Update.from_wire(unpack(payload, self.limits), self.limits)
        if update.federation != self.federation:
            raise WireError(f"federation {update.federation!r}", reason=Reason.FEDERATION.value)
        if update.sender != topic_client:
            raise WireError(
                f"sender {update.sender!r} on the topic of {topic_client!r}",
                reason=Reason.SENDER.value,
            )
        if update.model != self.model:
            raise WireError(
                f"model {update.model.id!r}/{update.model.hash.hex()[:12]}",
                reason=Reason.MODEL.value,
            )
        if update.round < self.round:
            raise WireError(
                f"round {update.round} < open round {self.round}", reason=Reason.STALE.value
            )
        if update.round > self.round:
            raise WireError(
                f"round {update.round} > open round {self.round}", reason=Reason.FUTURE.value
            )
        if update.base != self.base_hash:
            raise WireError("trained from another global model", reason=Reason.STALE.value)
        if topic_client in self.contributors:
            raise WireError(
                f"second update from {topic_client!r} in round {self.round}",
                reason=Reason.DUPLICATE.value,
            )
        delta = update.decode_delta(self.layout, self._accepted)
        if self.rules.max_update_norm > 0:
            norm = P.l2_norm(delta)
            if norm > self.rules.max_update_norm:
                raise WireError(
                    f"norm {norm:.3g} > bound {self.rules.max_update_norm:.3g}",
                    reason=Reason.NORM.value,
                )
        return update, delta

    def expected(self, online: set[str]) -> set[str]:
        """The online clients the sampling rule picks for this round (memoised per client)."""
        return {c for c in online if self._sampled(c)}

    def _sampled(self, client: str) -> bool:
        picked = self._sampling.get(client)
        if picked is None:
            picked = is_sampled(self.federation, self.round, client, self.rules.fraction)
            self._sampling[client] = picked
        return picked

    def ready(self, now_ms: int, online: set[str]) -> bool:
        """Close now? At the target count, when every expected client reported, or at the
        deadline with at least ``min_clients`` updates."""
        if self.count < self.rules.min_clients:
            return False
        if self.rules.target_clients and self.count >= self.rules.target_clients:
            return True
        expected = self.expected(online)
        if not self.rules.target_clients and expected and expected <= set(self.contributors):
            return True
        return now_ms >= self.deadline_ms

    def overdue(self, now_ms: int) -> bool:
        """Past the deadline without quorum: the daemon extends the round."""
        return now_ms >= self.deadline_ms and self.count < self.rules.min_clients

    def extend(self, now_ms: int) -> None:
        self.deadline_ms = now_ms + int(self.rules.round_timeout_s * 1000)
        self.extensions += 1

    def snapshot(self) -> dict[str, Any]:
        """The open round as plain data: enough to resume it exactly after a crash."""
        return {
            "format": SNAPSHOT_FORMAT,
            "round": self.round,
            "base": self.base_hash,
            "opened_ms": self.opened_ms,
            "deadline_ms": self.deadline_ms,
            "extensions": self.extensions,
            "contributors": dict(self.contributors),
            "uplink_bytes": self.uplink_bytes,
            "float32_bytes": self.float32_bytes,
            "rejected": dict(self.rejected),
            "strategy": self.strategy.state(),
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Inverse of ``snapshot``, for this round and global only (else ValueError)."""
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"round snapshot format {snapshot.get('format')!r}")
        if snapshot["round"] != self.round or bytes(snapshot["base"]) != self.base_hash:
            raise ValueError("round snapshot is for another round or global model")
        self.strategy.restore(snapshot["strategy"])
        self.opened_ms = int(snapshot["opened_ms"])
        self.deadline_ms = int(snapshot["deadline_ms"])
        self.extensions = int(snapshot["extensions"])
        self.contributors = {str(c): int(n) for c, n in snapshot["contributors"].items()}
        self.uplink_bytes = int(snapshot["uplink_bytes"])
        self.float32_bytes = int(snapshot["float32_bytes"])
        self.rejected = Counter({str(r): int(n) for r, n in snapshot["rejected"].items()})

    def close(self) -> Params:
        """The next global model; the round must have quorum."""
        if self.count < self.rules.min_clients:
            raise RuntimeError(
                f"round {self.round} has {self.count} updates, needs {self.rules.min_clients}"
            )
        return self.strategy.finish()


def float32_delta_size(global_weights: Params) -> int:
    """Packed size of a float32-coded delta for this layout: it depends on shapes only."""
    wire, _ = encode_params(
        P.zeros_like(global_weights), Pipeline("float32"), np.random.default_rng()
    )
    return len(pack({"delta": wire}))


def round_record(
    state: RoundState,
    metrics: Mapping[str, float],
    weights: Params,
    seconds: float,
    rejected_total: Mapping[str, int],
) -> dict[str, Any]:
    """The closed round's history line (README, "The history file")."""
    return {
        "round": state.round,
        "opened": state.opened_ms,
        "clients": state.count,
        "contributors": sorted(state.contributors),
        "examples": int(sum(state.contributors.values())),
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "params": P.num_parameters(weights),
        "uplink_bytes": state.uplink_bytes,
        "float32_bytes": state.float32_bytes,
        "seconds": round(seconds, 3),
        "rejected": dict(state.rejected),
        "rejected_total": dict(rejected_total),
        "extensions": state.extensions,
        "codec": state.rules.codec,
        "ts": now_ms(),
    }
