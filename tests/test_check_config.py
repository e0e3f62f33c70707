"""``--check-config``: the effective config printed as TOML, every bad config refused with the
key named, secrets never printed; the example configs list every key with its true default."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from agent import cli as agent_cli
from aggregator import cli as aggregator_cli
from fedge.config import AgentConfig, AggregatorConfig, load
from fedge.data import load_dataset, save_npz
from fedge.signing import SigningKey, write_private

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EXAMPLES = {"agent": AgentConfig, "aggregator": AggregatorConfig}
PASSWORD = "s3cret-password-never-printed"


def secure_folder(folder: Path) -> Path:
    """What `fedge-broker init` puts next to a config: password, CA, keys (real files)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_private(folder / "password", (PASSWORD + "\n").encode())
    key = SigningKey.generate()
    write_private(folder / "signing.key", key.to_pem())
    (folder / "signing.pub").write_bytes(key.public.to_pem())
    (folder / "ca.crt").write_text("not parsed before connecting\n")
    data = load_dataset("digits", seed=0)
    save_npz(folder / "data.npz", data.x_train[:40], data.y_train[:40])
    save_npz(folder / "test.npz", data.x_test[:40], data.y_test[:40])
    return folder


def example(name: str, folder: Path) -> Path:
    """The shipped example, its absolute placeholder paths moved into ``folder``."""
    text = (DEPLOY / f"{name}.example.toml").read_text()
    text = text.replace("/var/lib/fedge/aggregator/test.npz", str(folder / "test.npz"))
    text = text.replace("/var/lib/fedge/data.npz", str(folder / "data.npz"))
    text = re.sub(r'"/var/lib/fedge/([a-z]+)', lambda m: f'"{folder}/state-{m.group(1)}', text)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def run_check(name: str, path: Path, capsys, *flags: str) -> tuple[int, str, str]:
    main = agent_cli.main if name == "agent" else aggregator_cli.main
    code = main(["--check-config", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_lists_every_key_and_its_commented_values_are_the_defaults(name) -> None:
    text = (DEPLOY / f"{name}.example.toml").read_text()
    cls = EXAMPLES[name]
    defaults = cls()
    for item in dataclasses.fields(cls):
        lines = re.findall(rf"^(# )?{item.name} = (.*)$", text, flags=re.MULTILINE)
        assert len(lines) == 1, f"{item.name}: {len(lines)} lines in the example, want 1"
        commented, value = lines[0]
        if commented:
            parsed = tomllib.loads(f"v = {value}")["v"]
            assert parsed == getattr(defaults, item.name), f"{item.name}: stale default"
    keys = set(re.findall(r"^(?:# )?([a-z_]+) = ", text, flags=re.MULTILINE))
    assert keys == {f.name for f in dataclasses.fields(cls)}  # no key the config lacks


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_is_valid_and_its_effective_config_round_trips(name, tmp_path, capsys) -> None:
    folder = secure_folder(tmp_path / "conf")
    code, out, err = run_check(name, example(name, folder), capsys)
    assert code == 0, err
    printed = tomllib.loads(out)  # valid TOML: reusable as a config file
    cls = EXAMPLES[name]
    assert list(printed) == [f.name for f in dataclasses.fields(cls)]  # every key, in order
    assert printed["password_file"] == str(folder / "password")  # absolute, relative to it
    assert "state_dir = " in out and "# default" in out
    again = tmp_path / "effective.toml"
    again.write_text(out)
    assert load(cls, again) == load(cls, example(name, folder))
    assert PASSWORD not in out + err  # secrets are files: their path is shown, never content


AGENT_BAD = [
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"keepalive": "30"}, "key 'keepalive' must be int"),
    ({"max_temp_c": True}, "key 'max_temp_c' must be float"),
    ({"broker": "gateway:99999"}, "key 'broker'"),
    ({"federation": "a/b"}, "key 'federation'"),
    ({"client_id": "x y"}, "key 'client_id'"),
    ({"keepalive": 2}, "key 'keepalive'"),
    ({"dataset": "digits"}, "key 'data'"),  # both data and dataset
    ({"num_clients": 0}, "key 'num_clients'"),
    ({"client_index": 5}, "key 'client_index'"),
    ({"username": "someone-else"}, "key 'client_id'"),
    ({"max_load": -1.0}, "key 'max_load'"),
    ({"max_temp_c": 400.0}, "key 'max_temp_c'"),
    ({"min_free_mb": -5}, "key 'min_free_mb'"),
    ({"train_window": "22:00"}, "key 'train_window'"),
    ({"recheck_s": 0.5}, "key 'recheck_s'"),
    ({"sysfs_root": "/no/such/root"}, "key 'sysfs_root'"),
    ({"cert_file": "client.crt"}, "key 'cert_file'"),  # without key_file
    ({"password_file": "missing"}, "key 'password_file'"),
    ({"verify_key": "missing.pub"}, "key 'verify_key'"),
    ({"verify_key": "password"}, "key 'verify_key'"),  # not a public key
    ({"data": "/no/such/data.npz"}, "key 'data'"),
]

