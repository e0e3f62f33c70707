"""One emulator worker process: many agents sharing one network loop and one trainer.

Started by ``fedge-fleet``; each agent is a real MQTT client with its own id and will.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from agent.core import AgentCore
from agent.runtime import AgentRuntime
from fedge.cli_common import setup_logging
from fedge.config import AgentConfig, load
from fedge.credentials import MqttAuth, mqtt_auth
from fedge.data import emulated_split
from fedge.mqtt import BrokerAddress
from fedge.signing import VerifyKey, load_verify_key

log = logging.getLogger("fedge.fleet.worker")


def client_name(index: int) -> str:
    return f"client-{index:04d}"


def device_security(args: argparse.Namespace, name: str) -> tuple[MqttAuth, VerifyKey]:
    """Credentials and verify key from the device's provisioned folder, as a device reads them."""
    config = load(
        AgentConfig,
        Path(args.site) / "devices" / name / "agent.toml",
        {"broker": args.broker, "dataset": args.dataset},
    )
    return mqtt_auth(config), load_verify_key(config.verify_key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fleet.worker")
    p.add_argument("--broker", required=True)
    p.add_argument("--federation", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--partition", required=True)
    p.add_argument("--num-clients", type=int, required=True)
    p.add_argument("--indices", required=True, help="comma-separated client indices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-root", required=True)
    p.add_argument("--site", help="a secure site: each agent uses its devices/<name>/ folder")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    data, parts = emulated_split(args.dataset, args.num_clients, args.partition, seed=args.seed)
    agents, auth = [], {}
    for index in (int(i) for i in args.indices.split(",") if i):
        rows = parts[index]
        verify_key = None
        if args.site:
            auth[client_name(index)], verify_key = device_security(args, client_name(index))
        agents.append(
            AgentCore(
                client_name(index),
                args.federation,
                data.x_train[rows],
                data.y_train[rows],
                seed=args.seed + index,
                state_dir=Path(args.state_root) / client_name(index),
                verify_key=verify_key,
            )
        )
    runtime = AgentRuntime(BrokerAddress.parse(args.broker), agents, auth=auth)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start()
    log.info("worker %d: %d agents", os.getpid(), len(agents))
    stop.wait()
    runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
