"""``fedge-agent``: one device's agent against any MQTT broker."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import numpy as np

from agent.core import AgentCore
from agent.runtime import AgentRuntime
from fedge.cli_common import EXIT_OK, EXIT_USAGE, add_security_flags, setup_logging
from fedge.config import AgentConfig, load
from fedge.credentials import mqtt_auth
from fedge.errors import FedgeError
from fedge.mqtt import BrokerAddress
from fedge.signing import load_verify_key

log = logging.getLogger("fedge.agent")

EXAMPLE = """example (a device with its own data):
  fedge-agent --broker gateway.local:1883 --federation lab --client-id pi-kitchen \\
      --data /var/lib/fedge/data.npz --state-dir /var/lib/fedge/agent

a device of a secure site (its folder from `fedge-broker init`: TLS, password, signed models):
  fedge-agent --config /etc/fedge/agent.toml --data /var/lib/fedge/data.npz \\
      --state-dir /var/lib/fedge/agent

The data file is an .npz with x (n_samples x n_features, float) and y (n_samples, int labels).
exit codes: 0 stopped, 2 bad configuration or data"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-agent",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on local data; send only model updates.",
    )
    p.add_argument("--config", help="TOML file; flags override its keys")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    values = {k: v for k, v in vars(args).items() if k not in {"config", "log_level"}}
    try:
        config = load(AgentConfig, args.config, values)
        x, y = local_data(config)
        agent = AgentCore(
            config.client_id,
            config.federation,
            x,
            y,
            seed=config.seed,
            state_dir=Path(config.state_dir),
            verify_key=load_verify_key(config.verify_key) if config.verify_key else None,
        )
        auth = mqtt_auth(config)
    except FedgeError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    runtime = AgentRuntime(
        BrokerAddress.parse(config.broker),
        [agent],
        keepalive=config.keepalive,
        auth={config.client_id: auth},
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start()
    log.info(
        "agent %s: %d local examples, broker %s%s%s",
        config.client_id,
        agent.num_examples,
        config.broker,
        " (TLS)" if auth.tls else "",
        ", signed models only" if agent.verify_key else "",
    )
    stop.wait()
    runtime.stop()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
