"""Links cut between agents and a real Mosquitto: drop, delay, half-open.

Each agent runs in its own runtime behind its own fault proxy, so a fault hits some agents and
not others; the aggregator talks to the broker directly. Every test asserts on the round
record the aggregator hands to ``on_round``, and on what the broker acknowledged to each agent
(an agent commits a round only on the broker's PUBACK): no update acknowledged and lost, none
counted twice, and the round closes by its deadline with the agents that got through.

An update is caught in flight by giving the agent's link a short delay: once the agent has
staged its update (trained, on disk, handed to the session) it sits in the proxy for that long,
and the fault strikes it there.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core import AgentCore
from agent.runtime import AgentRuntime
from aggregator.daemon import Aggregator
from broker import LocalBroker
from fedge.config import AgentConfig, AggregatorConfig, load
from fedge.data import load_dataset, partition
from fedge.errors import ConfigError
from fedge.mqtt import BrokerAddress
from tests.faultproxy import FaultProxy
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

KEEPALIVE = 5  # the smallest keepalive an agent's config allows
IN_FLIGHT = 0.6  # link delay that holds a staged update in the proxy while a fault strikes
HEAVY = 200  # a device with this many times the data trains for about half a second


class Fleet:
    """``n`` agents, each in its own runtime behind its own proxy, and an aggregator thread."""

    def __init__(
        self,
        broker: LocalBroker,
        tmp: Path,
        fed: str,
        n: int,
        *,
        heavy: tuple[int, ...] = (),
        **rules: object,
    ) -> None:
        data = load_dataset("digits", seed=0)
        parts = partition(data.y_train, n, "iid", seed=0)
        reps = [HEAVY if i in heavy else 1 for i in range(n)]
        self.agents = [
            AgentCore(
                f"{fed}-{i}",
                fed,
                np.tile(data.x_train[p], (reps[i], 1)),
                np.tile(data.y_train[p], reps[i]),
                seed=i,
                state_dir=tmp / f"{fed}-{i}",
            )
            for i, p in enumerate(parts)
        ]
        self.proxies = [FaultProxy(broker.host, broker.port) for _ in self.agents]
        self.runtimes = [
            AgentRuntime(BrokerAddress(proxy.host, proxy.port), [agent], keepalive=KEEPALIVE)
            for proxy, agent in zip(self.proxies, self.agents, strict=True)
        ]
        values: dict[str, object] = {
            "broker": broker.address,
            "federation": fed,
            "state_dir": str(tmp / "agg"),
            "dataset": "digits",
            "model": "mlp:32",
            "rounds": 1,
            "epochs": 1,
            "batch_size": 16,
            "lr": 0.1,
            "start_clients": n,  # every agent is online, so expected, when the round opens
            **rules,
        }
        config = load(AggregatorConfig, None, values)
        self.timeout_ms = int(config.round_timeout_s * 1000)
        self.records: list[dict[str, Any]] = []
        self.aggregator = Aggregator(config, on_round=self.records.append)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.aggregator.run, args=(self._stop,), daemon=True)

    def start(self) -> Fleet:
        return self.start_agents().start_aggregator()

    def start_agents(self) -> Fleet:
        for runtime in self.runtimes:
            runtime.start()
        assert all(runtime.wait_connected(10) for runtime in self.runtimes)
        return self

    def start_aggregator(self) -> Fleet:
        self._thread.start()
        wait_for(lambda: self.aggregator.round is not None, 15, "round 1 to open")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        stopping = [  # in parallel: an agent behind a dead link waits out its goodbye
            threading.Thread(target=runtime.stop, kwargs={"timeout": 0.5})
            for runtime in self.runtimes
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(5)
        for proxy in self.proxies:
            proxy.close()

    def contributors(self) -> set[str]:
        state = self.aggregator.round
        return set(state.contributors) if state is not None else set()

    def catch_in_flight(self, i: int, fault: Callable[[FaultProxy], None]) -> None:
        """Strike agent ``i``'s link once its update is staged, before the broker has it."""
        agent = self.agents[i]
        wait_for(lambda: agent.pending is not None, 10, f"{agent.client_id} to stage its update")
        fault(self.proxies[i])
        assert agent.client_id not in self.contributors()

    def record(self, timeout: float) -> dict[str, Any]:
        wait_for(lambda: bool(self.records), timeout, "the round to close")
        return self.records[0]

    def acked(self) -> set[str]:
        """Agents whose update the broker acknowledged (they committed round 1)."""
        return {a.client_id for a in self.agents if a.last_trained == 1}

    def ids(self, *indices: int) -> set[str]:
        return {self.agents[i].client_id for i in indices}

    def reconnects(self, i: int) -> int:
        return self.runtimes[i].sessions[self.agents[i].client_id].connects - 1


