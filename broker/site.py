"""A secure site on disk: create it, add and revoke devices, and reload a running broker.

``site.json`` is the record (federation, listener, device names); everything else is made
from it or holds a secret made once: the CA, the broker's certificate, the password file,
the aggregator's signing key, one folder per device. Adding a device writes its folder, its
password line and its ACL section; revoking one removes them. Other devices' passwords,
certificates and folders are never rewritten, so devices already deployed keep working.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from broker import pki
from broker.config import _current_user
from broker.passwd import PasswordFile, new_password
from broker.site_files import (
    AGGREGATOR_USER,
    agent_toml,
    aggregator_toml,
    render_acl,
    render_clients,
    render_mosquitto_conf,
)
from fedge.errors import BrokerError
from fedge.protocol import valid_name
from fedge.signing import SigningKey, write_private

SITE_FORMAT = 1


class SiteFiles:
    """Where everything of a site lives; names inside a device folder are fixed."""

    CA_NAME = "ca.crt"
    PASSWORD = "password"
    VERIFY_KEY = "signing.pub"
    SIGNING_KEY = "signing.key"
    CLIENT_CERT = "client.crt"
    CLIENT_KEY = "client.key"
    CLIENTS = "clients.txt"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.site_json = root / "site.json"
        self.conf = root / "mosquitto.conf"
        self.passwd = root / "passwd"
        self.acl = root / "acl"
        self.ca_cert = root / self.CA_NAME
        self.ca_key = root / "private" / "ca.key"
        self.broker_cert = root / "broker" / "broker.crt"
        self.broker_key = root / "broker" / "broker.key"
        self.verify_key = root / self.VERIFY_KEY
        self.data = root / "data"
        self.pid = root / "mosquitto.pid"
        self.aggregator = root / "aggregator"
        self.devices = root / "devices"

    def device(self, name: str) -> Path:
        return self.devices / name


@dataclass(frozen=True)
class Site:
    """What ``fedge-broker init`` was asked for, and the devices enrolled since."""

    root: Path
    federation: str
    host: str = "127.0.0.1"  # the address clients dial: in every config and in the certificate
    port: int = 8883
    bind: str = ""  # the listener's address when it differs from host (e.g. 0.0.0.0)
    plaintext_port: int = 0  # a plaintext listener on 127.0.0.1 (0: none)
    client_certs: bool = False  # devices also need a certificate of this site's CA
    names: tuple[str, ...] = ()  # extra DNS names / addresses for the broker certificate
    devices: tuple[str, ...] = ()
    user: str = field(default_factory=_current_user)

    @property
    def files(self) -> SiteFiles:
        return SiteFiles(self.root)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_json(self) -> str:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}
        return json.dumps({"format": SITE_FORMAT, **record}, indent=2) + "\n"


def load_site(root: str | Path) -> Site:
    files = SiteFiles(Path(root).resolve())
    try:
        record = json.loads(files.site_json.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise BrokerError(f"{root}: not a fedge site ({exc})", reason="config") from None
    if record.pop("format", None) != SITE_FORMAT:
        raise BrokerError(f"{files.site_json}: unknown site format", reason="config")
    record["names"] = tuple(record.get("names", ()))
    record["devices"] = tuple(record.get("devices", ()))
    return Site(root=files.root, **record)


def init_site(
    root: str | Path,
    federation: str,
    devices: Sequence[str],
    **options: object,
) -> Site:
    """Write a whole site into ``root`` (which must be empty or absent)."""
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()):
        raise BrokerError(
            f"{root} is not empty; a site is written into a new folder", reason="config"
        )
    site = Site(root=root, federation=federation, **options)  # type: ignore[arg-type]
    _check_site(site)
    _check_devices(site, devices)
    files = site.files
    for folder in (root, files.ca_key.parent, files.broker_cert.parent, files.data):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(files.ca_key.parent, 0o700)
    ca_key, ca_cert = pki.make_ca(f"fedge {federation} site CA")
    pki.write_key(files.ca_key, ca_key)
    pki.write_cert(files.ca_cert, ca_cert)
    names = list(dict.fromkeys([site.host, *site.names, "localhost", "127.0.0.1"]))
    broker_key, broker_cert = pki.issue(ca_key, ca_cert, site.host, server_names=names)
    pki.write_key(files.broker_key, broker_key)
    pki.write_cert(files.broker_cert, broker_cert)
    signing = SigningKey.generate()
    files.verify_key.write_bytes(signing.public.to_pem())
    passwords = PasswordFile(files.passwd)
    _write_aggregator(site, signing, passwords)
    for device in devices:
        _write_device(site, device, passwords)
    passwords.save()
    site = dataclasses.replace(site, devices=tuple(devices))
    save_site(site)
    return site


def add_devices(root: str | Path, devices: Sequence[str]) -> Site:
    """Enrol new devices; nothing of the existing ones changes but the shared ACL file."""
    site = load_site(root)
    _check_devices(site, devices)
    passwords = PasswordFile(site.files.passwd)
    for device in devices:
        _write_device(site, device, passwords)
    passwords.save()
    site = dataclasses.replace(site, devices=site.devices + tuple(devices))
    save_site(site)
    return site


def revoke_devices(root: str | Path, devices: Iterable[str]) -> Site:
    """Remove devices' passwords, ACL sections and folders (their secrets are dead now)."""
    site = load_site(root)
    gone = list(dict.fromkeys(devices))
    unknown = [d for d in gone if d not in site.devices]
    if unknown:
        raise BrokerError(f"not devices of this site: {', '.join(unknown)}", reason="config")
    passwords = PasswordFile(site.files.passwd)
    passwords.remove(gone)
    passwords.save()
    site = dataclasses.replace(site, devices=tuple(d for d in site.devices if d not in gone))
    save_site(site)
    for device in gone:
        shutil.rmtree(site.files.device(device), ignore_errors=True)
    return site


