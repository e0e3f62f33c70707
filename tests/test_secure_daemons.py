"""The daemons on a secure site: TLS sessions, signed models, forged models refused, real CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.core import AgentCore
from agent.runtime import AgentRuntime
from aggregator.daemon import Aggregator
from broker.site import Site, init_site
from broker.site_broker import SiteBroker
from fedge.config import AgentConfig, AggregatorConfig, load
from fedge.credentials import mqtt_auth
from fedge.errors import ConfigError
from fedge.models import build_model
from fedge.mqtt import BrokerAddress, Incoming, NetworkLoop, Session
from fedge.params import spec_of
from fedge.signing import SigningKey, load_signing_key, load_verify_key, seal
from fedge.wire import Global, Hyper, Task, encode, model_ref
from tests.helpers import run_fleet, wait_for
from tests.secure_helpers import peer

pytestmark = pytest.mark.integration

F = "fedge/lab/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("secure-daemons") / "site"
    init_site(root, "lab", ["dev-a", "dev-b"])
    with SiteBroker(root) as broker:
        yield broker.site


def device_config(site: Site, device: str, **overrides: object) -> AgentConfig:
    path = site.files.device(device) / "agent.toml"
    return load(AgentConfig, path, {"dataset": "breast_cancer", **overrides})


def test_a_session_over_tls_delivers_large_and_bursty_messages_promptly(site: Site) -> None:
    """The shared network loop over TLS: a 3 MiB retained model, a burst, a QoS 1 ack."""
    got: list[Incoming] = []
    loop = NetworkLoop("test-tls").start()
    try:
        auth = mqtt_auth(device_config(site, "dev-a"))
        session = loop.add(
            Session(
                "dev-a",
                BrokerAddress.parse(site.address),
                subscriptions=[(F + "global", 1), (F + "task", 1)],
                on_message=got.append,
                **auth.session_args(),
            )
        )
        assert session.wait_connected(10)
        time.sleep(0.3)
        aggregator = peer(site, "aggregator")
        big = os.urandom(3 * 1024 * 1024)
        aggregator.publish(F + "global", big, retain=True)
        for i in range(50):
            aggregator.client.publish(F + "task", b"burst %d" % i, qos=1)
        wait_for(lambda: len(got) == 51, 5, "a 3 MiB global and 50 small messages over TLS")
        assert got[0].payload == big
        assert session.publish(F + "update/dev-a", b"acknowledged over TLS").result(5) is None
        aggregator.publish(F + "global", b"", retain=True)  # clear the retained junk
        aggregator.close()
    finally:
        loop.stop()


def test_the_aggregator_refuses_secrets_others_can_read_naming_the_key(
    site: Site, tmp_path: Path
) -> None:
    folder = site.files.aggregator
    values = {"dataset": "breast_cancer", "model": "logreg", "state_dir": str(tmp_path / "s")}
    open_key = tmp_path / "signing.key"
    open_key.write_bytes((folder / "signing.key").read_bytes())
    os.chmod(open_key, 0o644)
    with pytest.raises(ConfigError, match="'signing_key'"):
        Aggregator(
            load(
                AggregatorConfig,
                folder / "aggregator.toml",
                {**values, "signing_key": str(open_key)},
            )
        )
    open_password = tmp_path / "password"
    open_password.write_bytes((folder / "password").read_bytes())
    os.chmod(open_password, 0o604)
    with pytest.raises(ConfigError, match="'password_file'"):
        Aggregator(
            load(
                AggregatorConfig,
                folder / "aggregator.toml",
                {**values, "password_file": str(open_password)},
            )
        )


def test_an_agent_refuses_forged_globals_from_a_compromised_broker(
    site: Site, tmp_path: Path
) -> None:
    """Whoever can publish on ``global`` (the broker's operator, a stolen aggregator
    password) but lacks the signing key cannot make a device train on its model."""
    config = device_config(site, "dev-b")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    agent = AgentCore(
        "dev-b", "lab", x, rng.integers(0, 3, 40), verify_key=load_verify_key(config.verify_key)
    )
    runtime = AgentRuntime(
        BrokerAddress.parse(config.broker), [agent], auth={"dev-b": mqtt_auth(config)}
    )
    genuine = load_signing_key(site.files.aggregator / "signing.key")
    forger = SigningKey.generate()
    model = build_model("logreg", 4, 3, seed=0)
    spec, layout = model.describe(), spec_of(model.get_weights())
    ref = model_ref("logreg", spec, layout)
    task = encode(Task("lab", "aggregator", ref, spec, layout, Hyper(1, 8, 0.1), "int8"))

    def glob(round_number: int) -> bytes:
        weights = model.get_weights()
        return encode(Global("lab", round_number, "aggregator", ref, weights, 0, opened=1))

    insider = peer(site, "aggregator")  # holds the broker password, not the signing key
    insider.subscribe(F + "update/+")
    runtime.start()
    try:
        assert runtime.wait_connected(10)
        insider.publish(F + "task", seal(task, genuine), retain=True)
        wait_for(lambda: agent.task is not None, 10, "the signed task")
        flipped = bytearray(seal(glob(2), genuine))
        flipped[-100] ^= 0x01
        for forged in (seal(glob(1), forger), bytes(flipped), glob(3)):
            insider.publish(F + "global", forged, retain=True)
        wait_for(lambda: sum(agent.rejections.values()) == 3, 10, "three refusals")
        assert agent.rejections == {"global:signature": 2, "global:unsigned": 1}
        time.sleep(0.3)
        assert runtime.updates_sent == 0 and insider.received == []  # no training happened
        insider.publish(F + "global", seal(glob(4), genuine), retain=True)
        wait_for(lambda: bool(insider.received), 20, "an update trained on the genuine global")
        assert insider.topics() == [F + "update/dev-b"]
    finally:
        runtime.stop()
        insider.close()


def test_the_real_daemons_run_a_round_from_the_provisioned_folders(
    site: Site, tmp_path: Path
) -> None:
    """fedge-aggregator and fedge-agent with nothing but the site's configs and a copy of a
    device folder: TLS, passwords, ACL and signatures all on."""
    device = tmp_path / "device"
    subprocess.run(["cp", "-rp", str(site.files.device("dev-a")), str(device)], check=True)
    hist = tmp_path / "history.jsonl"
    agg = subprocess.Popen(
        [sys.executable, "-m", "aggregator.cli", "--config"]
        + [str(site.files.aggregator / "aggregator.toml"), "--dataset", "breast_cancer"]
        + ["--model", "logreg", "--rounds", "2", "--min-clients", "1", "--round-timeout", "30"]
        + ["--state-dir", str(tmp_path / "agg"), "--history", str(hist)],
        stderr=subprocess.PIPE,
        text=True,
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(device / "agent.toml")]
        + ["--dataset", "breast_cancer", "--num-clients", "2", "--client-index", "0"]
        + ["--state-dir", str(tmp_path / "agent")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agg.wait(90) == 0
    finally:
        agent.terminate()
        _, agent_log = agent.communicate(timeout=20)
        if agg.poll() is None:
            agg.kill()
        _, agg_log = agg.communicate(timeout=20)
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert [r["clients"] for r in records] == [1, 1]
    assert "(TLS), signed models only" in agent_log
    assert all(not r["rejected"] for r in records), records
    assert "refused" not in agent_log  # the agent's refusals (e.g. of a signature) say so
    for secret in (device / "password", site.files.aggregator / "password"):
        text = secret.read_text().strip()
        assert text not in agent_log and text not in agg_log, secret


def test_a_full_emulated_round_runs_over_tls_with_acls_on(tmp_path: Path) -> None:
    done = run_fleet(
        "--secure",
        "--clients",
        "6",
        "--rounds",
        "2",
        "--dataset",
        "breast_cancer",
        "--model",
        "logreg",
        "--workdir",
        str(tmp_path / "w"),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(TLS, a password and ACL per agent, signed models)" in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith("round")][-1].count(
        "clients   6/6"
    )
    assert "rejected 0" in done.stdout
    broker_log = (tmp_path / "w" / "site" / "mosquitto.log").read_text()
    for i in range(6):  # each agent logged in under its own name
        assert f"u'client-{i:04d}'" in broker_log
    assert "u'aggregator'" in broker_log
