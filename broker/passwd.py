"""Mosquitto 2 password files, written without ``mosquitto_passwd``: the ``$7$`` format.

One line per user, ``username:$7$<iterations>$<salt>$<hash>``, where ``salt`` is 12 random
bytes and ``hash`` is PBKDF2-HMAC-SHA512(password, salt, iterations) truncated to 64 bytes,
both standard base64 with padding. That is what ``mosquitto_passwd`` (2.x, the default
``-H sha512-pbkdf2``) writes and what Mosquitto 2 reads; the tests prove both directions
against the real binaries.

Iterations stay at Mosquitto's own 101: fedge passwords are 256 random bits, which no
iteration count could make weaker or stronger, and the broker pays the count on every
connect of every device.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from fedge.protocol import valid_name

ITERATIONS = 101  # mosquitto_passwd's default for sha512-pbkdf2
SALT_BYTES = 12
HASH_BYTES = 64
MAX_ITERATIONS = 1_000_000  # a file with more is not one we wrote; refuse to spin on it


def new_password() -> str:
    """A device password: 32 random bytes, URL-safe base64 (43 characters, no ':' or space)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$`` hash of ``password`` as Mosquitto 2 stores it."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as written by us or mosquitto_passwd)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    iterations = int(parts[2])
    if not 0 < iterations <= MAX_ITERATIONS:
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, len(expected)
    )
    return bool(expected) and hmac.compare_digest(digest, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PasswordFile:
    """A Mosquitto password file, edited line by line: other users' lines stay byte-identical.

    Lines this class does not understand (comments, other hash formats) are kept as they are.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lines: list[str] = []
        if self.path.exists():
            self.lines = self.path.read_text("utf-8").splitlines()

    def users(self) -> list[str]:
        return [name for name, _ in self._entries()]

    def hash_of(self, username: str) -> str | None:
        return dict(self._entries()).get(username)

    def set(self, username: str, password: str) -> None:
        """Add the user, or replace only that user's line."""
        if not valid_name(username):
            raise ValueError(f"username {username!r}: use 1-64 of [A-Za-z0-9_.-]")
        line = f"{username}:{hash_password(password)}"
        for i, (name, _) in enumerate(self._indexed()):
            if name == username:
                self.lines[i] = line
                return
        self.lines.append(line)

    def remove(self, usernames: Iterable[str]) -> list[str]:
        """Drop these users' lines; returns the names that were present."""
        drop = set(usernames)
        removed = [name for name, _ in self._entries() if name in drop]
        self.lines = [
            line
            for line, (name, _) in zip(self.lines, self._indexed(), strict=True)
            if name not in drop
        ]
        return removed

    def save(self) -> None:
        """Write atomically with mode 0600 (temp file in the same directory, then rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in self.lines))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _indexed(self) -> list[tuple[str | None, str | None]]:
        out: list[tuple[str | None, str | None]] = []
        for line in self.lines:
            if line.startswith("#") or ":" not in line:
                out.append((None, None))
            else:
                name, encoded = line.split(":", 1)
                out.append((name, encoded))
        return out

    def _entries(self) -> list[tuple[str, str]]:
        return [(n, h) for n, h in self._indexed() if n is not None and h is not None]
