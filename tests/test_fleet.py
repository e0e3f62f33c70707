"""The emulator as a user runs it: real processes, live lines, history, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import run_fleet

pytestmark = pytest.mark.integration


def fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet.cli", *args]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


def test_fleet_trains_prints_a_line_per_round_and_writes_history(tmp_path: Path) -> None:
    hist = tmp_path / "h.jsonl"
    done = run_fleet(
        "--clients",
        "6",
        "--rounds",
        "3",
        "--dataset",
        "breast_cancer",
        "--model",
        "logreg",
        "--partition",
        "dirichlet:1.0",
        "--seed",
        "1",
        "--history",
        str(hist),
        "--centralised-baseline",
        "--workdir",
        str(tmp_path / "w"),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("round")]
    assert len(lines) == 3 and "clients   6/6" in lines[0] and "accuracy" in lines[0]
    assert "centralised baseline" in done.stdout
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"round", "clients", "accuracy", "params", "uplink_bytes", "seconds"} <= set(record)
        assert record["clients"] == 6 and record["params"] == 62
    assert records[-1]["accuracy"] > 0.85
    assert not processes_mentioning(str(tmp_path / "w"))


def test_fleet_stops_everything_it_started_on_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "w"
    proc = subprocess.Popen(
        fleet_cmd("--clients", "4", "--rounds", "500", "--model", "mlp:32", "--workdir", str(work)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("round"):
                break
        assert processes_mentioning(str(work)), "workers and broker should be running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not processes_mentioning(str(work))


def test_fleet_exits_nonzero_on_bad_arguments(tmp_path: Path) -> None:
    done = run_fleet("--clients", "0", timeout=30)
    assert done.returncode == 2


def test_the_readme_fleet_run_reaches_093_with_int8_at_most_26_percent(tmp_path: Path) -> None:
    """The issue's acceptance run, exactly as the README gives it."""
    hist = tmp_path / "h.jsonl"
    done = run_fleet(
        "--clients",
        "20",
        "--rounds",
        "20",
        "--dataset",
        "digits",
        "--partition",
        "dirichlet:0.5",
        "--seed",
        "0",
        "--history",
        str(hist),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert len(records) == 20 and all(r["clients"] == 20 for r in records)
    assert records[-1]["accuracy"] >= 0.93
    uplink = sum(r["uplink_bytes"] for r in records)
    as_float32 = sum(r["float32_bytes"] for r in records)
    assert uplink <= 0.26 * as_float32


def test_fleet_exits_1_when_the_federation_cannot_finish(tmp_path: Path) -> None:
    """Quorum can never be met: rounds are extended, never faked, and the run fails."""
    done = run_fleet(
        "--clients",
        "2",
        "--rounds",
        "2",
        "--model",
        "logreg",
        "--min-clients",
        "3",
        "--round-timeout",
        "1",
        "--timeout",
        "6",
        "--workdir",
        str(tmp_path / "w"),
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "timed out" in done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith("round")]
    assert not processes_mentioning(str(tmp_path / "w"))


def test_a_compressed_fleet_with_error_feedback_learns_over_mqtt(tmp_path: Path) -> None:
    """top-k + int8 + zstd with error feedback and a float16 downlink, end to end on a broker:
    every update is accepted, the uplink is a small fraction of float32, the model learns."""
    hist = tmp_path / "h.jsonl"
    done = run_fleet(
        *("--clients", "8", "--rounds", "6", "--model", "mlp:32", "--partition", "iid"),
        *("--codec", "topk:0.1+int8+zstd", "--downlink", "float16", "--seed", "2"),
        *("--history", str(hist), "--workdir", str(tmp_path / "w")),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert [r["clients"] for r in records] == [8] * 6
    assert all(not r["rejected"] for r in records)
    assert records[-1]["codec"] == "topk:0.1+int8+zstd"
    share = sum(r["uplink_bytes"] for r in records) / sum(r["float32_bytes"] for r in records)
    assert share < 0.12
    assert records[-1]["accuracy"] > 0.8 > records[0]["accuracy"]
