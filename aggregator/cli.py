"""``fedge-aggregator``: run the federation's aggregator against any MQTT broker."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from aggregator.daemon import Aggregator
from fedge.cli_common import (
    CODEC_HELP,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_security_flags,
    setup_logging,
)
from fedge.config import AggregatorConfig, load, render
from fedge.errors import ConfigError, FedgeError
from fedge.sdnotify import Notifier

log = logging.getLogger("fedge.aggregator")

EXAMPLE = """example:
  fedge-aggregator --broker 127.0.0.1:1883 --federation lab --dataset digits \\
      --model mlp --rounds 20 --state-dir /var/lib/fedge/aggregator --history rounds.jsonl

on a secure site (`fedge-broker init`): TLS, its password, and it signs task and global:
  fedge-aggregator --config site/aggregator/aggregator.toml --dataset digits --rounds 20

check a config file (prints the effective config, every key; secrets are files, never shown):
  fedge-aggregator --check-config /etc/fedge/aggregator/aggregator.toml

Under systemd (Type=notify) it reports READY, WATCHDOG and STATUS; SIGTERM saves the open
round's snapshot and exits 0 (a restart resumes it). See docs/deploy.md.
exit codes: 0 done or stopped (or config valid), 1 failed, 2 bad configuration"""

LOOP_SILENCE_S = 30.0  # a network loop silent this long is wedged: stop the watchdog pings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-aggregator",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Aggregate model updates of a fleet (FedAvg).",
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
    p.add_argument("--state-dir", help="checkpoints; a restart resumes from here")
    p.add_argument("--model", help="logreg | mlp | mlp:H | mlp:H1,H2 | conv8 | tflite:NAME")
    p.add_argument("--dataset", help="digits | breast_cancer: model size and evaluation split")
    p.add_argument("--test-data", help=".npz (x, y) to evaluate the global model on")
    p.add_argument("--n-features", type=int)
    p.add_argument("--n-classes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--rounds", type=int, help="stop after R rounds (0: run until stopped)")
    p.add_argument("--epochs", type=int, help="local epochs per round")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--codec",
        help=CODEC_HELP,
    )
    p.add_argument(
        "--error-feedback",
        choices=["auto", "on", "off"],
        help="agents carry what compression dropped into the next round (auto: biased codecs)",
    )
    p.add_argument("--downlink", choices=["float32", "float16"], help="global model encoding")
    p.add_argument("--fraction", type=float, help="share of clients sampled per round")
    p.add_argument("--min-clients", type=int, help="quorum to close a round")
    p.add_argument("--target-clients", type=int, help="close as soon as this many reported")
    p.add_argument(
        "--start-clients", type=int, help="open the first round once this many agents are online"
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        dest="round_timeout_s",
        help="seconds until a round closes with what it has (>= min-clients)",
    )
    p.add_argument(
        "--short-round",
        choices=["extend", "rerun"],
        help="a deadline without quorum extends the round, or drops it and runs it again",
    )
    p.add_argument("--clients-file", help="enrolled client ids, one per line; others refused")
    p.add_argument(
        "--checkpoint-batch", type=int, help="accepted updates per round-snapshot write (max)"
    )
    p.add_argument(
        "--checkpoint-interval",
        type=float,
        dest="checkpoint_interval_s",
        help="seconds an accepted update may wait for its snapshot write",
    )
    p.add_argument("--max-update-norm", type=float)
    p.add_argument("--history", help="JSON Lines file, one object per round")
    p.add_argument(
        "--ship-model",
        action="store_true",
        default=None,
        help="send the .tflite file in the task, so devices need not have it",
    )
    add_security_flags(p)
    p.add_argument("--signing-key", help="Ed25519 private key (mode 0600): sign task and global")
    p.add_argument("--log-level", default="INFO")
    return p


def overrides(args: argparse.Namespace) -> dict[str, object]:
    skip = {"config", "check_config", "log_level"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def check_config(path: str, values: dict[str, object]) -> int:
    """``--check-config``: build the aggregator as a start would (model, evaluation data,
    secrets, signing key, enrolled clients), without connecting; print the effective config."""
    try:
        config = load(AggregatorConfig, path, values)
        aggregator = Aggregator(config)
    except FedgeError as exc:
        print(f"fedge-aggregator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render(config, path), end="")
    link = "TLS" if aggregator.auth.tls else "plaintext"
    signed = "signed" if aggregator.messages.signer else "unsigned"
    print(f"# valid: model {aggregator.model_ref.id}, {link}, {signed} task and global")
    return EXIT_OK


def describe(aggregator: Aggregator) -> str:
    """One line for ``systemctl status``."""
    state = aggregator.round
    online = len(aggregator.online)
    if aggregator.finished:
        return f"federation {aggregator.config.federation} finished"
    if state is None:
        return f"waiting for agents ({online} online)"
    return f"round {state.round}: {state.count} updates, {online} agents online"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_config:
        return check_config(args.check_config, overrides(args))
    setup_logging(args.log_level)
    notifier = Notifier()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        notifier.stopping()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        config = load(AggregatorConfig, args.config, overrides(args))
        aggregator = Aggregator(config)
    except FedgeError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    ready = threading.Event()

    def heartbeat() -> None:
        """From the serving loop: READY the first time, then WATCHDOG while the network loop
        lives, and STATUS (sent only when it changed)."""
        if not ready.is_set():
            notifier.ready(describe(aggregator))
            ready.set()
        if aggregator.network_healthy(LOOP_SILENCE_S):
            notifier.watchdog()
        notifier.status(describe(aggregator))

    aggregator.heartbeat = heartbeat
    try:
        return aggregator.run(stop)
    except ConfigError as exc:  # e.g. a checkpoint of another model: restarting will not help
        log.error("%s", exc)
        return EXIT_USAGE
    except FedgeError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    finally:
        log.info("stopped; rejections so far: %s", dict(aggregator.rejections))


if __name__ == "__main__":
    raise SystemExit(main())
