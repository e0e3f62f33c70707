"""The benchmarks run and write what their docs promise (a smoke test; numbers live in docs/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compression_benchmark_quick_run_writes_one_row_per_codec(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compression.py"),
            "--quick",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bytes/upd" in done.stdout and "MB/s" in done.stdout
    rows = json.loads(out.read_text())
    federated = [r for r in rows if r["kind"] == "federated"]
    required = {"codec", "bytes_per_update", "ratio_vs_float32", "final_accuracy"}
    assert all(required | {"accuracy_delta_vs_float32"} <= set(r) for r in federated)
    by_codec = {(r["codec"], r["error_feedback"]): r for r in federated}
    assert by_codec[("float32", False)]["ratio_vs_float32"] == 1.0
    assert by_codec[("int8", False)]["ratio_vs_float32"] > 3.8
    assert by_codec[("topk:0.05+int8", True)]["ratio_vs_float32"] > 25
    assert all(r["rejected"] == 0 for r in federated)
    assert any(r["kind"] == "throughput" and r["encode_mb_s"] > 0 for r in rows)


def test_checkpoint_benchmark_quick_run_compares_snapshot_cadences(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "checkpoint.py"),
            "--quick",
            "--json",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "upd/s" in done.stdout and "every update" in done.stdout
    rows = [r for r in json.loads(out.read_text()) if r.get("kind") != "meta"]
    assert {(r["model"], r["snapshot_every"]) for r in rows} == {
        (m, e) for m in ("digits MLP", "big MLP") for e in (0, 1, 8, 32)
    }
    for r in rows:
        assert r["updates_per_s"] > 0 and r["updates"] > 0
        if r["snapshot_every"] == 0:
            assert r["ratio_vs_none"] == 1.0 and r["snapshot_writes"] == 0
        else:  # a write per `every` updates, and one for the tail
            assert r["snapshot_writes"] == -(-r["updates"] // r["snapshot_every"])
            assert r["snapshot_bytes"] > 8 * r["parameters"]  # the float64 sums
    assert not list(tmp_path.glob(".checkpoint-bench-*"))  # cleaned up
