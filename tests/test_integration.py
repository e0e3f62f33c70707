"""End to end against a real Mosquitto: rounds complete, late joiners, restarts, bad updates."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from fedge import history
from fedge.protocol import Topics
from fedge.wire import Global, Task, Update, pack, unpack
from tests.helpers import wait_for
from tests.live import Running, config, make_agents, start_agents

pytestmark = pytest.mark.integration

ONE_OF_EACH = dict.fromkeys(
    ("malformed", "oversize", "shape", "nonfinite", "stale", "duplicate"), 1
)  # one bad update of each kind


def test_rounds_complete_and_the_final_global_is_retained(
    broker, tmp_path, runtimes, mqtt_client_factory
) -> None:
    agents = make_agents("e2e", 3, tmp_path)
    start_agents(broker, agents, runtimes)
    with Running(config(broker.address, "e2e", tmp_path, start_clients=3)) as run:
        run.thread.join(60)
        assert run.result.get("code") == 0, run.result
    records = history.read(tmp_path / "history.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["clients"] == 3 for r in records)
    assert records[-1]["accuracy"] > 0.5
    assert 0 < records[0]["uplink_bytes"] < 0.3 * records[0]["float32_bytes"]
    assert all(agent.last_trained == 2 for agent in agents)
    # whoever connects now gets the final model, retained
    received: list[bytes] = []
    client = mqtt_client_factory("late-reader")
    client.on_message = lambda c, u, m: received.append(m.payload)
    client.subscribe(Topics("e2e").global_model, qos=1)
    wait_for(lambda: bool(received), 5, "retained global")
    task = Task.from_wire(unpack(_retained(mqtt_client_factory, Topics("e2e").task)))
    final = Global.from_wire(unpack(received[0]), task.layout)
    assert final.final and final.round == 3


def _retained(factory, topic: str) -> bytes:
    got: list[bytes] = []
    client = factory(f"reader-{time.monotonic_ns()}")
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.subscribe(topic, qos=1)
    wait_for(lambda: bool(got), 5, f"retained {topic}")
    return got[0]


def test_an_agent_joining_late_trains_from_the_retained_global(broker, tmp_path, runtimes) -> None:
    early, late = make_agents("late", 2, tmp_path)
    start_agents(broker, [early], runtimes)
    cfg = config(broker.address, "late", tmp_path, rounds=1, min_clients=2, start_clients=1)
    with Running(cfg) as run:
        wait_for(lambda: early.last_trained == 1, 30, "the early agent's update")
        state = run.aggregator.round
        assert state is not None
        wait_for(lambda: state.count == 1, 10, "the aggregator to fold the early update")
        start_agents(broker, [late], runtimes)  # connects after round 1 opened
        run.thread.join(60)
        assert run.result.get("code") == 0, run.result
    assert late.last_trained == 1
    assert history.read(tmp_path / "history.jsonl")[0]["clients"] == 2


def test_an_aggregator_killed_between_rounds_resumes_at_the_right_round(
    broker, tmp_path, runtimes
) -> None:
    agents = make_agents("resume", 2, tmp_path)
    start_agents(broker, agents, runtimes)
    state, hist = tmp_path / "agg", tmp_path / "history.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "aggregator.cli",
        "--broker",
        broker.address,
        "--federation",
        "resume",
        "--dataset",
        "digits",
        "--model",
        "mlp:32",
        "--rounds",
        "4",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--start-clients",
        "2",
        "--state-dir",
        str(state),
        "--history",
        str(hist),
        "--log-level",
        "WARNING",
    ]
    first = subprocess.Popen(cmd)
    try:
        wait_for(lambda: len(history.read(hist)) >= 2, 60, "two closed rounds")
        first.kill()  # SIGKILL: no chance to clean up
        first.wait(10)
        done = len(history.read(hist))
        second = subprocess.run(cmd, timeout=120)
        assert second.returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
    rounds = [r["round"] for r in history.read(hist)]
    assert rounds == list(range(1, 5)), rounds  # each round once, resumed at done + 1
    assert done >= 2
    assert all(agent.last_trained == 4 for agent in agents)


def test_bad_updates_are_rejected_by_reason_and_the_round_completes(
    broker, tmp_path, runtimes, mqtt_client_factory
) -> None:
    fed = "bad"
    topics = Topics(fed)
    agents = make_agents(fed, 2, tmp_path)
    cfg = config(
        broker.address,
        fed,
        tmp_path,
        rounds=1,
        min_clients=2,
        target_clients=2,
        codec="float32",
        max_update_bytes=64 * 1024,
    )
    with Running(cfg) as run:
        wait_for(lambda: run.aggregator.round is not None, 15, "round 1 to open")
        state = run.aggregator.round
        attacker = mqtt_client_factory("mallory")

        def send(client: str, payload: bytes) -> None:
            attacker.publish(topics.update(client), payload, qos=1).wait_for_publish(5)

        # a genuine update to reuse: train one agent offline on the real global
        global_payload = _retained(mqtt_client_factory, topics.global_model)
        agents[0].on_task(_retained(mqtt_client_factory, topics.task))
        job = agents[0].on_global(global_payload)
        assert job is not None
        genuine = unpack(agents[0].train(job).update)

        def variant(**changes: object) -> bytes:
            return pack({**genuine, **changes})

        nan_delta = dict(genuine["delta"])
        nan_delta["data"] = np.full(len(nan_delta["data"]) // 4, np.nan, "<f4").tobytes()
        wrong_shape = dict(genuine["delta"])
        wrong_shape["n"] += 1  # a delta for another layout
        send("dev-0", b"\x92not msgpack")
        send("dev-0", b"\x00" * (70 * 1024))
        send("dev-0", variant(delta=wrong_shape))
        send("dev-0", variant(delta=nan_delta))
        send("dev-0", variant(round=0))
        send("dev-0", pack(genuine))  # accepted
        send("dev-0", pack(genuine))  # duplicate
        wait_for(lambda: sum(state.rejected.values()) == 6, 10, "six rejections")
        assert dict(state.rejected) == ONE_OF_EACH
        assert state.count == 1
        agents[0].committed(1, job.global_model.opened)  # the genuine update stands for dev-0
        start_agents(broker, agents, runtimes)
        run.thread.join(60)
        assert run.result.get("code") == 0, run.result
    record = history.read(tmp_path / "history.jsonl")[0]
    assert record["clients"] == 2
    assert record["rejected"] == ONE_OF_EACH
    assert Update.from_wire(genuine).num_examples == agents[0].num_examples


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["extend", "rerun"])
def test_a_round_short_of_quorum_is_extended_or_rerun_never_closed_short(
    broker, tmp_path, runtimes, policy: str
) -> None:
    fed = f"short-{policy}"
    agents = make_agents(fed, 2, tmp_path)
    cfg = config(
        broker.address,
        fed,
        tmp_path,
        rounds=1,
        min_clients=2,
        target_clients=2,
        round_timeout_s=1.0,
        short_round=policy,
    )
    with Running(cfg) as run:
        start_agents(broker, agents[:1], runtimes)
        wait_for(lambda: run.aggregator.round is not None, 15, "round 1 open")
        first = run.aggregator.round
        wait_for(lambda: first.count == 1, 15, "dev-0's update")
        time.sleep(2.5)  # two deadlines pass with one update of the two required
        assert not history.read(tmp_path / "history.jsonl")  # never closed short
        state = run.aggregator.round
        assert state is not None and state.round == 1
        if policy == "extend":
            assert state is first and state.extensions >= 2 and state.count == 1
        else:  # a new attempt: dev-0 trains it again, its first update dropped
            assert state.opened_ms != first.opened_ms
            wait_for(lambda: agents[0].last_opened == run.aggregator.round.opened_ms, 15, "retrain")
        start_agents(broker, agents[1:], runtimes)
        run.thread.join(30)
        assert run.result.get("code") == 0, run.result
    record = history.read(tmp_path / "history.jsonl")[0]
    assert record["contributors"] == ["dev-0", "dev-1"]
