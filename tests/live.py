"""A live federation in one test process: agents on a runtime, an aggregator on a thread."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.core import AgentCore
from agent.runtime import AgentRuntime
from aggregator.daemon import Aggregator
from fedge.config import AggregatorConfig, load
from fedge.data import load_dataset, partition
from fedge.mqtt import BrokerAddress


def make_agents(fed: str, n: int, tmp: Path, *, seed: int = 0) -> list[AgentCore]:
    data = load_dataset("digits", seed=seed)
    parts = partition(data.y_train, n, "iid", seed=seed)
    return [
        AgentCore(
            f"dev-{i}", fed, data.x_train[p], data.y_train[p], seed=i, state_dir=tmp / f"dev-{i}"
        )
        for i, p in enumerate(parts)
    ]


def config(broker: str, fed: str, tmp: Path, **kw: object) -> AggregatorConfig:
    values = {
        "broker": broker,
        "federation": fed,
        "state_dir": str(tmp / "agg"),
        "dataset": "digits",
        "model": "mlp:32",
        "rounds": 2,
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.1,
        "round_timeout_s": 30.0,
        "history": str(tmp / "history.jsonl"),
        **kw,
    }
    return load(AggregatorConfig, None, values)


class Running:
    """An aggregator on a thread, stopped at teardown."""

    def __init__(self, cfg: AggregatorConfig) -> None:
        self.aggregator = Aggregator(cfg)
        self.stop = threading.Event()
        self.result: dict[str, object] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result["code"] = self.aggregator.run(self.stop)
        except Exception as exc:  # surfaced by the test
            self.result["error"] = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def start_agents(broker, agents: list[AgentCore], runtimes: list[AgentRuntime]) -> AgentRuntime:
    runtime = AgentRuntime(BrokerAddress(broker.host, broker.port), agents)
    runtime.start()
    runtimes.append(runtime)
    assert runtime.wait_connected(10)
    return runtime
