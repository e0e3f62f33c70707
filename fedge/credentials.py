"""MQTT credentials and TLS files for a session, read from files that only their owner can read.

A password or private key never sits in a config file or on a command line (where ``ps``,
shell history and printed configs would show it): configs hold the *path* of a file whose
mode gives no access to group or others, and the secret lives only in memory, in a field
that ``repr`` never shows. Nothing here logs a secret.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedge.errors import ConfigError

MAX_SECRET_BYTES = 4096


@dataclass(frozen=True)
class TlsFiles:
    """TLS for an MQTT session: the CA that signed the broker, and an optional client cert."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class MqttAuth:
    """Who a session is on the broker: username, password (never in ``repr``), TLS files."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsFiles | None = None

    def session_args(self) -> dict[str, Any]:
        """Keyword arguments for ``fedge.mqtt.Session``."""
        return {"username": self.username, "password": self.password, "tls": self.tls}


NO_AUTH = MqttAuth()


class SecuredConfig(Protocol):
    """The keys AgentConfig and AggregatorConfig share for talking to a secured broker
    (read-only: the configs are frozen dataclasses)."""

    @property
    def username(self) -> str: ...
    @property
    def password_file(self) -> str: ...
    @property
    def ca_file(self) -> str: ...
    @property
    def cert_file(self) -> str: ...
    @property
    def key_file(self) -> str: ...


def check_private(path: str | Path, key: str) -> Path:
    """``path`` as a regular file readable by its owner only, else ConfigError naming ``key``.

    Group or other permission bits on a secret are refused rather than warned about: a
    secret another local user could have read is no longer a secret.
    """
    file = Path(path)
    try:
        info = file.stat()
    except OSError as exc:
        raise ConfigError(f"key {key!r}: cannot read {file}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"key {key!r}: {file} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"key {key!r}: {file} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {file}"
        )
    if not os.access(file, os.R_OK):
        raise ConfigError(f"key {key!r}: {file} is not readable by this user")
    return file


def read_secret(path: str | Path, key: str) -> str:
    """The first line of a private file (a password), without its line ending."""
    file = check_private(path, key)
    data = file.read_bytes()
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"key {key!r}: {file} is larger than a secret ({len(data)} bytes)")
    try:
        secret = data.decode("utf-8").splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        raise ConfigError(f"key {key!r}: {file} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"key {key!r}: {file} is empty")
    return secret


def mqtt_auth(config: SecuredConfig) -> MqttAuth:
    """Credentials and TLS files a daemon's config names, checked and read now (fail early)."""
    password = read_secret(config.password_file, "password_file") if config.password_file else None
    tls = None
    if config.ca_file:
        for key in ("ca_file", "cert_file"):
            value = getattr(config, key)
            if value and not os.access(value, os.R_OK):
                raise ConfigError(f"key {key!r}: cannot read {value}")
        if config.key_file:
            check_private(config.key_file, "key_file")
        tls = TlsFiles(config.ca_file, config.cert_file, config.key_file)
    return MqttAuth(config.username or None, password, tls)
