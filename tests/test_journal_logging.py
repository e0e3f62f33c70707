"""Logging under journald: <N> priority prefixes and no timestamps, only when stderr is the
journal's stream; the usual timestamped lines otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import logging
from fedge.cli_common import setup_logging
setup_logging("DEBUG")
log = logging.getLogger("fedge.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("failed")
"""


def run_logging(tmp_path: Path, journal_stream: str | None) -> list[str]:
    """Run SCRIPT with stderr into a file, JOURNAL_STREAM set as systemd would (or not)."""
    err = tmp_path / "stderr"
    with open(err, "wb") as handle:
        info = os.fstat(handle.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream.format(dev=info.st_dev, ino=info.st_ino)
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=handle, env=env, check=True)
    return err.read_text().splitlines()


def test_under_journald_each_line_has_its_syslog_priority_and_no_timestamp(tmp_path) -> None:
    lines = run_logging(tmp_path, "{dev}:{ino}")
    assert lines[:5] == [
        "<7>fedge.test: d",
        "<6>fedge.test: i",
        "<4>fedge.test: w",
        "<3>fedge.test: e",
        "<2>fedge.test: c",
    ]
    assert lines[5] == "<3>fedge.test: failed"
    traceback = lines[6:]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert traceback[-1] == "<3>ValueError: boom"


@pytest.mark.parametrize("stream", [None, "1:2", "{dev}:0", "garbage"])
def test_elsewhere_lines_carry_a_timestamp_and_a_level_name(tmp_path, stream) -> None:
    lines = run_logging(tmp_path, stream)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING fedge\.test: w$", lines[2])
    assert not any(line.startswith("<") for line in lines)
