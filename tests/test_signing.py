"""Signed task and global: the wrapper, key files, and an agent that refuses forged models."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.core import AgentCore
from fedge.errors import ConfigError, WireError
from fedge.models import build_model
from fedge.params import spec_of
from fedge.signing import (
    CONTEXT,
    SigningKey,
    load_signing_key,
    load_verify_key,
    open_signed,
    seal,
    write_private,
)
from fedge.wire import Global, Hyper, Limits, Task, encode, model_ref

MODEL = build_model("logreg", 4, 3, seed=0)
SPEC = MODEL.describe()
LAYOUT = spec_of(MODEL.get_weights())
REF = model_ref("logreg", SPEC, LAYOUT)
TASK = encode(Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "int8"))
KEY = SigningKey.generate()
OTHER = SigningKey.generate()


def glob(round_number: int = 1, opened: int = 1) -> bytes:
    return encode(Global("fed", round_number, "agg", REF, MODEL.get_weights(), 0, opened=opened))


def agent(verify: bool = True) -> AgentCore:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    return AgentCore(
        "dev-1", "fed", x, rng.integers(0, 3, 40), verify_key=KEY.public if verify else None
    )


def reason_of(payload: bytes, key: SigningKey | None = KEY) -> str:
    with pytest.raises(WireError) as caught:
        open_signed(payload, key.public if key else None)
    return caught.value.reason


# -- the wrapper -----------------------------------------------------------------------------


def test_a_sealed_payload_opens_to_the_exact_inner_bytes() -> None:
    payload = glob()
    sealed = seal(payload, KEY)
    outer = msgpack.unpackb(sealed, raw=False)
    assert list(outer) == ["v", "kind", "key_id", "sig", "payload"]
    assert outer["kind"] == "signed" and outer["payload"] == payload
    assert outer["key_id"] == KEY.key_id and len(outer["sig"]) == 64
    assert open_signed(sealed, KEY.public) == payload


def test_the_signature_covers_the_context_string_and_the_payload_bytes() -> None:
    payload = b"\x81\xa1v\x02"
    outer = msgpack.unpackb(seal(payload, KEY), raw=False)
    public = serialization.load_pem_public_key(KEY.public.to_pem())
    public.verify(outer["sig"], CONTEXT + payload)  # type: ignore[union-attr]


def test_a_plain_message_is_refused_as_unsigned_when_a_key_is_provisioned() -> None:
    assert reason_of(glob()) == "unsigned"


def test_a_message_signed_by_another_key_is_refused() -> None:
    assert reason_of(seal(glob(), OTHER)) == "signature"


def test_another_key_claiming_our_key_id_is_refused() -> None:
    outer = msgpack.unpackb(seal(glob(), OTHER), raw=False)
    outer["key_id"] = KEY.key_id
    assert reason_of(msgpack.packb(outer, use_bin_type=True)) == "signature"


def test_every_single_byte_flip_of_a_sealed_message_is_refused() -> None:
    sealed = seal(encode(Task("fed", "agg", REF, SPEC, LAYOUT, Hyper(1, 8, 0.1), "int8")), KEY)
    for i in range(len(sealed)):
        for mask in (0x01, 0x80):
            flipped = bytearray(sealed)
            flipped[i] ^= mask
            with pytest.raises(WireError):
                open_signed(bytes(flipped), KEY.public)


def test_the_signature_is_checked_before_the_inner_bytes_are_decoded() -> None:
    outer = msgpack.unpackb(seal(b"not msgpack at all", KEY), raw=False)
    outer["sig"] = bytes(64)
    assert reason_of(msgpack.packb(outer, use_bin_type=True)) == "signature"


def test_wrapper_fields_are_bounded_and_typed() -> None:
    outer = msgpack.unpackb(seal(glob(), KEY), raw=False)
    for field, bad in (("sig", b"\0" * 63), ("key_id", "text"), ("payload", 5), ("v", 1)):
        broken = {**outer, field: bad}
        assert reason_of(msgpack.packb(broken, use_bin_type=True)) in ("malformed", "version")
    big = seal(b"\0" * 2000, KEY)
    with pytest.raises(WireError) as caught:
        open_signed(big, KEY.public, Limits(max_bytes=1000))
    assert caught.value.reason == "oversize"


def test_without_a_key_wrappers_are_opened_and_plain_messages_pass() -> None:
    payload = glob()
    assert open_signed(seal(payload, OTHER), None) == payload
    assert open_signed(payload, None) == payload
    assert seal(payload, None) == payload


# -- key files -------------------------------------------------------------------------------


def test_a_private_key_readable_by_others_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    write_private(path, KEY.to_pem())
    assert load_signing_key(path).key_id == KEY.key_id
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="'signing_key'.*chmod 600"):
        load_signing_key(path)


def test_key_files_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(tmp_path / "ec.key", pem)
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_signing_key(tmp_path / "ec.key")
    (tmp_path / "pub").write_bytes(KEY.to_pem())  # a private key where a public one belongs
    with pytest.raises(ConfigError, match="'verify_key'"):
        load_verify_key(tmp_path / "pub")
    (tmp_path / "ok.pub").write_bytes(KEY.public.to_pem())
    assert load_verify_key(tmp_path / "ok.pub").key_id == KEY.key_id


def test_keys_never_show_their_material_in_repr() -> None:
    text = repr(KEY) + repr(KEY.public)
    assert KEY.key_id.hex() in text and "PRIVATE" not in text and len(text) < 80


# -- the agent -------------------------------------------------------------------------------


def test_an_agent_with_a_key_trains_on_signed_task_and_global() -> None:
    a = agent()
    a.on_task(seal(TASK, KEY))
    assert a.task is not None
    assert a.on_global(seal(glob(), KEY)) is not None
    assert not a.rejections


def test_an_agent_refuses_a_global_resigned_with_another_key_and_does_not_train() -> None:
    a = agent()
    a.on_task(seal(TASK, KEY))
    assert a.on_global(seal(glob(), OTHER)) is None
    assert a.rejections == {"global:signature": 1}
    assert a.on_global(seal(glob(), KEY)) is not None  # the genuine one still trains


def test_an_agent_refuses_a_global_with_one_byte_flipped() -> None:
    a = agent()
    a.on_task(seal(TASK, KEY))
    sealed = bytearray(seal(glob(), KEY))
    sealed[len(sealed) // 2] ^= 0x01  # inside the weights
    assert a.on_global(bytes(sealed)) is None
    assert a.rejections == {"global:signature": 1}


def test_an_agent_with_a_key_refuses_unsigned_task_and_global() -> None:
    a = agent()
    a.on_task(TASK)
    assert a.task is None and a.rejections == {"task:unsigned": 1}
    a.on_task(seal(TASK, KEY))
    assert a.on_global(glob()) is None
    assert a.rejections["global:unsigned"] == 1


def test_an_agent_without_a_key_behaves_as_before() -> None:
    a = agent(verify=False)
    a.on_task(TASK)
    assert a.on_global(glob()) is not None
    assert a.on_global(seal(glob(2, 2), OTHER)) is not None  # opened, not trusted
