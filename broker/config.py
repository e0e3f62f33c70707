"""Finding Mosquitto, choosing a port, and rendering the project's broker config template."""

from __future__ import annotations

import os
import shutil
import socket
import string
from importlib import resources
from pathlib import Path

from fedge.errors import BrokerError

DEFAULT_MAX_PACKET_SIZE = 4 * 1024 * 1024  # the largest message is a global model
FALLBACK_MOSQUITTO = "/usr/sbin/mosquitto"  # Debian's path, often not on a user's PATH


def find_mosquitto() -> str:
    """The ``mosquitto`` executable: on PATH, else Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.path.isfile(FALLBACK_MOSQUITTO) and os.access(FALLBACK_MOSQUITTO, os.X_OK):
        return FALLBACK_MOSQUITTO
    raise BrokerError(
        "mosquitto not found: install it with `apt-get install -y mosquitto`", reason="not_found"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just reported free; another process may still take it before we bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(
    *,
    port: int,
    host: str = "127.0.0.1",
    data_dir: str | Path,
    log_file: str | Path,
    persistence: bool = True,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    user: str | None = None,
) -> str:
    """The project's ``mosquitto.conf.in`` with its placeholders filled (validated first)."""
    _check_limits(port, max_packet_size)
    values = {"host": host, "data_dir": str(Path(data_dir)), "log_file": str(Path(log_file))}
    for key, value in values.items():
        if not value or "\n" in value or "\r" in value:
            raise BrokerError(f"broker {key} {value!r} cannot go in a config line", reason="config")
    template = resources.files("broker").joinpath("mosquitto.conf.in").read_text("utf-8")
    return string.Template(template).substitute(
        values,
        port=port,
        persistence="true" if persistence else "false",
        max_packet_size=max_packet_size,
        user=user or _current_user(),
    )


def _check_limits(port: int | None, max_packet_size: int) -> None:
    if port is not None and not 0 < port < 65536:
        raise BrokerError(f"broker port {port} is not in 1..65535", reason="config")
    if max_packet_size < 20:  # Mosquitto refuses smaller limits
        raise BrokerError(f"max_packet_size {max_packet_size} is below 20", reason="config")


def _current_user() -> str:
    """Our user name: Mosquitto started as root keeps root only if told so (see the template)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return "mosquitto"  # Mosquitto's own default; without root the setting has no effect
