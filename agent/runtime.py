"""Hosts one or many agents in one process: one network loop, one training thread.

A device runs one agent; the fleet emulator runs hundreds per process. Each agent has its
own MQTT session (its own client id, will and status), so the broker sees a real fleet.

Sessions are persistent and updates go out at QoS 1. The task and global model are
subscribed at QoS 0 on purpose: they are retained, so every (re)connect's subscription
brings the latest one, and the broker keeps no backlog of superseded models for a device that
was away. An update made while offline waits in the agent's outbox (see agent.core) and goes
out when the retained global shows its round is still open.

Eligibility (``agent.eligibility``): before each training job the device's conditions are
read; an agent that declines publishes ``status: declined`` with the reasons, keeps the job,
and is checked again every ``recheck_s`` (``tick``) while that round attempt is current, so
a device that cooled down still contributes. Stopping: no new jobs, a running training is
abandoned at its next SGD step (nothing of it is on disk yet, so nothing is lost but the
work), then ``offline`` is published and the sessions disconnect.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from agent.core import AgentCore, TrainJob
from agent.eligibility import Conditions, check, read_device
from fedge.credentials import NO_AUTH, MqttAuth
from fedge.errors import FedgeError, TrainingStopped
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session, Will
from fedge.protocol import Kind, Topics
from fedge.wire import Status, encode

log = logging.getLogger(__name__)


@dataclass
class Declined:
    """An agent that said no: why, the job it keeps for later (if any), when to ask again."""

    reasons: list[str]
    job: TrainJob | None
    next_check: float


class AgentRuntime:
    def __init__(
        self,
        broker: BrokerAddress,
        agents: Sequence[AgentCore],
        *,
        keepalive: int = 30,
        train_threads: int = 1,
        auth: Mapping[str, MqttAuth] | None = None,
        conditions: Conditions | None = None,
        sysfs_root: str = "/",
        recheck_s: float = 30.0,
    ) -> None:
        self.broker = broker
        self.agents = list(agents)
        self.keepalive = keepalive
        self.auth = dict(auth or {})  # per client id: username, password, TLS files
        self.loop = NetworkLoop("agents-mqtt")
        self.trainer = ThreadPoolExecutor(
            max_workers=train_threads, thread_name_prefix="agent-train"
        )
        self.sessions: dict[str, Session] = {}
        self.updates_sent = 0
        self._lock = threading.Lock()
        self._agent_locks = {agent.client_id: threading.Lock() for agent in self.agents}
        self._sending: set[str] = set()  # agents whose update awaits the broker's ack
        self.conditions = conditions or Conditions()
        self.sysfs_root = sysfs_root
        self.recheck_s = recheck_s
        self.declined: dict[str, Declined] = {}
        self._stopping = threading.Event()
        self._active = 0  # training jobs running now
        self._idle = threading.Condition(self._lock)

    def start(self) -> None:
        self.loop.start()
        for agent in self.agents:
            self.sessions[agent.client_id] = self.loop.add(self._session_for(agent))

    def stop(self, timeout: float = 3.0, training_grace: float = 10.0) -> bool:
        """Take no new job, abandon training at its next step, say offline (retained), then
        disconnect cleanly. Bounded even if the broker is gone. False when a training step
        did not end within ``training_grace`` s (the caller should not wait for it)."""
        self._stopping.set()
        self.trainer.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            idle = self._idle.wait_for(lambda: self._active == 0, training_grace)
        pending = [self._publish_status(agent, "offline", "stopped") for agent in self.agents]
        deadline = time.monotonic() + timeout
        for future in pending:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # not acknowledged in time: the broker's will says offline
                pass
        self.loop.stop()
        return idle

    def alive(self, max_silence: float = 30.0) -> bool:
        """What the watchdog asks: the network loop runs and is not wedged."""
        return self.loop.healthy(max_silence)

    def tick(self, now: float | None = None) -> None:
        """Ask declined agents again once their recheck is due (call about once a second)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [cid for cid, d in self.declined.items() if d.next_check <= now]
            for cid in due:
                self.declined[cid].next_check = now + self.recheck_s
        for agent in (a for a in self.agents if a.client_id in due):
            self._submit(self._recheck, agent)

    def summary(self) -> str:
        """One line for ``systemctl status``: connection, last round, declines."""
        agent = self.agents[0]
        session = self.sessions.get(agent.client_id)
        link = "connected" if session is not None and session.connected else "connecting"
        more = f" (+{len(self.agents) - 1} agents)" if len(self.agents) > 1 else ""
        text = f"{agent.client_id}{more}: {link} to {self.broker}, last round {agent.last_trained}"
        declined = self.declined.get(agent.client_id)
        return text + (f"; declined: {'; '.join(declined.reasons)}" if declined else "")

    def wait_connected(self, timeout: float) -> bool:
        return all(session.wait_connected(timeout) for session in self.sessions.values())

    def _session_for(self, agent: AgentCore) -> Session:
        topics = Topics(agent.federation)
        will = Status(agent.federation, agent.client_id, "offline", detail="connection lost")
        return Session(
            agent.client_id,
            self.broker,
            subscriptions=[(topics.task, 0), (topics.global_model, 0)],
            on_message=functools.partial(self._on_message, agent),
            **self.auth.get(agent.client_id, NO_AUTH).session_args(),
            on_connect=functools.partial(self._say_online, agent),
            will=Will(topics.status(agent.client_id), encode(will), qos=1, retain=True),
            keepalive=self.keepalive,
            clean_session=False,
        )

    def _say_online(self, agent: AgentCore) -> None:
        self._publish_status(agent, "online")

    def _publish_status(self, agent: AgentCore, state: str, detail: str = "") -> Future[None]:
        """``online`` means "as things are": error if it cannot train, declined if it said no."""
        declined = self.declined.get(agent.client_id)
        if agent.problem and state == "online":
            state, detail = "error", agent.problem
        elif declined is not None and state == "online":
            state, detail = "declined", "; ".join(declined.reasons)
        if self._stopping.is_set() and state != "offline":
            skipped: Future[None] = Future()  # a reconnect while stopping says nothing
            skipped.set_result(None)
            return skipped
        status = Status(
            agent.federation,
            agent.client_id,
            state,
            agent.last_trained,
            detail,
            {
                "num_examples": agent.num_examples,
                "n_features": int(agent.x.shape[1]),
                "backend": agent.task.model_spec.get("framework", "numpy")
                if agent.task
                else "numpy",
            },
        )
        session = self.sessions.get(agent.client_id)
        if session is None:
            failed: Future[None] = Future()
            failed.set_exception(FedgeError("no session"))
            return failed
        return session.publish(
            Topics(agent.federation).status(agent.client_id), encode(status), qos=1, retain=True
        )

    def _on_message(self, agent: AgentCore, message: Incoming) -> None:
        parsed = Topics(agent.federation).parse(message.topic)
        if parsed is None or not message.payload:
            return
        kind = parsed[0]
        if kind is Kind.TASK:
            had_problem = agent.problem
            agent.on_task(message.payload)
            if agent.problem != had_problem:
                self._publish_status(agent, "online")
            pending = agent.take_pending_global()
            if pending is not None:
                self._consider(agent, pending)
        elif kind is Kind.GLOBAL:
            self._consider(agent, message.payload)

    def _consider(self, agent: AgentCore, payload: bytes) -> None:
        with self._agent_locks[agent.client_id]:
            job = agent.on_global(payload)
        if job is not None:
            self._submit(self._train, agent, job)
        else:
            self._send(agent)  # an update trained for this attempt may still wait

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        if self._stopping.is_set():
            return
        try:
            self.trainer.submit(self._counted, fn, *args)
        except RuntimeError:  # shut down between the check and the submit: stopping
            pass

    def _counted(self, fn: Callable[..., None], *args: object) -> None:
        """Run a trainer job, counted, so ``stop`` knows when none is running."""
        with self._lock:
            self._active += 1
        try:
            fn(*args)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _ineligible(self) -> list[str]:
        if not self.conditions.any:
            return []
        return check(self.conditions, read_device(self.sysfs_root))

    def _recheck(self, agent: AgentCore) -> None:
        """A declined agent's periodic check: train the kept job if it is still current."""
        declined = self.declined.get(agent.client_id)
        if declined is None:
            return
        if declined.job is not None and agent.is_current(declined.job):
            self._train(agent, declined.job)
            return
        reasons = self._ineligible()  # no job (any more): just keep the status truthful
        if reasons:
            self._decline(agent, None, reasons)
        else:
            self._eligible(agent)

    def _decline(self, agent: AgentCore, job: TrainJob | None, reasons: list[str]) -> None:
        """Keep the job for a recheck; say so on status whenever the reasons' text changed
        (fresh numbers), in the log only for a new job or another kind of reason."""
        with self._lock:
            before = self.declined.get(agent.client_id)
            self.declined[agent.client_id] = Declined(
                reasons, job, time.monotonic() + self.recheck_s
            )
        if before is not None and before.reasons == reasons:
            return
        kinds = [reason.split()[0] for reason in reasons]  # "temperature", "load", ...
        other_kinds = before is None or kinds != [r.split()[0] for r in before.reasons]
        new_job = before is None or before.job is not job
        if job is not None and (new_job or other_kinds):
            log.info(
                "%s: declines round %d for now: %s",
                agent.client_id,
                job.global_model.round,
                "; ".join(reasons),
            )
        self._publish_status(agent, "online")  # "as things are": declined, with reasons

    def _eligible(self, agent: AgentCore) -> None:
        with self._lock:
            was = self.declined.pop(agent.client_id, None)
        if was is not None:
            log.info("%s: eligible again", agent.client_id)
            self._publish_status(agent, "online")

    def _train(self, agent: AgentCore, job: TrainJob) -> None:
        if self._stopping.is_set() or not agent.is_current(job):
            return  # stopping, or a newer global came in while this job waited
        reasons = self._ineligible()
        if reasons:
            self._decline(agent, job, reasons)
            return
        self._eligible(agent)
        task = job.task
        log.info(
            "%s: training round %d (%d examples, %d epochs)",
            agent.client_id,
            job.global_model.round,
            agent.num_examples,
            task.hyper.epochs,
        )
        try:
            result = agent.train(job, should_stop=self._stopping.is_set)
        except TrainingStopped:
            log.info(
                "%s: training of round %d abandoned: stopping (nothing of it was saved; "
                "the round is trained again after a restart if it is still open)",
                agent.client_id,
                job.global_model.round,
            )
            return
        except Exception as exc:
            log.error(
                "%s: training round %d failed: %s", agent.client_id, job.global_model.round, exc
            )
            return
        with self._agent_locks[agent.client_id]:
            if not agent.is_current(job):
                return  # overtaken while training: the update would be stale
            agent.stage(result)  # on disk before it leaves: survives a lost link or a restart
        topics = Topics(agent.federation)
        self.sessions[agent.client_id].publish(
            topics.metrics(agent.client_id), result.metrics, qos=0
        )
        log.info(
            "%s: round %d update ready (%d bytes, loss %.4f)",
            agent.client_id,
            result.round,
            len(result.update),
            result.values["loss"],
        )
        self._send(agent)

    def _send(self, agent: AgentCore) -> None:
        """Publish the agent's waiting update unless it is already on its way."""
        with self._agent_locks[agent.client_id]:
            result = agent.pending
            if result is None or agent.client_id in self._sending:
                return
            session = self.sessions[agent.client_id]
            if not session.connected:
                log.info(
                    "%s: offline; the update for round %d waits", agent.client_id, result.round
                )
                return
            self._sending.add(agent.client_id)
        topic = Topics(agent.federation).update(agent.client_id)
        future = session.publish(topic, result.update, qos=1)

        def acknowledged(done: Future[None]) -> None:
            failed = done.exception() is not None  # then it stays in the outbox for the next global
            with self._agent_locks[agent.client_id]:
                self._sending.discard(agent.client_id)
                if not failed:
                    agent.committed(result.round, result.opened, result.residual)
                newer = agent.pending is not None and agent.pending is not result
            if not failed:
                with self._lock:
                    self.updates_sent += 1
            if newer:  # staged while this one was on its way (a newer round): its turn now
                self._send(agent)

        future.add_done_callback(acknowledged)
