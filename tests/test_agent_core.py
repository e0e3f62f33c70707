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


EF_TASK = encode(
    Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "topk:3+int8", error_feedback=True)
)


def trained(a: AgentCore, round_number: int, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    """(decoded delta as sent, residual kept) for one round, acknowledged."""
    job = a.on_global(glob(round_number, round_number * 100, **kw))
    assert job is not None
    result = a.train(job)
    update = Update.from_wire(unpack(result.update))
    sent = update.decode_delta(LAYOUT, {"topk:3+int8"})
    a.committed(result.round, result.opened, result.residual)
    return np.concatenate([v.ravel() for v in sent.values()]), result.residual


def test_error_feedback_keeps_what_topk_dropped_and_it_survives_a_restart(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(EF_TASK)
    sent, residual = trained(a, 1)
    assert np.count_nonzero(sent) <= 3 and residual.size == 15
    assert np.count_nonzero(residual) >= 12  # the 12 dropped values, plus int8 rounding
    restarted = agent(tmp_path)
    np.testing.assert_array_equal(restarted.residual, residual)
    restarted.on_task(EF_TASK)
    job = restarted.on_global(glob(2, 200))
    assert job is not None
    again = restarted.train(job)
    # the next delta carries the residual: what is sent plus what is kept adds up to both
    fresh = agent()  # same data and seed, no memory
    fresh.on_task(encode(Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "float32")))
    plain = fresh.train(fresh.on_global(glob(2, 200)))  # type: ignore[arg-type]
    want = Update.from_wire(unpack(plain.update)).decode_delta(LAYOUT, {"float32"})
    want_flat = np.concatenate([v.ravel() for v in want.values()])
    got = Update.from_wire(unpack(again.update)).decode_delta(LAYOUT, {"topk:3+int8"})
    got_flat = np.concatenate([v.ravel() for v in got.values()])
    np.testing.assert_allclose(got_flat + again.residual, want_flat + residual, atol=1e-6)


def test_an_unacknowledged_update_leaves_the_saved_residual_alone(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(EF_TASK)
    _, residual = trained(a, 1)
    job = a.on_global(glob(2, 200))
    assert job is not None
    a.train(job)  # never acknowledged: the broker did not take it
    np.testing.assert_array_equal(agent(tmp_path).residual, residual)


def test_a_residual_from_another_model_is_not_applied(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(EF_TASK)
    trained(a, 1)
    other = model_ref("logreg-v2", SPEC, LAYOUT)
    b = agent(tmp_path)
    b.on_task(
        encode(Task("fed", "agg", other, SPEC, LAYOUT, Hyper(1, 8, 0.1), "topk:3+int8", True))
    )
    job = b.on_global(encode(Global("fed", 2, "agg", other, MODEL.get_weights(), 0, opened=200)))
    assert job is not None
    assert b._residual_for(job.task, 15) is None


def test_without_error_feedback_nothing_is_kept(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(encode(Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "topk:3+int8")))
    job = a.on_global(glob(1, 100))
    assert job is not None
    result = a.train(job)
    assert result.residual.size == 0
    a.committed(result.round, result.opened, result.residual)
    assert agent(tmp_path).residual.size == 0


def test_a_float16_global_is_trained_from_as_received() -> None:
    a = agent()
    a.on_task(TASK)
    payload = glob(1, 100, weights_codec="float16")
    job = a.on_global(payload)
    assert job is not None
    received = job.global_model.weights
    assert all(
        np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in received.values()
    )
    update = Update.from_wire(unpack(a.train(job).update))
    assert update.base == Global.from_wire(unpack(payload), LAYOUT).weights_hash


def test_a_staged_update_survives_a_restart_and_is_resent_not_retrained(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(TASK)
    job = a.on_global(glob(3, 300))
    assert job is not None
    result = a.train(job)
    a.stage(result)  # saved, then the device lost power before the broker's ack
    b = agent(tmp_path)
    b.on_task(TASK)
    assert b.pending is not None and b.pending.update == result.update
    assert b.on_global(glob(3, 300)) is None  # same attempt: send the waiting update, no training
    assert b.pending is not None
    b.committed(3, 300, b.pending.residual)
    assert b.pending is None and agent(tmp_path).pending is None
    assert b.on_global(glob(3, 300)) is None  # acknowledged: never sent twice


def test_a_waiting_update_is_dropped_once_the_aggregator_moved_on(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.on_task(TASK)
    job = a.on_global(glob(3, 300))
    assert job is not None
    a.stage(a.train(job))
    b = agent(tmp_path)
    b.on_task(TASK)
    assert b.on_global(glob(4, 400)) is not None  # a newer round: train it instead
    assert b.pending is None and agent(tmp_path).pending is None
    c = agent(tmp_path)
    c.on_task(TASK)
    assert c.on_global(glob(3, 301)) is not None  # a rerun of the round is a new attempt too


def test_a_damaged_outbox_entry_is_ignored(tmp_path: Path) -> None:
    from fedge.statefile import write_msgpack

    write_msgpack(tmp_path / "agent.msgpack", {"pending": {"round": "x", "update": 5}})
    a = agent(tmp_path)
    a.on_task(TASK)
    assert a.pending is None and a.on_global(glob(1, 1)) is not None
