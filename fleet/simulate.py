"""A federation in one process, without a broker: the same agent and round code, same bytes.

Benchmarks compare codecs on this: every update is the exact payload an agent would publish
and goes through the aggregator's own validation and fold, so bytes and accuracy are the
real ones; only MQTT and the processes are left out (the fleet emulator covers those).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from agent.core import AgentCore
from aggregator.rounds import RoundRules, RoundState
from fedge.data import emulated_split
from fedge.models import build_model
from fedge.params import Params, spec_of
from fedge.wire import Global, Hyper, Task, encode, model_ref
from fleet.worker import client_name

FEDERATION = "sim"


@dataclass(frozen=True)
class SimulationConfig:
    codec: str = "int8"
    error_feedback: bool = False
    downlink: str = "float32"
    dataset: str = "digits"
    clients: int = 20
    partition: str = "dirichlet:0.5"
    rounds: int = 30
    model: str = "mlp"
    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.05
    seed: int = 0


@dataclass
class SimulationResult:
    accuracy: list[float] = field(default_factory=list)  # global test accuracy after each round
    update_bytes: list[int] = field(default_factory=list)  # every accepted update payload
    float32_bytes: int = 0  # the same updates with a float32 delta
    downlink_bytes: int = 0  # one global message per round
    rejected: int = 0
    seconds: float = 0.0


def simulate(config: SimulationConfig) -> SimulationResult:
    """Run ``config.rounds`` synchronous FedAvg rounds with every client, in process."""
    started = time.perf_counter()
    data, parts = emulated_split(config.dataset, config.clients, config.partition, seed=config.seed)
    model = build_model(config.model, data.n_features, data.n_classes, seed=config.seed)
    spec, layout = model.describe(), spec_of(model.get_weights())
    ref = model_ref(config.model, spec, layout)
    rules = RoundRules(codec=config.codec, downlink=config.downlink)
    task = Task(
        FEDERATION,
        "aggregator",
        ref,
        spec,
        layout,
        Hyper(config.epochs, config.batch_size, config.lr),
        rules.codec,
        config.error_feedback,
    )
    agents = [
        AgentCore(
            client_name(i),
            FEDERATION,
            data.x_train[rows],
            data.y_train[rows],
            seed=config.seed + i,
        )
        for i, rows in enumerate(parts)
    ]
    for agent in agents:
        agent.on_task(encode(task))
    result = SimulationResult()
    weights: Params = model.get_weights()
    for round_number in range(1, config.rounds + 1):
        state = RoundState(FEDERATION, round_number, weights, ref, layout, rules, 2**62)
        message = Global(
            FEDERATION,
            round_number,
            "aggregator",
            ref,
            weights,
            0,
            opened=round_number,
            weights_codec=config.downlink,
        )
        payload = encode(message)
        result.downlink_bytes += len(payload)
        for agent in agents:
            job = agent.on_global(payload)
            if job is None:
                continue
            trained = agent.train(job)
            verdict = state.offer(agent.client_id, trained.update)
            if verdict.accepted:
                result.update_bytes.append(len(trained.update))
                agent.committed(trained.round, trained.opened, trained.residual)
            else:
                result.rejected += 1
        result.float32_bytes += state.float32_bytes
        weights = state.close()
        model.set_weights(weights)
        result.accuracy.append(float(model.evaluate(data.x_test, data.y_test)["accuracy"]))
    result.seconds = time.perf_counter() - started
    return result


def mean(values: list[int]) -> float:
    return float(np.mean(values)) if values else 0.0