@pytest.fixture
def fleet(broker, tmp_path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(fed: str, n: int, **options: Any) -> Fleet:
        made.append(Fleet(broker, tmp_path, fed, n, **options))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def measured(fleet: Fleet, record: dict[str, Any], report: Callable[[str, object], None]) -> int:
    """Round duration in ms (open to close, extensions included); the numbers for the report."""
    counted = set(record["contributors"])
    settle = time.monotonic() + 5  # a PUBACK may still be on its way when the round closes
    while fleet.acked() != counted and time.monotonic() < settle:
        time.sleep(0.02)
    acked = fleet.acked()
    took = int(record["ts"] - record["opened"])
    for name, value in (
        ("acked", len(acked)),
        ("counted", record["clients"]),
        ("mismatches", len(acked ^ counted)),
        ("round_ms", took),
    ):
        report(name, value)
    assert acked == counted, f"acknowledged {sorted(acked)} but counted {sorted(counted)}"
    assert record["clients"] == len(counted)  # nobody counted twice
    return took


@pytest.mark.timeout(40)
def test_agents_cut_mid_round_reconnect_and_their_waiting_update_counts_once(
    fleet, record_property
) -> None:
    f = fleet("cut", 4, heavy=(2,), min_clients=4, round_timeout_s=20.0)
    f.proxies[0].delay(IN_FLIGHT)
    f.proxies[1].delay(IN_FLIGHT)
    f.start()
    # agent 2: cut while it trains (its link has no delay: it starts as the round opens)
    heavy, session = f.agents[2], f.runtimes[2].sessions["cut-2"]
    wait_for(lambda: heavy.current[0] == 1, 10, "agent 2 to start training")
    f.proxies[2].drop()
    assert heavy.pending is None, "agent 2 trained before the cut; the test lost its point"
    # agent 0: cut while its update is on the wire, before the broker has it
    f.catch_in_flight(0, FaultProxy.drop)
    # agent 1: cut after the broker took its update (folded), before the PUBACK came back
    wait_for(lambda: f.ids(1) <= f.contributors(), 10, "agent 1's update folded")
    f.proxies[1].drop()
    assert f.agents[1].pending is not None, "the PUBACK beat the cut; the test lost its point"
    # agent 2's update waits in its outbox, never handed to a session that is down
    wait_for(lambda: heavy.pending is not None, 10, "agent 2 to finish training offline")
    assert not session.connected and f.contributors() == f.ids(1, 3)
    time.sleep(1.0)  # they retry into dead links, backing off
    for i in (0, 1, 2):
        f.proxies[i].restore()
    record = f.record(20)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1, 2, 3)
    assert set(record["rejected"]) <= {"duplicate"}  # agent 1's resend, if the round was open
    assert record["extensions"] == 0 and took < f.timeout_ms
    assert all(f.reconnects(i) >= 1 and f.proxies[i].refused >= 1 for i in (0, 1, 2))


@pytest.mark.timeout(30)
def test_agents_cut_for_good_leave_the_round_to_those_that_got_through(
    fleet, record_property
) -> None:
    f = fleet("gone", 4, min_clients=2, round_timeout_s=4.0)
    f.proxies[2].delay(IN_FLIGHT)
    f.proxies[3].delay(IN_FLIGHT)
    f.start()
    f.catch_in_flight(2, FaultProxy.drop)
    f.catch_in_flight(3, FaultProxy.drop)
    record = f.record(10)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1)
    assert record["extensions"] == 0 and took <= f.timeout_ms + 500


@pytest.mark.timeout(30)
def test_a_round_short_of_quorum_is_extended_until_a_cut_agent_returns(
    fleet, record_property
) -> None:
    f = fleet("quorum", 3, min_clients=2, round_timeout_s=2.0)
    f.proxies[1].delay(IN_FLIGHT)
    f.proxies[2].delay(IN_FLIGHT)
    f.start()
    f.catch_in_flight(1, FaultProxy.drop)
    f.catch_in_flight(2, FaultProxy.drop)
    state = f.aggregator.round
    assert state is not None
    wait_for(lambda: state.extensions >= 1, 5, "the deadline to pass without quorum")
    assert not f.records and state.count == 1  # never closed with fewer than min_clients
    f.proxies[1].restore()
    record = f.record(15)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1)
    assert record["extensions"] >= 1 and took > f.timeout_ms
    assert record["seconds"] * 1000 >= took - 200  # the whole round, not since its extension


