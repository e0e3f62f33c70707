"""Hosts one or many agents in one process: one network loop, one training thread.

A device runs one agent; the fleet emulator runs hundreds per process. Each agent has its
own MQTT session (its own client id, will and status), so the broker sees a real fleet.

Sessions are persistent and updates go out at QoS 1. The task and global model are
subscribed at QoS 0 on purpose: they are retained, so every (re)connect's subscription
brings the latest one, and the broker keeps no backlog of superseded models for a device that
was away. An update made while offline waits in the agent's outbox (see agent.core) and goes
out when the retained global shows its round is still open.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from agent.core import AgentCore, TrainJob
from fedge.credentials import NO_AUTH, MqttAuth
from fedge.errors import FedgeError
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session, Will
from fedge.protocol import Kind, Topics
from fedge.wire import Status, encode

log = logging.getLogger(__name__)


class AgentRuntime:
    def __init__(
        self,
        broker: BrokerAddress,
        agents: Sequence[AgentCore],
        *,
        keepalive: int = 30,
        train_threads: int = 1,
        auth: Mapping[str, MqttAuth] | None = None,
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

    def start(self) -> None:
        self.loop.start()
        for agent in self.agents:
            self.sessions[agent.client_id] = self.loop.add(self._session_for(agent))

    def stop(self, timeout: float = 3.0) -> None:
        """Say offline (retained), then disconnect cleanly; bounded even if the broker is gone."""
        self.trainer.shutdown(wait=False, cancel_futures=True)
        pending = [self._publish_status(agent, "offline") for agent in self.agents]
        deadline = time.monotonic() + timeout
        for future in pending:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # not acknowledged in time: the broker's will says offline
                pass
        self.loop.stop()

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
        if agent.problem and state == "online":
            state, detail = "error", agent.problem
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
            self.trainer.submit(self._train, agent, job)
        else:
            self._send(agent)  # an update trained for this attempt may still wait

    def _train(self, agent: AgentCore, job: TrainJob) -> None:
        if not agent.is_current(job):
            return  # a newer global came in while this job waited
        try:
            result = agent.train(job)
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
