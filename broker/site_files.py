"""The text files of a secure site: Mosquitto's config and ACL, the daemons' TOML configs.

Pure rendering from a ``Site`` (``broker/site.py`` decides when to write them). The ACL gives
every device a section of its own, by username, rather than ``pattern`` lines: revoking a
device removes its section, and after the broker reloads, a revoked device that is still
connected can neither publish nor receive anything (Mosquitto re-checks ACLs on reload;
2.0.11 also disconnects a client whose password is gone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fedge.protocol import Topics

if TYPE_CHECKING:
    from broker.site import Site

AGGREGATOR_USER = "aggregator"
MAX_PACKET_SIZE = 16 * 1024 * 1024  # a global model or a task shipping an 8 MiB model file


def device_acl(topics: Topics, device: str) -> list[str]:
    """What one device may do: write its own update/status/metrics; read task and global."""
    return [
        f"user {device}",
        f"topic write {topics.update(device)}",
        f"topic write {topics.status(device)}",
        f"topic write {topics.metrics(device)}",
        f"topic read {topics.task}",
        f"topic read {topics.global_model}",
    ]


def render_acl(site: Site) -> str:
    topics = Topics(site.federation)
    lines = [
        f"# fedge site ACL, federation {site.federation!r}: written by fedge-broker from",
        "# site.json; add or revoke devices with fedge-broker, edits here are overwritten.",
        "# No line before the first 'user': anonymous clients get nothing (and are refused).",
        "",
        f"user {AGGREGATOR_USER}",
        f"topic read {topics.all_updates}",
        f"topic read {topics.all_status}",
        f"topic read {topics.all_metrics}",
        f"topic write {topics.task}",
        f"topic write {topics.global_model}",
    ]
    for device in site.devices:
        lines += ["", *device_acl(topics, device)]
    return "\n".join(lines) + "\n"


def render_mosquitto_conf(site: Site) -> str:
    """Mosquitto 2 config: a TLS listener, optionally a plaintext one on loopback; no anonymous."""
    files = site.files
    lines = [
        f"# fedge secure site, federation {site.federation!r}: written by fedge-broker from",
        f"# {files.site_json}. Run it with `mosquitto -c {files.conf}` or `fedge-broker run`.",
        "",
        "# Mosquitto started as root drops to this user, who owns the site's files.",
        f"user {site.user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        "",
        "# TLS; the client id is replaced by the username, so no client can take over another's",
        "# session (or read the aggregator's queued updates) by reusing its client id.",
        f"listener {site.port} {site.bind or site.host}",
        "use_username_as_clientid true",
        f"cafile {files.ca_cert}",
        f"certfile {files.broker_cert}",
        f"keyfile {files.broker_key}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if site.client_certs else 'false'}",
    ]
    if site.plaintext_port:
        lines += [
            "",
            "# Plaintext, loopback only (asked for with --plaintext-port): same passwords and ACL.",
            f"listener {site.plaintext_port} 127.0.0.1",
            "use_username_as_clientid true",
        ]
    lines += [
        "",
        "# Retained task/global and the aggregator's persistent session survive a restart.",
        "persistence true",
        f"persistence_location {files.data}/",
        "autosave_interval 30",
        "log_dest stderr",  # unbuffered, unlike stdout into a file or a pipe
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "max_inflight_messages 100",
        "max_queued_messages 10000",
        "max_keepalive 300",
        "persistent_client_expiration 7d",
    ]
    return "\n".join(lines) + "\n"


def render_toml(header: str, values: Mapping[str, object], commented: Mapping[str, str]) -> str:
    """A small TOML file: ``values`` as keys, ``commented`` as hints the operator fills in."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append("")
    for key, value in values.items():
        lines.append(f"{key} = {_toml(value)}")
    if commented:
        lines.append("")
    for key, hint in commented.items():
        lines.append(f"# {key} = {hint}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_clients(site: Site) -> str:
    """The aggregator's ``clients_file``: updates from anyone else are refused."""
    header = "# enrolled devices, written by fedge-broker (add-device / revoke-device)\n"
    return header + "".join(f"{device}\n" for device in site.devices)


def _connection(site: Site, user: str) -> dict[str, object]:
    """The keys every daemon of the site needs to reach its broker as ``user``."""
    files = site.files
    values: dict[str, object] = {
        "broker": site.address,
        "federation": site.federation,
        "client_id": user,
        "username": user,
        "password_file": files.PASSWORD,
        "ca_file": files.CA_NAME,
    }
    if site.client_certs:
        values["cert_file"] = files.CLIENT_CERT
        values["key_file"] = files.CLIENT_KEY
    return values


def agent_toml(site: Site, device: str) -> str:
    values = {**_connection(site, device), "verify_key": site.files.VERIFY_KEY}
    return render_toml(
        f"fedge agent {device!r}, federation {site.federation!r}: written by fedge-broker.\n"
        "Copy this whole folder to the device; paths are relative to this file.\n"
        "Run: fedge-agent --config agent.toml --data data.npz --state-dir /var/lib/fedge/agent",
        values,
        {"data": '"/var/lib/fedge/data.npz"', "state_dir": '"/var/lib/fedge/agent"'},
    )


def aggregator_toml(site: Site) -> str:
    values = {
        **_connection(site, AGGREGATOR_USER),
        "signing_key": site.files.SIGNING_KEY,
        "clients_file": site.files.CLIENTS,
    }
    return render_toml(
        f"fedge aggregator, federation {site.federation!r}: written by fedge-broker.\n"
        "Paths are relative to this file. Say what to train, e.g.:\n"
        "fedge-aggregator --config aggregator.toml --dataset digits --rounds 20",
        values,
        {
            "dataset": '"digits"  # or test_data / n_features + n_classes',
            "state_dir": '"/var/lib/fedge/aggregator"',
        },
    )
