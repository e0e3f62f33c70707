"""What every console script shares: logging setup and turning FedgeErrors into exit codes.

Exit codes: 0 success, 1 the federation failed, 2 bad usage or configuration,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CODEC_HELP = (
    "update codec pipeline, e.g. int8, int4:block=1024, topk:0.05+int8+zstd "
    "(see docs/protocol.md, Codecs)"
)


def setup_logging(level: str = "INFO") -> None:
    """Plain level + logger + message; timestamps only when not under journald."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=fmt,
        stream=sys.stderr,
        force=True,
    )


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """The flags both daemons take for a secured broker (secrets only as file paths)."""
    parser.add_argument("--username", help="MQTT username")
    parser.add_argument(
        "--password-file", help="file whose first line is the MQTT password (mode 0600)"
    )
    parser.add_argument("--ca-file", help="CA certificate of the broker: TLS on")
    parser.add_argument("--cert-file", help="TLS client certificate")
    parser.add_argument("--key-file", help="TLS client key (mode 0600)")
