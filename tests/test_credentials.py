"""Secrets from private files, security keys in the daemons' configs (relative to the file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedge.config import AgentConfig, AggregatorConfig, load
from fedge.credentials import MqttAuth, TlsFiles, mqtt_auth, read_secret
from fedge.errors import ConfigError


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_secret_is_the_first_line_of_a_private_file(tmp_path: Path) -> None:
    assert read_secret(private(tmp_path / "pw", "s3cret\nignored\n"), "password_file") == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_secret_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = private(tmp_path / "pw", "s3cret\n", mode)
    with pytest.raises(ConfigError, match="'password_file'.*group or others") as caught:
        read_secret(path, "password_file")
    assert "s3cret" not in str(caught.value)


def test_missing_empty_and_non_file_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(tmp_path / "absent", "password_file")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(private(tmp_path / "empty", "\n"), "password_file")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret(tmp_path, "password_file")


def test_the_password_never_appears_in_repr() -> None:
    auth = MqttAuth("dev-1", "hunter2-very-secret", TlsFiles("ca.crt"))
    assert "hunter2" not in repr(auth) and "dev-1" in repr(auth)


def test_security_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "devices" / "dev-1"
    folder.mkdir(parents=True)
    private(folder / "password", "pw-1\n")
    (folder / "ca.crt").write_text("not needed to load the config")
    (folder / "agent.toml").write_text(
        'client_id = "dev-1"\nusername = "dev-1"\npassword_file = "password"\n'
        'ca_file = "ca.crt"\nverify_key = "signing.pub"\ndataset = "digits"\n'
    )
    config = load(AgentConfig, folder / "agent.toml")
    assert config.password_file == str(folder / "password")
    assert config.verify_key == str(folder / "signing.pub")
    auth = mqtt_auth(config)
    assert auth.username == "dev-1" and auth.password == "pw-1"
    assert auth.tls == TlsFiles(str(folder / "ca.crt"))
    flag = load(AgentConfig, folder / "agent.toml", {"ca_file": "elsewhere.crt"})
    assert flag.ca_file == "elsewhere.crt"  # a flag is relative to where the user is


def test_security_keys_that_only_work_together_are_checked_by_name() -> None:
    base = {"client_id": "dev-1", "dataset": "digits"}
    cases = [
        ({"password_file": "pw"}, "'password_file'"),
        ({"username": "dev-1", "cert_file": "c.crt", "ca_file": "ca"}, "'cert_file'"),
        ({"username": "dev-1", "cert_file": "c", "key_file": "k"}, "'ca_file'"),
        ({"username": "dev-2"}, "'client_id'"),
    ]
    for extra, key in cases:
        with pytest.raises(ConfigError, match=key):
            load(AgentConfig, None, {**base, **extra})
    with pytest.raises(ConfigError, match="'password_file'"):
        load(AggregatorConfig, None, {"dataset": "digits", "password_file": "pw"})


def test_a_client_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    private(tmp_path / "client.key", "key", 0o644)
    config = load(
        AgentConfig,
        None,
        {
            "client_id": "d",
            "dataset": "digits",
            "ca_file": str(private(tmp_path / "ca.crt", "ca", 0o644)),
            "cert_file": str(private(tmp_path / "c.crt", "c", 0o644)),
            "key_file": str(tmp_path / "client.key"),
        },
    )
    with pytest.raises(ConfigError, match="'key_file'"):
        mqtt_auth(config)
