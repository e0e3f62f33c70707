"""``fedge-fleet``: a whole federation on this machine, for real.

Starts a private Mosquitto on a free loopback port, W worker processes hosting N agents
(each agent its own MQTT client), and the aggregator; prints one line per round; writes a
JSON Lines history; stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aggregator.daemon import Aggregator
from broker import LocalBroker
from broker.site import init_site
from broker.site_broker import SiteBroker
from fedge.cli_common import (
    CODEC_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    setup_logging,
)
from fedge.config import AggregatorConfig, load
from fedge.errors import FedgeError
from fleet.baseline import centralised_baseline
from fleet.progress import RoundPrinter
from fleet.worker import client_name

log = logging.getLogger("fedge.fleet")

EXAMPLE = """example:
  fedge-fleet --clients 20 --rounds 20 --dataset digits --partition dirichlet:0.5 --seed 0

exit codes: 0 all rounds done, 1 the federation failed (a worker died, a round never
closed, timeout), 2 bad arguments, 130 interrupted"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-fleet",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Emulate a federated fleet on this machine.",
    )
    p.add_argument("--clients", type=int, default=20, help="number of agents (default 20)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--dataset", default="digits", choices=["digits", "breast_cancer"])
    p.add_argument("--partition", default="dirichlet:0.5", help="iid | dirichlet:ALPHA")
    p.add_argument(
        "--model", default="mlp", help="logreg | mlp | mlp:H | mlp:H1,H2 | conv8 | tflite:NAME"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--codec",
        default="int8",
        help=CODEC_HELP,
    )
    p.add_argument("--error-feedback", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--downlink", default="float32", choices=["float32", "float16"])
    p.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--min-clients", type=int, default=1)
    p.add_argument("--round-timeout", type=float, default=60.0)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="agent host processes (default: one per CPU core, at most N)",
    )
    p.add_argument("--history", help="JSON Lines file, one object per round")
    p.add_argument("--workdir", help="keep broker, state and logs here (default: temporary)")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    p.add_argument(
        "--centralised-baseline",
        action="store_true",
        help="also train the same model on all training data and print its accuracy",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="a secure site: TLS, a password and ACL per agent, signed task and global",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


class Fleet:
    """Everything one emulation started, so that one ``stop`` ends all of it."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.site_dir = workdir / "site" if args.secure else None
        self.broker = LocalBroker(workdir=workdir / "broker")
        if self.site_dir is not None:  # every agent gets its own provisioned device folder
            names = [client_name(i) for i in range(args.clients)]
            init_site(self.site_dir, "fleet", names)
            self.broker = SiteBroker(self.site_dir)
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_workers(self) -> None:
        count = self.args.workers or min(self.args.clients, os.cpu_count() or 1)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for w in range(count):
            indices = ",".join(str(i) for i in range(w, self.args.clients, count))
            cmd = [
                sys.executable,
                "-m",
                "fleet.worker",
                "--broker",
                self.broker.address,
                "--federation",
                "fleet",
                "--dataset",
                self.args.dataset,
                "--partition",
                self.args.partition,
                "--num-clients",
                str(self.args.clients),
                "--indices",
                indices,
                "--seed",
                str(self.args.seed),
                "--state-root",
                str(self.workdir / "agents"),
                "--log-level",
                self.args.log_level,
            ]
            if self.site_dir is not None:
                cmd += ["--site", str(self.site_dir)]
            with open(logs / f"worker-{w}.log", "wb") as out:
                self.workers.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                )

    def dead_workers(self) -> list[int]:
        return [w.returncode for w in self.workers if w.poll() is not None]

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for worker in self.workers:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.broker.stop()


def aggregator_config(
    args: argparse.Namespace, workdir: Path, broker: str, site_dir: Path | None = None
) -> AggregatorConfig:
    """The run's settings; in a secure run on top of the site's own aggregator.toml."""
    return load(
        AggregatorConfig,
        site_dir / "aggregator" / "aggregator.toml" if site_dir else None,
        {
            "broker": broker,
            "federation": "fleet",
            "state_dir": str(workdir / "aggregator"),
            "model": args.model,
            "dataset": args.dataset,
            "seed": args.seed,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "codec": args.codec,
            "error_feedback": args.error_feedback,
            "downlink": args.downlink,
            "fraction": args.fraction,
            "min_clients": args.min_clients,
            "start_clients": args.clients,
            "round_timeout_s": args.round_timeout,
            "history": args.history or "",
        },
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.clients < 1 or args.rounds < 1:
        print("fedge-fleet: --clients and --rounds must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    if args.history and Path(args.history).exists():
        Path(args.history).unlink()  # a history describes one run
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fedge-fleet-"))
    fleet = Fleet(args, workdir)
    stop = threading.Event()
    interrupted = threading.Event()

    def on_signal(*_: Any) -> None:
        interrupted.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return run(args, fleet, workdir, stop, interrupted)
    except FedgeError as exc:
        print(f"fedge-fleet: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.reason == "config" else EXIT_FAILED
    finally:
        fleet.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run(
    args: argparse.Namespace,
    fleet: Fleet,
    workdir: Path,
    stop: threading.Event,
    interrupted: threading.Event,
) -> int:
    fleet.broker.start()
    config = aggregator_config(args, workdir, fleet.broker.address, fleet.site_dir)
    printer = RoundPrinter(args.rounds, args.clients)
    aggregator = Aggregator(config, on_round=printer.line)
    secure = " (TLS, a password and ACL per agent, signed models)" if args.secure else ""
    printer.header(args, aggregator, fleet.broker.address + secure)
    if args.centralised_baseline:
        printer.baseline(centralised_baseline(args))
    fleet.start_workers()
    outcome: dict[str, Any] = {}

    def serve() -> None:
        try:
            outcome["code"] = aggregator.run(stop)
        except Exception as exc:  # reported below; the fleet must still be stopped
            outcome["error"] = exc

    thread = threading.Thread(target=serve, name="aggregator", daemon=True)
    thread.start()
    deadline = time.monotonic() + args.timeout
    while thread.is_alive():
        thread.join(0.5)
        if fleet.dead_workers():
            print(
                f"fedge-fleet: a worker exited ({fleet.dead_workers()}); see {workdir / 'logs'}",
                file=sys.stderr,
            )
            stop.set()
        if time.monotonic() > deadline:
            print(f"fedge-fleet: timed out after {args.timeout:.0f}s", file=sys.stderr)
            stop.set()
    if interrupted.is_set():
        print("fedge-fleet: interrupted; stopped everything it started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if "error" in outcome:
        print(f"fedge-fleet: aggregator failed: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    if not aggregator.finished:
        return EXIT_FAILED
    printer.summary(aggregator.rejections)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
