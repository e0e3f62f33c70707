"""``fedge-agent``: one device's agent against any MQTT broker."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agent.core import AgentCore
from agent.eligibility import Conditions
from agent.runtime import AgentRuntime
from fedge.cli_common import EXIT_OK, EXIT_USAGE, add_security_flags, setup_logging
from fedge.config import AgentConfig, load, render
from fedge.credentials import MqttAuth, mqtt_auth
from fedge.errors import ConfigError, DataError, FedgeError
from fedge.mqtt import BrokerAddress
from fedge.sdnotify import Notifier
from fedge.signing import load_verify_key

log = logging.getLogger("fedge.agent")

EXAMPLE = """example (a device with its own data):
  fedge-agent --broker gateway.local:1883 --federation lab --client-id pi-kitchen \\
      --data /var/lib/fedge/data.npz --state-dir /var/lib/fedge/agent

a device of a secure site (its folder from `fedge-broker init`: TLS, password, signed models):
  fedge-agent --config /etc/fedge/agent.toml --data /var/lib/fedge/data.npz \\
      --state-dir /var/lib/fedge/agent

check a config file (prints the effective config, every key; secrets are files, never shown):
  fedge-agent --check-config /etc/fedge/agent/agent.toml

The data file is an .npz with x (n_samples x n_features, float) and y (n_samples, int labels).
Under systemd (Type=notify) it reports READY, WATCHDOG and STATUS; SIGTERM abandons a running
training at its next step, publishes status offline and exits 0. See docs/deploy.md.
exit codes: 0 stopped (or config valid), 2 bad configuration or data"""

LOOP_PERIOD_S = 1.0  # the main loop: watchdog, eligibility rechecks, STATUS
LOOP_SILENCE_S = 30.0  # a network loop silent this long is wedged: stop the watchdog pings
READY_WAIT_S = 10.0  # READY once connected, or after this long (a device may be offline)
TRAINING_GRACE_S = 10.0  # at SIGTERM, how long a training step may take to notice


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-agent",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on local data; send only model updates.",
    )
    p.add_argument("--config", help="TOML file; flags override its keys")
    p.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE (with the flags given), print the effective config, exit 0 or 2",
    )
    p.add_argument("--broker", help="HOST:PORT of the MQTT broker")
    p.add_argument("--federation")
    p.add_argument("--client-id")
    p.add_argument("--state-dir")
    p.add_argument("--data", help=".npz with x and y: this device's data")
    p.add_argument("--dataset", help="emulation: a bundled dataset (digits | breast_cancer)")
    p.add_argument("--partition", help="emulation: iid | dirichlet:ALPHA")
    p.add_argument("--num-clients", type=int, help="emulation: clients sharing the dataset")
    p.add_argument("--client-index", type=int, help="emulation: this client's share")
    p.add_argument("--seed", type=int)
    p.add_argument("--keepalive", type=int)
    add_security_flags(p)
    p.add_argument("--verify-key", help="the aggregator's public key: refuse unsigned models")
    p.add_argument("--max-load", type=float, help="decline above this load average per CPU")
    p.add_argument("--max-temp-c", type=float, help="decline above this CPU temperature")
    p.add_argument("--min-free-mb", type=int, help="decline below this much available memory")
    p.add_argument("--train-window", help="train only in this local time window, HH:MM-HH:MM")
    p.add_argument("--log-level", default="INFO")
    return p


def local_data(config: AgentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The device's own file, or its share of a bundled dataset when emulating."""
    if config.data:
        from fedge.data import load_npz

        return load_npz(config.data)
    from fedge.data import emulated_split

    data, parts = emulated_split(
        config.dataset, config.num_clients, config.partition, seed=config.seed
    )
    index = parts[config.client_index]
    return data.x_train[index], data.y_train[index]


def prepare(config: AgentConfig) -> tuple[AgentCore, MqttAuth, Conditions]:
    """Everything a start needs, read and checked now: data, verify key, secrets, conditions."""
    try:
        x, y = local_data(config)
    except DataError as exc:
        raise ConfigError(f"key {'data' if config.data else 'dataset'!r}: {exc}") from None
    agent = AgentCore(
        config.client_id,
        config.federation,
        x,
        y,
        seed=config.seed,
        state_dir=Path(config.state_dir),
        verify_key=load_verify_key(config.verify_key) if config.verify_key else None,
    )
    conditions = Conditions(
        config.max_load, config.max_temp_c, config.min_free_mb, config.train_window
    )
    return agent, mqtt_auth(config), conditions


def check_config(path: str, overrides: dict[str, object]) -> int:
    """``--check-config``: the effective config on stdout, or the error (naming the key)."""
    try:
        config = load(AgentConfig, path, overrides)
        agent, auth, _ = prepare(config)
    except FedgeError as exc:
        print(f"fedge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render(config, path), end="")
    link = "TLS" if auth.tls else "plaintext"
    models = "signed models only" if agent.verify_key else "unsigned models accepted"
    print(f"# valid: {agent.num_examples} local examples, {link}, {models}")
    return EXIT_OK


def serve(
    runtime: AgentRuntime,
    notifier: Notifier,
    stop: threading.Event,
    period: float = LOOP_PERIOD_S,
    max_silence: float = LOOP_SILENCE_S,
) -> None:
    """The main thread's loop until ``stop``: READY once connected (or after READY_WAIT_S),
    the watchdog only while the network loop is alive, eligibility rechecks, STATUS."""
    if notifier.watchdog_s:  # several passes per ping interval, whatever WatchdogSec is
        period = min(period, notifier.watchdog_s / 4)
    started = time.monotonic()
    ready, was_alive = False, True
    while not stop.is_set():
        now = time.monotonic()
        if not ready and (runtime.wait_connected(0) or now - started >= READY_WAIT_S):
            notifier.ready(runtime.summary())
            ready = True
        alive = runtime.alive(max_silence)
        if alive:
            notifier.watchdog(now)
        elif was_alive:  # once per episode: systemd restarts us if it lasts WatchdogSec
            log.error("the network loop is not responding; watchdog pings withheld")
        was_alive = alive
        runtime.tick(now)
        if ready:
            notifier.status(runtime.summary())
        stop.wait(min(period, 0.1) if not ready else period)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skip = {"config", "check_config", "log_level"}
    values = {k: v for k, v in vars(args).items() if k not in skip}
    if args.check_config:
        return check_config(args.check_config, values)
    setup_logging(args.log_level)
    notifier = Notifier()
    try:
        config = load(AgentConfig, args.config, values)
        agent, auth, conditions = prepare(config)
    except FedgeError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    runtime = AgentRuntime(
        BrokerAddress.parse(config.broker),
        [agent],
        keepalive=config.keepalive,
        auth={config.client_id: auth},
        conditions=conditions,
        sysfs_root=config.sysfs_root,
        recheck_s=config.recheck_s,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        notifier.stopping()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    runtime.start()
    log.info(
        "agent %s: %d local examples, broker %s%s%s%s",
        config.client_id,
        agent.num_examples,
        config.broker,
        " (TLS)" if auth.tls else "",
        ", signed models only" if agent.verify_key else "",
        ", eligibility checked" if conditions.any else "",
    )
    serve(runtime, notifier, stop)
    if not runtime.stop(training_grace=TRAINING_GRACE_S):
        # A step that ignores the stop (a long native call): exit without joining its thread.
        # Nothing is lost: the state file is only ever replaced atomically.
        log.warning("training did not stop within %.0f s; exiting anyway", TRAINING_GRACE_S)
        logging.shutdown()
        os._exit(EXIT_OK)
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
