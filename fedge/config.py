"""Typed, validated configuration for the daemons, from TOML and command-line overrides.

Each daemon has one frozen dataclass. ``load`` reads a TOML table, refuses unknown keys and
bad values with an error naming the file, the key and what is allowed, and returns the
validated value. Command-line flags override file values through ``replace_checked``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from fedge.codecs import DOWNLINK_CODECS, parse_pipeline
from fedge.errors import ConfigError
from fedge.mqtt import BrokerAddress
from fedge.protocol import valid_name
from fedge.timewindow import parse_window

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

C = TypeVar("C")

# The project's broker (broker/mosquitto.conf.in) sets max_keepalive 300, and Mosquitto >= 2.0.12
# refuses an MQTT 3.1.1 client asking for more ("identifier rejected"): it would never connect.
MAX_KEEPALIVE_S = 300


@dataclass(frozen=True)
class AggregatorConfig:
    broker: str = "127.0.0.1:1883"
    federation: str = "default"
    client_id: str = ""  # default: aggregator-<federation> (a persistent MQTT session)
    state_dir: str = "./aggregator-state"
    model: str = "mlp"
    dataset: str = ""  # names the model's input/output size and the evaluation split
    test_data: str = ""  # or an .npz (x, y) to evaluate on
    n_features: int = 0  # needed when neither dataset nor test_data says it
    n_classes: int = 0
    seed: int = 0
    rounds: int = 0  # 0 = run until stopped
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    codec: str = "int8"  # update pipeline, e.g. "int8", "int4:block=1024", "topk:0.05+int8+zstd"
    error_feedback: str = "auto"  # auto (on for biased codecs: topk, sign, nearest) | on | off
    downlink: str = "float32"  # how the global model travels: float32 | float16
    fraction: float = 1.0
    min_clients: int = 1
    target_clients: int = 0
    start_clients: int = 0  # open the first round once this many agents are online
    round_timeout_s: float = 60.0
    max_update_norm: float = 0.0
    max_update_bytes: int = 4 * 1024 * 1024
    # a secured site (fedge-broker init): relative paths are relative to the config file
    username: str = ""
    password_file: str = ""  # first line is the MQTT password; mode 0600
    ca_file: str = ""  # TLS on when set: the CA that signed the broker's certificate
    cert_file: str = ""  # optional TLS client certificate ...
    key_file: str = ""  # ... and its private key (mode 0600)
    signing_key: str = ""  # Ed25519 private key (PEM, mode 0600): task and global are signed
    history: str = ""
    ship_model: bool = False  # put the model file (.tflite) into the retained task
    short_round: str = "extend"  # deadline without quorum: extend | rerun (drop and retrain)
    clients_file: str = ""  # enrolled client ids, one per line; others are refused
    checkpoint_batch: int = 32  # accepted updates per round-snapshot write (at most)
    checkpoint_interval_s: float = 1.0  # ... or this long after the first unsaved one

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"aggregator-{self.federation}"[:64]

    @property
    def use_error_feedback(self) -> bool:
        if self.error_feedback == "auto":
            return parse_pipeline(self.codec).biased
        return self.error_feedback == "on"

    def validate(self) -> None:
        _check_broker(self.broker)
        _check(valid_name(self.federation), "federation", self.federation, "1-64 of [A-Za-z0-9_.-]")
        _check(
            not self.client_id or valid_name(self.client_id),
            "client_id",
            self.client_id,
            "1-64 of [A-Za-z0-9_.-]",
        )
        try:
            parse_pipeline(self.codec)
        except ValueError as exc:
            raise ConfigError(f"key 'codec': {exc}") from None
        _check(
            self.error_feedback in ("auto", "on", "off"),
            "error_feedback",
            self.error_feedback,
            "auto, on or off",
        )
        _check(
            self.downlink in DOWNLINK_CODECS,
            "downlink",
            self.downlink,
            " or ".join(DOWNLINK_CODECS),
        )
        _check(self.rounds >= 0, "rounds", self.rounds, ">= 0")
        _check(1 <= self.epochs <= 1000, "epochs", self.epochs, "1..1000")
        _check(1 <= self.batch_size <= 1 << 20, "batch_size", self.batch_size, ">= 1")
        _check(0 < self.lr <= 100, "lr", self.lr, "0 < lr <= 100")
        _check(0 < self.fraction <= 1, "fraction", self.fraction, "0 < fraction <= 1")
        _check(self.min_clients >= 1, "min_clients", self.min_clients, ">= 1")
        _check(
            self.target_clients == 0 or self.target_clients >= self.min_clients,
            "target_clients",
            self.target_clients,
            "0 (all sampled) or >= min_clients",
        )
        _check(self.start_clients >= 0, "start_clients", self.start_clients, ">= 0")
        _check(self.round_timeout_s > 0, "round_timeout_s", self.round_timeout_s, "> 0")
        _check(
            self.short_round in ("extend", "rerun"), "short_round", self.short_round, "extend|rerun"
        )
        _check(
            1 <= self.checkpoint_batch <= 1000, "checkpoint_batch", self.checkpoint_batch, "1..1000"
        )
        _check(
            0 <= self.checkpoint_interval_s <= 60,
            "checkpoint_interval_s",
            self.checkpoint_interval_s,
            "0..60 seconds",
        )
        _check(self.max_update_norm >= 0, "max_update_norm", self.max_update_norm, ">= 0")
        _check(
            1024 <= self.max_update_bytes <= 256 << 20,
            "max_update_bytes",
            self.max_update_bytes,
            "1 KiB .. 256 MiB",
        )
        _check(
            bool(self.dataset or self.test_data or (self.n_features and self.n_classes)),
            "dataset",
            self.dataset,
            "a dataset name, test_data, or n_features + n_classes",
        )
        _check_secured(self)


@dataclass(frozen=True)
class AgentConfig:
    broker: str = "127.0.0.1:1883"
    federation: str = "default"
    client_id: str = ""
    state_dir: str = "./agent-state"
    data: str = ""  # .npz with x (n, features) and y (n,) -- the device's own data
    dataset: str = ""  # or, for emulation: a bundled dataset partition
    partition: str = "iid"
    num_clients: int = 1
    client_index: int = 0
    seed: int = 0
    keepalive: int = 30
    # a secured site (fedge-broker init): relative paths are relative to the config file
    username: str = ""  # must equal client_id: the broker's ACL is by username
    password_file: str = ""  # first line is the MQTT password; mode 0600
    ca_file: str = ""  # TLS on when set: the CA that signed the broker's certificate
    cert_file: str = ""  # optional TLS client certificate ...
    key_file: str = ""  # ... and its private key (mode 0600)
    verify_key: str = ""  # the aggregator's Ed25519 public key: refuse unsigned task/global
    # eligibility, checked before each training job (0 or "": no limit); see docs/deploy.md
    max_load: float = 0.0  # 1-minute load average per CPU
    max_temp_c: float = 0.0  # hottest thermal zone, degrees Celsius
    min_free_mb: int = 0  # MemAvailable, MiB
    train_window: str = ""  # local time "HH:MM-HH:MM"; may wrap midnight ("22:00-06:00")
    recheck_s: float = 30.0  # while declined: check again this often, the round still open
    sysfs_root: str = "/"  # where /proc and /sys are read (tests point it at a fake tree)

    def validate(self) -> None:
        _check_broker(self.broker)
        _check(valid_name(self.federation), "federation", self.federation, "1-64 of [A-Za-z0-9_.-]")
        _check(valid_name(self.client_id), "client_id", self.client_id, "1-64 of [A-Za-z0-9_.-]")
        _check(
            bool(self.data) != bool(self.dataset),
            "data",
            self.data,
            "exactly one of data (an .npz file) or dataset",
        )
        _check(self.num_clients >= 1, "num_clients", self.num_clients, ">= 1")
        _check(
            0 <= self.client_index < self.num_clients,
            "client_index",
            self.client_index,
            "0 <= client_index < num_clients",
        )
        _check(
            5 <= self.keepalive <= MAX_KEEPALIVE_S,
            "keepalive",
            self.keepalive,
            f"5..{MAX_KEEPALIVE_S} seconds (the broker's max_keepalive)",
        )
        _check(
            not self.username or self.username == self.client_id,
            "client_id",
            self.client_id,
            f"the username {self.username!r} (the broker's ACL is by username)",
        )
        _check_secured(self)
        _check(0 <= self.max_load <= 1000, "max_load", self.max_load, "0 (off) .. 1000")
        _check(0 <= self.max_temp_c <= 150, "max_temp_c", self.max_temp_c, "0 (off) .. 150")
        _check(0 <= self.min_free_mb <= 1 << 20, "min_free_mb", self.min_free_mb, "0 (off) .. 2^20")
        try:
            if self.train_window:
                parse_window(self.train_window)
        except ValueError as exc:
            raise ConfigError(f"key 'train_window': {exc}") from None
        _check(1 <= self.recheck_s <= 3600, "recheck_s", self.recheck_s, "1..3600 seconds")
        _check(
            Path(self.sysfs_root).is_dir(), "sysfs_root", self.sysfs_root, "an existing directory"
        )


def load(cls: type[C], path: str | Path | None, overrides: dict[str, Any] | None = None) -> C:
    """Config from a TOML file (optional) plus overrides (None values ignored), validated."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                values = dict(tomllib.load(handle))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        values = _relative_to(values, Path(path).absolute().parent)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(cls, values, source)


