"""Attacks on a secure site, against a real Mosquitto started with the generated config.

Each test is one attack and asserts its outcome at the victim (the aggregator or another
device), not just at the attacker: with MQTT 3.1.1 an ACL-denied publish is still PUBACKed.
Both paho and the real mosquitto_sub / mosquitto_pub clients attack.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.site import Site, add_devices, init_site, reload_broker, revoke_devices
from broker.site_broker import SiteBroker
from tests.helpers import wait_for
from tests.secure_helpers import ToolSubscriber, mosquitto_pub, peer, tool_args

pytestmark = pytest.mark.integration

F = "fedge/lab/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("secure") / "site"
    init_site(root, "lab", ["dev-a", "dev-b", "dev-c"], plaintext_port=0)
    with SiteBroker(root) as broker:
        yield broker.site


def test_a_plaintext_connection_to_the_tls_listener_fails(site: Site) -> None:
    plain = peer(site, "dev-a", tls=False)
    assert not plain.connected.is_set()
    done = subprocess.run(
        [
            "mosquitto_pub",
            *tool_args(site, "dev-a", tls=False),
            "-t",
            F + "update/dev-a",
            "-m",
            "x",
        ],
        capture_output=True,
        timeout=20,
    )
    assert done.returncode != 0


def test_a_wrong_password_and_no_password_are_refused(site: Site) -> None:
    wrong = peer(site, "dev-a", password="guessed")
    assert not wrong.connected.is_set() and wrong.refused, "CONNACK must refuse"
    anonymous = peer(site, None)
    assert not anonymous.connected.is_set()
    other = peer(site, "dev-a", password=(site.files.device("dev-b") / "password").read_text())
    assert not other.connected.is_set(), "another device's password is not dev-a's"
    done = subprocess.run(
        ["mosquitto_pub", "-h", site.host, "-p", str(site.port), "--cafile"]
        + [str(site.files.ca_cert), "-u", "dev-a", "-P", "guessed", "-t", F + "x", "-m", "x"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0 and "not authorised" in done.stderr


def test_a_broker_certificate_from_another_ca_is_not_trusted(site: Site, tmp_path: Path) -> None:
    """A man in the middle with his own CA: the device refuses the TLS handshake."""
    other = init_site(tmp_path / "other", "lab", ["dev-a"])
    victim = peer(site, "dev-a", ca=other.files.ca_cert)
    assert not victim.connected.is_set()
    assert any("CERTIFICATE_VERIFY_FAILED" in r or "certificate" in r for r in victim.refused)


def test_a_device_sees_nothing_of_another_devices_update_status_or_metrics(site: Site) -> None:
    aggregator = peer(site, "aggregator")
    aggregator.subscribe(F + "update/+")
    curious = peer(site, "dev-a")
    for topic in (F + "update/#", F + "#", "#"):
        curious.subscribe(topic, wait=0.1)
    tool = ToolSubscriber(site, "dev-c", F + "update/#")
    victim = peer(site, "dev-b")
    victim.publish(F + "update/dev-b", b"secret update of dev-b")
    victim.publish(F + "metrics/dev-b", b"metrics of dev-b")
    victim.publish(F + "status/dev-b", b"status of dev-b", retain=True)
    assert mosquitto_pub(site, "dev-b", F + "update/dev-b", "second update of dev-b") == 0
    wait_for(lambda: len(aggregator.received) == 2, 10, "the aggregator to get both updates")
    time.sleep(0.5)
    tool.stop()
    assert aggregator.topics() == [F + "update/dev-b"] * 2  # the channel works...
    leaked = [t for t in curious.topics() if "dev-b" in t]
    assert leaked == [], f"paho subscriber of dev-a received {leaked}"  # ...but not for dev-a
    assert tool.messages() == [], f"mosquitto_sub as dev-c received {tool.messages()}"
    for p in (aggregator, curious, victim):
        p.close()


def test_a_device_publishing_as_another_device_or_as_the_aggregator_is_dropped(
    site: Site,
) -> None:
    aggregator = peer(site, "aggregator")
    for topic in ("update/+", "status/+", "metrics/+"):
        aggregator.subscribe(F + topic, wait=0.1)
    aggregator.publish(F + "global", b"the genuine global", retain=True)
    device = peer(site, "dev-c")
    device.subscribe(F + "global")
    device.subscribe(F + "task")
    attacker = peer(site, "dev-a")
    for topic in ("update/dev-b", "status/dev-b", "metrics/dev-b", "global", "task"):
        attacker.publish(F + topic, b"forged by dev-a", retain=topic in ("global", "task"))
    attacker.publish(F + "update/dev-a", b"control: paho")  # allowed, and ordered after
    wait_for(
        lambda: (F + "update/dev-a", b"control: paho", False) in aggregator.received,
        10,
        "paho control",
    )
    attacker.close()  # the tools connect as dev-a too, which would take this connection over
    assert mosquitto_pub(site, "dev-a", F + "update/dev-b", "forged by dev-a (tool)") == 0
    assert mosquitto_pub(site, "dev-a", F + "global", "forged by dev-a (tool)", "-r") == 0
    assert mosquitto_pub(site, "dev-a", F + "update/dev-a", "control: tool") == 0
    wait_for(
        lambda: (F + "update/dev-a", b"control: tool", False) in aggregator.received,
        10,
        "tool control",
    )
    time.sleep(0.3)
    forged = [(t, p) for t, p, _ in aggregator.received if b"forged" in p]
    assert forged == [], f"the aggregator received {forged}"
    assert [p for _, p, _ in device.received] == [b"the genuine global"]
    late = peer(site, "dev-b")  # a device joining later gets the genuine retained global
    late.subscribe(F + "global")
    assert [p for _, p, _ in late.received] == [b"the genuine global"]
    for p in (aggregator, device, attacker, late):
        p.close()


def test_a_last_will_on_another_devices_topic_is_never_published(site: Site) -> None:
    """The will is published by the broker itself, so it must pass the ACL too."""
    aggregator = peer(site, "aggregator")
    aggregator.subscribe(F + "update/+", wait=0.1)
    aggregator.subscribe(F + "status/+")
    for topic, payload in ((F + "update/dev-b", "forged will"), (F + "status/dev-a", "control")):
        tool = subprocess.Popen(
            ["mosquitto_sub", *tool_args(site, "dev-a"), "-t", F + "task"]
            + ["--will-topic", topic, "--will-payload", payload, "--will-qos", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        tool.kill()  # no DISCONNECT: the broker publishes the will, if the ACL lets it
        tool.wait(5)
    wait_for(lambda: (F + "status/dev-a", b"control", False) in aggregator.received, 10, "will")
    time.sleep(0.3)
    assert [t for t, p, _ in aggregator.received if p == b"forged will"] == []
    aggregator.close()


def test_a_device_cannot_take_over_another_clients_session_by_its_client_id(site: Site) -> None:
    victim = peer(site, "aggregator")
    victim.subscribe(F + "update/+")
    attacker = peer(site, "dev-a", client_id="aggregator")  # the broker renames it to dev-a
    assert attacker.connected.is_set()
    attacker.publish(F + "update/dev-a", b"from dev-a")
    wait_for(lambda: bool(victim.received), 10, "the aggregator to keep receiving")
    assert not victim.lost.is_set(), "the aggregator's connection was taken over"
    for p in (victim, attacker):
        p.close()


def test_a_revoked_device_is_disconnected_and_refused_others_unaffected(site: Site) -> None:
    add_devices(site.root, ["dev-r"])
    broker_reload(site)
    before = site.files.passwd.read_text().splitlines()
    revoked = peer(site, "dev-r")
    assert revoked.connected.is_set()
    password = (site.files.device("dev-r") / "password").read_text().strip()
    revoke_devices(site.root, ["dev-r"])
    broker_reload(site)
    wait_for(revoked.lost.is_set, 10, "the revoked device to be disconnected")
    again = peer(site, "dev-r", password=password)
    assert not again.connected.is_set() and again.refused
    after = site.files.passwd.read_text().splitlines()
    assert after == [line for line in before if not line.startswith("dev-r:")]
    still = peer(site, "dev-a")
    assert still.connected.is_set()
    for p in (revoked, still):
        p.close()


def broker_reload(site: Site) -> None:
    log = site.root / "mosquitto.log"
    offset = log.stat().st_size
    assert reload_broker(site), "the site's broker should be found by its pid file"
    wait_for(lambda: "Reloading config" in log.read_text()[offset:], 5, "mosquitto to reload")