@pytest.mark.timeout(30)
def test_a_slow_link_still_gets_its_update_counted_before_the_deadline(
    fleet, record_property
) -> None:
    seconds = 1.0  # each way: a round trip of 2 s
    f = fleet("slow", 3, min_clients=2, round_timeout_s=10.0).start_agents()
    f.proxies[2].delay(seconds)
    f.start_aggregator()
    record = f.record(15)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1, 2)
    assert record["extensions"] == 0 and 2 * seconds * 1000 < took < f.timeout_ms
    assert f.proxies[2].bytes_up > 0 and f.reconnects(2) == 0


@pytest.mark.timeout(40)
def test_a_half_open_link_is_found_by_keepalive_and_the_agent_comes_back(
    fleet, record_property
) -> None:
    f = fleet("halfopen", 3, min_clients=3, round_timeout_s=25.0)
    f.proxies[0].delay(IN_FLIGHT)
    f.start()
    f.catch_in_flight(0, FaultProxy.half_open)
    struck = time.monotonic()
    f.proxies[0].restore()  # the forgotten flow stays dead; only a new connection passes
    wait_for(lambda: f.reconnects(0) >= 1, 2 * KEEPALIVE + 3, "agent 0 to notice and reconnect")
    noticed = time.monotonic() - struck
    record_property("noticed_s", round(noticed, 2))
    assert KEEPALIVE - 1 < noticed < 2 * KEEPALIVE + 3
    record = f.record(10)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1, 2)
    assert record["extensions"] == 0 and took < f.timeout_ms
    assert f.proxies[0].blackholed > 0  # the update (and the pings) went into the void


@pytest.mark.timeout(30)
def test_a_half_open_agent_that_never_returns_holds_the_round_only_to_its_deadline(
    fleet, record_property
) -> None:
    f = fleet("silent", 3, min_clients=2, round_timeout_s=3.0)  # < the broker's 7.5 s
    f.proxies[2].delay(IN_FLIGHT)
    f.start()
    f.catch_in_flight(2, FaultProxy.half_open)
    assert f.ids(2) <= f.aggregator.online  # the broker has not noticed: it is still expected
    record = f.record(10)
    took = measured(f, record, record_property)
    assert set(record["contributors"]) == f.ids(0, 1)
    assert record["extensions"] == 0
    assert f.timeout_ms - 200 <= took <= f.timeout_ms + 1000  # it waited, and not longer


@pytest.mark.timeout(30)
def test_an_update_in_flight_when_its_round_closed_does_not_hold_back_the_next_one(
    fleet, record_property
) -> None:
    """Regression: the runtime sent one update at a time and, when the broker acknowledged
    a late one, did not send the update staged meanwhile, so it waited for the next global."""
    f = fleet("late", 2, rounds=2, min_clients=1, round_timeout_s=2.0).start_agents()
    f.proxies[1].delay(1.5)  # congested: agent 1's round-1 update lands after the deadline
    f.start_aggregator()
    link = f.proxies[1]
    wait_for(lambda: f.agents[1].pending is not None, 10, "agent 1's round-1 update")
    size = len(f.agents[1].pending.update)  # type: ignore[union-attr]
    wait_for(lambda: link.received_up - link.bytes_up >= size, 5, "the update held in the link")
    link.restore()  # the congestion clears; what is already queued still arrives late
    wait_for(lambda: bool(f.records), 10, "round 1 to close at its deadline")
    assert f.records[0]["contributors"] == sorted(f.ids(0))
    wait_for(lambda: len(f.records) == 2, 10, "round 2 to close")
    second = f.records[1]
    took = int(second["ts"] - second["opened"])
    for name, value in (("counted", second["clients"]), ("round_ms", took)):
        record_property(name, value)
    assert second["contributors"] == sorted(f.ids(0, 1)) and took < f.timeout_ms
    assert second["rejected_total"].get("stale") == 1  # the late round-1 update, refused
    wait_for(lambda: f.agents[1].last_trained == 2, 5, "agent 1's round-2 update acknowledged")


def test_an_agent_keepalive_is_one_the_projects_broker_accepts(broker) -> None:
    """Regression: agents could be configured up to 3600 s, but Mosquitto >= 2.0.12 refuses an
    MQTT 3.1.1 client whose keepalive exceeds the broker's max_keepalive (300 in our config)
    with "identifier rejected", so such an agent would retry forever and never connect."""
    rendered = (broker.workdir / "mosquitto.conf").read_text()
    limit = int(re.findall(r"^max_keepalive (\d+)$", rendered, re.M)[0])
    device = {"client_id": "dev", "data": "data.npz"}
    assert load(AgentConfig, None, {**device, "keepalive": limit}).keepalive == limit
    with pytest.raises(ConfigError, match="keepalive"):
        load(AgentConfig, None, {**device, "keepalive": limit + 1})
    assert load(AgentConfig, None, {**device, "keepalive": KEEPALIVE}).keepalive == KEEPALIVE
