"""Ed25519 signatures on the aggregator's retained messages, so a device refuses forged models.

The aggregator seals every ``task`` and ``global`` payload in a signed wrapper (a msgpack map
``{v, kind: "signed", key_id, sig, payload}``; byte for byte in docs/protocol.md, "Signed
messages"). An agent provisioned with the aggregator's public key opens the wrapper *before*
decoding anything inside it: a plain message is refused (``unsigned``), a wrapper signed by
another key or not verifying is refused (``signature``). The signature covers a fixed context
string followed by the exact inner payload bytes, so nothing is re-encoded before verifying.

An agent without a key (plain emulation on loopback) unwraps without verifying, and takes
plain messages as before: keys are what make it strict.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.credentials import check_private
from fedge.errors import ConfigError
from fedge.protocol import VERSION
from fedge.wire_fields import DEFAULT_LIMITS, Limits, Reason, get_field, pack, refuse, unpack

CONTEXT = b"fedge signed message v1\x00"
"""Prefix of the signed bytes: a signature made for fedge cannot be replayed elsewhere."""
SIGNED_KIND = "signed"
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
WRAPPER_OVERHEAD = 256  # wrapper fields around the payload, well above the ~100 bytes used


class VerifyKey:
    """The aggregator's public key, as provisioned on every device."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(self.raw).digest()[:KEY_ID_BYTES]

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, CONTEXT + payload)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"VerifyKey(id={self.key_id.hex()})"


class SigningKey:
    """The aggregator's Ed25519 private key; its ``repr`` names the key id only."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(CONTEXT + payload)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(id={self.key_id.hex()})"


# -- files -----------------------------------------------------------------------------------


def load_signing_key(path: str | Path, key: str = "signing_key") -> SigningKey:
    """A PEM (PKCS#8) Ed25519 private key from a file only its owner can read."""
    file = check_private(path, key)
    try:
        loaded = serialization.load_pem_private_key(file.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"key {key!r}: {file} is not an unencrypted PEM key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"key {key!r}: {file} is not an Ed25519 key")
    return SigningKey(loaded)


def load_verify_key(path: str | Path, key: str = "verify_key") -> VerifyKey:
    """A PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"key {key!r}: cannot read {path}: {exc.strerror}") from None
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"key {key!r}: {path} is not a PEM public key: {exc}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"key {key!r}: {path} is not an Ed25519 public key")
    return VerifyKey(loaded)


def write_private(path: str | Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


# -- the signed wrapper ----------------------------------------------------------------------


def seal(payload: bytes, key: SigningKey | None) -> bytes:
    """``payload`` in a signed wrapper, or unchanged when there is no key."""
    if key is None:
        return payload
    return pack(
        {
            "v": VERSION,
            "kind": SIGNED_KIND,
            "key_id": key.key_id,
            "sig": key.sign(payload),
            "payload": payload,
        }
    )


def open_signed(payload: bytes, key: VerifyKey | None, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The inner payload, verified against ``key``; WireError ``unsigned`` / ``signature``.

    Verification comes before any decoding of the inner bytes. With ``key`` None, a wrapper
    is opened without verifying and a plain payload is returned as it is.
    """
    outer_limits = Limits(
        max_bytes=limits.max_bytes + WRAPPER_OVERHEAD,
        max_items=limits.max_items,
        max_str=limits.max_str,
        max_metrics=limits.max_metrics,
    )
    outer = unpack(payload, outer_limits)
    if outer.get("kind") != SIGNED_KIND:
        if key is not None:
            raise refuse(
                "message is not signed; this agent requires signed messages", Reason.UNSIGNED
            )
        return bytes(payload)
    if outer.get("v") != VERSION:
        raise refuse(f"signed wrapper version {outer.get('v')!r}", Reason.VERSION)
    key_id = get_field(outer, "key_id", bytes)
    signature = get_field(outer, "sig", bytes)
    inner = get_field(outer, "payload", bytes)
    if len(key_id) != KEY_ID_BYTES or len(signature) != SIGNATURE_BYTES:
        raise refuse(f"key_id must be {KEY_ID_BYTES} bytes and sig {SIGNATURE_BYTES}")
    if len(inner) > limits.max_bytes:
        raise refuse(f"signed payload exceeds {limits.max_bytes} bytes", Reason.OVERSIZE)
    if key is None:
        return inner
    if key_id != key.key_id:
        raise refuse(
            f"signed by key {key_id.hex()}, this agent trusts {key.key_id.hex()}",
            Reason.SIGNATURE,
        )
    if not key.verify(inner, signature):
        raise refuse("signature does not verify", Reason.SIGNATURE)
    return inner