AGGREGATOR_BAD = [
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"rounds": 1.5}, "key 'rounds' must be int"),
    ({"ship_model": "yes"}, "key 'ship_model' must be bool"),
    ({"broker": "a:b:c"}, "key 'broker'"),
    ({"federation": ""}, "key 'federation'"),
    ({"client_id": "agg/1"}, "key 'client_id'"),
    ({"codec": "int9"}, "key 'codec'"),
    ({"error_feedback": "maybe"}, "key 'error_feedback'"),
    ({"downlink": "int8"}, "key 'downlink'"),
    ({"rounds": -1}, "key 'rounds'"),
    ({"epochs": 0}, "key 'epochs'"),
    ({"batch_size": 0}, "key 'batch_size'"),
    ({"lr": 0.0}, "key 'lr'"),
    ({"fraction": 1.5}, "key 'fraction'"),
    ({"min_clients": 0}, "key 'min_clients'"),
    ({"target_clients": 1}, "key 'target_clients'"),  # below min_clients = 2
    ({"start_clients": -1}, "key 'start_clients'"),
    ({"round_timeout_s": 0.0}, "key 'round_timeout_s'"),
    ({"short_round": "wait"}, "key 'short_round'"),
    ({"checkpoint_batch": 0}, "key 'checkpoint_batch'"),
    ({"checkpoint_interval_s": 90.0}, "key 'checkpoint_interval_s'"),
    ({"max_update_norm": -1.0}, "key 'max_update_norm'"),
    ({"max_update_bytes": 10}, "key 'max_update_bytes'"),
    ({"model": "resnet"}, "key 'model'"),
    ({"model": "mlp:0"}, "key 'model'"),
    ({"test_data": "/no/such/test.npz"}, "key 'test_data'"),
    ({"clients_file": "/no/such/clients"}, "key 'clients_file'"),
    ({"password_file": "missing"}, "key 'password_file'"),
    ({"signing_key": "signing.pub"}, "key 'signing_key'"),  # a public key is not a private one
    ({"username": ""}, "key 'password_file'"),  # a password without a username
]


def edited(path: Path, changes: dict[str, object]) -> Path:
    from fedge.config import toml_value

    text = path.read_text()
    for key, value in changes.items():
        line = f"{key} = {toml_value(value)}"
        text, n = re.subn(rf"^(# )?{key} = .*$", line, text, flags=re.MULTILINE)
        if not n:
            text += line + "\n"
    out = path.with_name("bad.toml")
    out.write_text(text)
    return out


@pytest.mark.parametrize(("changes", "named"), AGENT_BAD, ids=[str(c) for c, _ in AGENT_BAD])
def test_the_agent_refuses_each_bad_config_naming_the_key(changes, named, tmp_path, capsys):
    path = edited(example("agent", secure_folder(tmp_path)), changes)
    code, out, err = run_check("agent", path, capsys)
    assert (code, out) == (2, "")
    assert named in err and err.startswith("fedge-agent: ")


@pytest.mark.parametrize(
    ("changes", "named"), AGGREGATOR_BAD, ids=[str(c) for c, _ in AGGREGATOR_BAD]
)
def test_the_aggregator_refuses_each_bad_config_naming_the_key(changes, named, tmp_path, capsys):
    path = edited(example("aggregator", secure_folder(tmp_path)), changes)
    code, out, err = run_check("aggregator", path, capsys)
    assert (code, out) == (2, "")
    assert named in err and err.startswith("fedge-aggregator: ")


@pytest.mark.parametrize(("name", "secret"), [("agent", "password"), ("aggregator", "signing.key")])
def test_a_secret_others_can_read_is_refused_naming_its_key(name, secret, tmp_path, capsys):
    folder = secure_folder(tmp_path)
    os.chmod(folder / secret, 0o644)
    code, _, err = run_check(name, example(name, folder), capsys)
    key = "password_file" if secret == "password" else "signing_key"
    assert code == 2 and f"key {key!r}" in err and "chmod 600" in err


def test_flags_override_the_file_in_the_effective_config(tmp_path, capsys) -> None:
    path = example("agent", secure_folder(tmp_path))
    code, out, _ = run_check("agent", path, capsys, "--max-load", "0.75", "--keepalive", "60")
    assert code == 0
    printed = tomllib.loads(out)
    assert (printed["max_load"], printed["keepalive"]) == (0.75, 60)


@pytest.mark.parametrize("module", ["agent.cli", "aggregator.cli"])
def test_the_real_cli_exits_2_on_a_bad_config_and_0_on_a_good_one(module, tmp_path) -> None:
    name = module.split(".")[0]
    good = example(name, secure_folder(tmp_path))
    bad = edited(good, {"federation": "no spaces allowed"})
    run = [sys.executable, "-m", module, "--check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "# valid:" in ok.stdout, ok.stderr
    refused = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "key 'federation'" in refused.stderr


def test_a_checkpoint_of_another_model_exits_2_so_systemd_does_not_restart_it(tmp_path) -> None:
    """RestartPreventExitStatus=2: a state dir that belongs to another model is a config
    problem no restart fixes (the check happens before connecting: no broker needed)."""
    import numpy as np

    from aggregator import checkpoint

    weights = {"w": np.zeros(3, np.float32)}
    saved = checkpoint.Checkpoint(2, weights, b"\x01" * 32, False, {}, {})
    checkpoint.save(tmp_path / "state", saved)
    done = subprocess.run(
        [sys.executable, "-m", "aggregator.cli", "--broker", "127.0.0.1:9", "--dataset",
         "digits", "--model", "logreg", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "checkpoint is for another model" in done.stderr
