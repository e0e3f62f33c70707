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
    """Level, logger and message on stderr; with timestamps, unless stderr is the journal.

    Under journald (systemd sets ``JOURNAL_STREAM`` to stderr's ``device:inode``) the journal
    adds the time itself, and a ``<N>`` syslog prefix on each line (sd-daemon(3)) gives the
    entry its priority, so ``journalctl -p warning`` works. The variable is compared with
    stderr, as sd_journal_stream_fd(3) advises: a child whose stderr was redirected inherits
    it but is not writing to the journal.
    """
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<N>`` on every line (a traceback's lines too), N the record's syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next(
            (p for level, p in sorted(SYSLOG_PRIORITY.items()) if record.levelno <= level), 2
        )
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """The flags both daemons take for a secured broker (secrets only as file paths)."""
    parser.add_argument("--username", help="MQTT username")
    parser.add_argument(
        "--password-file", help="file whose first line is the MQTT password (mode 0600)"
    )
    parser.add_argument("--ca-file", help="CA certificate of the broker: TLS on")
    parser.add_argument("--cert-file", help="TLS client certificate")
    parser.add_argument("--key-file", help="TLS client key (mode 0600)")
