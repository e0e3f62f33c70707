"""``fedge-broker``: the site it writes, Mosquitto's password format, client certificates, run."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker import free_port
from broker.cli import main
from broker.passwd import PasswordFile, hash_password, verify_password
from broker.site import init_site, load_site
from broker.site_broker import SiteBroker
from fedge.config import AgentConfig, AggregatorConfig, load
from tests.helpers import wait_for
from tests.secure_helpers import peer

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the password file -----------------------------------------------------------------------


def test_hashes_of_the_real_mosquitto_passwd_verify_and_ours_have_its_format(
    tmp_path: Path,
) -> None:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret"], check=True)
    theirs = PasswordFile(path).hash_of("alice")
    assert theirs is not None
    assert verify_password("s3cret", theirs) and not verify_password("s3cret!", theirs)
    ours = hash_password("s3cret")
    pattern = r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}=="
    assert re.fullmatch(pattern, theirs) and re.fullmatch(pattern, ours)
    assert verify_password("s3cret", ours) and not verify_password("other", ours)


def test_mosquitto_passwd_edits_our_file_and_mosquitto_accepts_both(tmp_path: Path) -> None:
    root = tmp_path / "site"
    init_site(root, "lab", ["dev-a"])
    ours = PasswordFile(root / "passwd").hash_of("dev-a")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(root / "passwd"), "dev-a", "set-by-the-real-tool"],
        check=True,
    )
    with SiteBroker(root) as broker:
        assert not peer(broker.site, "dev-a").connected.is_set()  # the old password is gone
        assert peer(broker.site, "dev-a", password="set-by-the-real-tool").connected.is_set()
        assert peer(broker.site, "aggregator").connected.is_set()  # our hash, untouched
    assert PasswordFile(root / "passwd").hash_of("dev-a") != ours


# -- fedge-broker init / add-device / revoke-device ------------------------------------------


def test_init_writes_a_whole_site_with_private_secrets(tmp_path: Path) -> None:
    root = tmp_path / "site"
    names = tmp_path / "devices.txt"
    names.write_text("# kitchen and garage\npi-kitchen\npi-garage  # the old one\n\n")
    args = ["init", str(root), "--federation", "lab", "--device-list", str(names)]
    assert main([*args, "--host", "127.0.0.1", "--port", "18883"]) == 0
    for path in ("mosquitto.conf", "ca.crt", "passwd", "acl", "site.json", "signing.pub"):
        assert (root / path).is_file(), path
    for secret in ("passwd", "private/ca.key", "broker/broker.key", "aggregator/signing.key"):
        assert mode(root / secret) == 0o600, secret
    for device in ("pi-kitchen", "pi-garage"):
        folder = root / "devices" / device
        assert mode(folder) == 0o700 and mode(folder / "password") == 0o600
        assert sorted(p.name for p in folder.iterdir()) == [
            "agent.toml",
            "ca.crt",
            "password",
            "signing.pub",
        ]
    conf = (root / "mosquitto.conf").read_text()
    assert "listener 18883 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert "use_username_as_clientid true" in conf and f"acl_file {root}/acl" in conf
    acl = (root / "acl").read_text()
    assert "user pi-kitchen\ntopic write fedge/lab/update/pi-kitchen\n" in acl
    assert PasswordFile(root / "passwd").users() == ["aggregator", "pi-kitchen", "pi-garage"]
    assert main(["init", str(root), "--federation", "lab", "--devices", "1"]) == 2  # not empty


def test_a_device_folder_is_a_complete_config_wherever_it_is_copied(tmp_path: Path) -> None:
    site = init_site(tmp_path / "site", "lab", ["dev-a"])
    copy = tmp_path / "elsewhere" / "fedge"
    copy.parent.mkdir()
    subprocess.run(["cp", "-rp", str(site.files.device("dev-a")), str(copy)], check=True)
    config = load(AgentConfig, copy / "agent.toml", {"dataset": "digits"})
    assert (config.client_id, config.username, config.broker) == ("dev-a", "dev-a", site.address)
    assert config.password_file == str(copy / "password")
    assert Path(config.verify_key).read_bytes() == site.files.verify_key.read_bytes()
    agg = load(AggregatorConfig, site.files.aggregator / "aggregator.toml", {"dataset": "digits"})
    assert agg.signing_key == str(site.files.aggregator / "signing.key")
    assert agg.clients_file == str(site.files.aggregator / "clients.txt")


def test_add_and_revoke_leave_the_other_devices_untouched(tmp_path: Path) -> None:
    root = tmp_path / "site"
    assert main(["init", str(root), "--federation", "lab", "--devices", "2"]) == 0
    keep = root / "devices" / "device-001"
    before = {p.name: p.read_bytes() for p in keep.iterdir()}
    line = [x for x in (root / "passwd").read_text().splitlines() if x.startswith("device-001:")]
    assert main(["add-device", str(root), "pi-new"]) == 0
    assert main(["revoke-device", str(root), "device-002"]) == 0
    assert {p.name: p.read_bytes() for p in keep.iterdir()} == before
    assert line[0] in (root / "passwd").read_text().splitlines()
    assert load_site(root).devices == ("device-001", "pi-new")
    assert not (root / "devices" / "device-002").exists()
    assert "device-002" not in (root / "acl").read_text()
    from aggregator.enrolment import read_clients_file

    enrolled = read_clients_file(str(root / "aggregator" / "clients.txt"))
    assert enrolled == {"device-001", "pi-new"}  # the aggregator refuses anyone else
    assert main(["add-device", str(root), "pi-new"]) == 2  # already enrolled
    assert main(["add-device", str(root), "aggregator"]) == 2  # reserved
    assert main(["revoke-device", str(root), "nobody"]) == 2


# -- client certificates, the plaintext loopback listener ------------------------------------


def test_client_certificate_sites_need_the_certificate_and_the_password(tmp_path: Path) -> None:
    init_site(tmp_path / "site", "lab", ["dev-a"], client_certs=True, plaintext_port=0)
    with SiteBroker(tmp_path / "site") as broker:
        site = broker.site
        folder = site.files.device("dev-a")
        cert = (folder / "client.crt", folder / "client.key")
        assert mode(folder / "client.key") == 0o600
        assert peer(site, "dev-a", cert=cert).connected.is_set()
        assert not peer(site, "dev-a").connected.is_set()  # no certificate
        assert not peer(site, "dev-a", cert=cert, password="guess").connected.is_set()
        assert "require_certificate true" in site.files.conf.read_text()


def test_the_plaintext_listener_is_loopback_only_and_still_needs_passwords(tmp_path: Path) -> None:
    port = free_port()
    init_site(tmp_path / "site", "lab", ["dev-a"], plaintext_port=port)
    with SiteBroker(tmp_path / "site") as broker:
        site = broker.site
        assert f"listener {port} 127.0.0.1" in site.files.conf.read_text()
        assert peer(site, "dev-a", tls=False, port=port).connected.is_set()
        assert not peer(site, "dev-a", tls=False, port=port, password="x").connected.is_set()


# -- fedge-broker run --------------------------------------------------------------------------


def test_run_starts_the_sites_mosquitto_and_revoke_reloads_it(tmp_path: Path) -> None:
    root = tmp_path / "site"
    port = free_port()
    assert (
        main(["init", str(root), "--federation", "lab", "--devices", "2", "--port", str(port)]) == 0
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        site = load_site(root)
        wait_for(lambda: peer(site, "device-001", wait=1).connected.is_set(), 10, "the broker")
        assert int((root / "mosquitto.pid").read_text()) == proc.pid  # exec kept the pid
        device = peer(site, "device-002")
        assert device.connected.is_set()
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "revoke-device", str(root), "device-002"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0 and "reloaded" in done.stdout
        wait_for(device.lost.is_set, 10, "the revoked device to be disconnected")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert proc.stdout is not None and b"Reloading config" in proc.stdout.read()


def test_a_stale_pid_file_signals_nobody(tmp_path: Path) -> None:
    root = tmp_path / "site"
    init_site(root, "lab", ["dev-a"])
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (root / "mosquitto.pid").write_text(f"{sleeper.pid}\n")
        assert main(["revoke-device", str(root), "dev-a"]) == 0
        time.sleep(0.2)
        assert sleeper.poll() is None, "a process that is not the site's broker got SIGHUP"
    finally:
        sleeper.kill()
        sleeper.wait()
