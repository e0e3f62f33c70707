"""The agent's decisions without a broker: when to train, when not, what survives a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.core import AgentCore
from fedge.models import build_model
from fedge.params import spec_of
from fedge.wire import Global, Hyper, Task, Update, encode, model_ref, unpack

MODEL = build_model("logreg", 4, 3, seed=0)
SPEC = MODEL.describe()
LAYOUT = spec_of(MODEL.get_weights())
REF = model_ref("logreg", SPEC, LAYOUT)
TASK = encode(Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "int8"))


def glob(round_number: int, opened: int, **kw: object) -> bytes:
    return encode(
        Global("fed", round_number, "agg", REF, MODEL.get_weights(), 0, opened=opened, **kw)
    )  # type: ignore[arg-type]


def agent(tmp: Path | None = None, client: str = "dev-1") -> AgentCore:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    return AgentCore(client, "fed", x, rng.integers(0, 3, 40), state_dir=tmp)


def test_trains_once_per_attempt_and_again_when_the_round_is_reopened(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(TASK)
    job = a.on_global(glob(1, 100))
    assert job is not None
    result = a.train(job)
    update = Update.from_wire(unpack(result.update))
    assert update.round == 1 and update.num_examples == 40
    assert update.decode_delta(LAYOUT, {"int8"})["dense0.w"].shape == (4, 3)
    a.committed(result.round, result.opened)
    assert a.on_global(glob(1, 100)) is None  # the same attempt, e.g. a deadline extension
    assert a.on_global(glob(1, 200)) is not None  # reopened after an aggregator restart
    assert a.on_global(glob(2, 300)) is not None


def test_acknowledged_rounds_survive_an_agent_restart(tmp_path: Path) -> None:
    first = agent(tmp_path)
    first.committed(5, 500)
    second = agent(tmp_path)
    second.on_task(TASK)
    assert second.on_global(glob(5, 500)) is None
    assert second.on_global(glob(6, 600)) is not None


def test_a_federation_started_afresh_is_trained_from_round_one(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.committed(20, 2000)
    a.on_task(TASK)
    assert a.on_global(glob(1, 50)) is not None  # older clock, lower round: still new


def test_final_models_and_unsampled_rounds_are_not_trained() -> None:
    a = agent()
    a.on_task(TASK)
    assert a.on_global(glob(3, 1, final=True)) is None
    picks = [agent(client=f"d{i}") for i in range(200)]
    for p in picks:
        p.on_task(TASK)
    trained = sum(p.on_global(glob(4, 1, fraction=0.25)) is not None for p in picks)
    assert 30 < trained < 70


def test_a_global_before_the_task_waits_for_it() -> None:
    a = agent()
    assert a.on_global(glob(1, 1)) is None
    a.on_task(TASK)
    pending = a.take_pending_global()
    assert pending is not None and a.on_global(pending) is not None


def test_a_job_overtaken_by_another_global_is_dropped() -> None:
    a = agent()
    a.on_task(TASK)
    job = a.on_global(glob(1, 1))
    assert job is not None and a.is_current(job)
    a.on_global(glob(2, 2))
    assert not a.is_current(job)


def test_bad_messages_are_counted_and_change_nothing() -> None:
    a = agent()
    a.on_task(b"\x01garbage")
    assert a.task is None and a.rejections["task:malformed"] == 1
    a.on_task(TASK)
    assert a.on_global(b"\xc1") is None and a.rejections["global:malformed"] == 1
    other = model_ref("logreg", {**SPEC, "n_classes": 3}, LAYOUT)
    wrong = encode(
        Global("fed", 1, "agg", other.__class__(other.id, b"\x00" * 32), MODEL.get_weights(), 0)
    )
    assert a.on_global(wrong) is None and a.rejections["global:model"] == 1
    assert a.task is not None and a.on_global(glob(1, 1)) is not None