def _build(cls: type[C], values: dict[str, Any], source: str) -> C:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(known)}")
    for key, value in values.items():
        expected = type(getattr(cls(), key))  # the default's type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: key {key!r} must be {expected.__name__}, got {value!r}")
    config = cls(**values)
    try:
        config.validate()  # type: ignore[attr-defined]
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def render(config: object, source: str = "") -> str:
    """The effective config as TOML: every key, the ones left at their default marked.

    Nothing needs masking: a config holds the *paths* of secret files, never a secret
    (fedge/credentials.py reads them), so printing a config shows no password.
    """
    lines = [f"# effective configuration{f' from {source}' if source else ''}"]
    defaults = type(config)()
    for item in fields(config):  # type: ignore[arg-type]
        value = getattr(config, item.name)
        mark = "  # default" if value == getattr(defaults, item.name) else ""
        lines.append(f"{item.name} = {toml_value(value)}{mark}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """A TOML literal for the value types configs use (str, bool, int, float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def replace_checked(config: C, **changes: Any) -> C:
    config = dataclasses.replace(config, **changes)  # type: ignore[type-var]
    config.validate()  # type: ignore[attr-defined]
    return config


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"key {key!r}: {value!r} is not allowed; expected {allowed}")


FILE_KEYS = (
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "signing_key",
    "verify_key",
    "clients_file",
)
"""Keys naming security files: relative to their config file, so a device folder can move."""


def _relative_to(values: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(values)
    for key in FILE_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            out[key] = str(base / value)
    return out


def _check_secured(config: Any) -> None:
    """TLS and credential keys that only make sense together."""
    _check(
        not config.password_file or bool(config.username),
        "password_file",
        config.password_file,
        "a username to go with it",
    )
    _check(
        bool(config.cert_file) == bool(config.key_file),
        "cert_file",
        config.cert_file,
        "cert_file and key_file together",
    )
    _check(
        not config.cert_file or bool(config.ca_file),
        "ca_file",
        config.ca_file,
        "a CA file whenever a client certificate is used",
    )


def _check_broker(text: str) -> None:
    try:
        BrokerAddress.parse(text)
    except ValueError as exc:
        raise ConfigError(f"key 'broker': {exc}") from None