def save_site(site: Site) -> None:
    """site.json, the ACL, mosquitto.conf and the aggregator's list of enrolled clients, each
    replaced atomically."""
    files = site.files
    _replace(files.site_json, site.to_json())
    if files.aggregator.is_dir():
        _replace(files.aggregator / files.CLIENTS, render_clients(site))
    _replace(files.acl, render_acl(site))
    _replace(files.conf, render_mosquitto_conf(site))


def move_listener(site: Site, port: int) -> Site:
    """Another port for the TLS listener; every config is rewritten (tests, emulation)."""
    site = dataclasses.replace(site, port=port)
    save_site(site)
    _replace(site.files.aggregator / "aggregator.toml", aggregator_toml(site))
    for device in site.devices:
        _replace(site.files.device(device) / "agent.toml", agent_toml(site, device))
    return site


def reload_broker(site: Site) -> bool:
    """SIGHUP the site's running broker (pid file + cmdline check): passwords and ACL reload."""
    try:
        pid = int(site.files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if str(site.files.conf).encode() not in cmdline:
        return False  # a stale pid file: that process is not this site's broker
    os.kill(pid, signal.SIGHUP)
    return True


# -- internals -------------------------------------------------------------------------------


def _write_aggregator(site: Site, signing: SigningKey, passwords: PasswordFile) -> None:
    folder = site.files.aggregator
    folder.mkdir(mode=0o700)
    write_private(folder / SiteFiles.SIGNING_KEY, signing.to_pem())
    _credentials(site, folder, AGGREGATOR_USER, passwords)
    (folder / "aggregator.toml").write_text(aggregator_toml(site), "utf-8")


def _write_device(site: Site, device: str, passwords: PasswordFile) -> None:
    folder = site.files.device(device)
    folder.mkdir(mode=0o700, parents=True)
    shutil.copyfile(site.files.verify_key, folder / SiteFiles.VERIFY_KEY)
    _credentials(site, folder, device, passwords)
    (folder / "agent.toml").write_text(agent_toml(site, device), "utf-8")


def _credentials(site: Site, folder: Path, username: str, passwords: PasswordFile) -> None:
    password = new_password()
    write_private(folder / SiteFiles.PASSWORD, (password + "\n").encode())
    passwords.set(username, password)
    shutil.copyfile(site.files.ca_cert, folder / SiteFiles.CA_NAME)
    if site.client_certs:
        ca_key, ca_cert = pki.load_ca(site.files.ca_key, site.files.ca_cert)
        key, cert = pki.issue(ca_key, ca_cert, username, client=True)
        pki.write_key(folder / SiteFiles.CLIENT_KEY, key)
        pki.write_cert(folder / SiteFiles.CLIENT_CERT, cert)


def _check_site(site: Site) -> None:
    if not valid_name(site.federation):
        raise BrokerError(
            f"federation {site.federation!r}: use 1-64 of [A-Za-z0-9_.-]", reason="config"
        )
    for port in (site.port, site.plaintext_port or 1):
        if not 0 < port < 65536:
            raise BrokerError(f"port {port} is not in 1..65535", reason="config")
    for text in (str(site.root), site.host, site.bind, site.user, *site.names):
        if any(c.isspace() for c in text):  # Mosquitto config values end at white space
            raise BrokerError(f"{text!r} cannot contain white space", reason="config")


def _check_devices(site: Site, devices: Sequence[str]) -> None:
    if len(set(devices)) != len(devices):
        raise BrokerError("a device name is given twice", reason="config")
    for device in devices:
        if not valid_name(device) or device == AGGREGATOR_USER:
            raise BrokerError(
                f"device name {device!r}: use 1-64 of [A-Za-z0-9_.-], not {AGGREGATOR_USER!r}",
                reason="config",
            )
        if device in site.devices:
            raise BrokerError(f"device {device!r} is already enrolled", reason="config")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)
