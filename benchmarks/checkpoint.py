"""What the round snapshot costs: updates folded per second with and without it, side by side.

    python benchmarks/checkpoint.py --json checkpoint.json          # about a minute
    python benchmarks/checkpoint.py --quick --json /tmp/smoke.json  # seconds: a smoke test

The aggregator acknowledges an update to the broker only once it is folded into a round
snapshot on disk (``aggregator/acks.py``), one atomic write of the partial sums (float64, 8
bytes per parameter) and fsync. Each row offers the same N int8 updates to a fresh
``RoundState`` (validation, decode and fold, as the daemon does) and writes
``checkpoint.save_round(dir, state.snapshot())`` never, after every update, or after every 8th
or 32nd (the daemon's default batch is 32, written sooner when its inbox runs dry). Two
models: the digits MLP (9,610 parameters) and a big MLP, 784-1024-200-10 (1,010,850; with
``--quick`` 784-256-64-10, 218,058).

The snapshots go to ``--dir`` (default: a temporary directory in the current one, so the
numbers are for the disk the aggregator's state dir would be on; a tmpfs would hide the fsync).
The live rate, 200 MQTT agents with the default batching, is what ``pytest -s
tests/test_load.py`` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator import checkpoint  # noqa: E402
from aggregator.rounds import RoundRules, RoundState  # noqa: E402
from fedge.codecs import Pipeline, encode_params  # noqa: E402
from fedge.models import build_model  # noqa: E402
from fedge.params import Params, content_hash, num_parameters, spec_of  # noqa: E402
from fedge.wire import Limits, Update, encode, model_ref  # noqa: E402

CODEC = "int8"
EVERY = [0, 1, 8, 32]  # 0: no snapshot
MODELS = {"digits MLP": ("mlp", 64, 10), "big MLP": ("mlp:1024,200", 784, 10)}


def payloads(
    name: str, n_features: int, n_classes: int, count: int
) -> tuple[Params, Any, list[bytes]]:
    """(global weights, model ref, ``count`` update payloads from distinct clients)."""
    model = build_model(name, n_features, n_classes, seed=0)
    weights = model.get_weights()
    ref = model_ref(name, model.describe(), spec_of(weights))
    rng = np.random.default_rng(0)
    deltas = [
        encode_params(
            {
                k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in weights.items()
            },
            Pipeline(CODEC),
            rng,
        )[0]
        for _ in range(4)  # a few distinct deltas; the envelope differs per client
    ]
    base = content_hash(weights)
    out = [
        encode(Update("bench", 1, f"c{i}", ref, base, 10 + i, deltas[i % len(deltas)]))
        for i in range(count)
    ]
    return weights, ref, out


def run_row(
    weights: Params, ref: Any, updates: list[bytes], every: int, state_dir: Path
) -> dict[str, Any]:
    rules = RoundRules(codec=CODEC)
    limits = Limits(max_bytes=16 << 20)
    state = RoundState("bench", 1, weights, ref, spec_of(weights), rules, 0, limits)
    writes, write_seconds = 0, 0.0
    started = time.perf_counter()
    for i, payload in enumerate(updates, 1):
        if not state.offer(f"c{i - 1}", payload).accepted:
            raise RuntimeError(f"update {i} refused")
        if every and (i % every == 0 or i == len(updates)):
            t0 = time.perf_counter()
            checkpoint.save_round(state_dir, state.snapshot())
            write_seconds += time.perf_counter() - t0
            writes += 1
    seconds = time.perf_counter() - started
    size = (state_dir / checkpoint.ROUND_FILENAME).stat().st_size if writes else 0
    return {
        "snapshot_every": every,
        "updates": len(updates),
        "seconds": round(seconds, 4),
        "updates_per_s": round(len(updates) / seconds, 1),
        "snapshot_writes": writes,
        "ms_per_write": round(1000 * write_seconds / writes, 3) if writes else 0.0,
        "snapshot_bytes": size,
    }


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/self/mounts), or "unknown"."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and resolved.startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="few updates, small big model")
    p.add_argument("--updates", type=int, default=512, help="updates per row, digits MLP")
    p.add_argument("--big-updates", type=int, default=64, help="updates per row, big MLP")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    p.add_argument("--dir", help="where snapshots are written (default: a temp dir in .)")
    args = p.parse_args(argv)
    models = dict(MODELS)
    counts = {"digits MLP": args.updates, "big MLP": args.big_updates}
    if args.quick:
        models["big MLP"] = ("mlp:256,64", 784, 10)  # ~218k parameters: seconds, not a minute
        counts = {"digits MLP": 64, "big MLP": 32}
        args.repeats = 1
    state_dir = Path(tempfile.mkdtemp(prefix=".checkpoint-bench-", dir=args.dir or "."))
    rows: list[dict[str, Any]] = []
    try:
        for label, (name, n_features, n_classes) in models.items():
            weights, ref, updates = payloads(name, n_features, n_classes, counts[label])
            run_row(weights, ref, updates, 0, state_dir)  # warm-up: caches, allocator, imports
            for every in EVERY:
                runs = [
                    run_row(weights, ref, updates, every, state_dir) for _ in range(args.repeats)
                ]
                best = max(runs, key=lambda r: r["updates_per_s"])
                rows.append({"model": label, "parameters": num_parameters(weights), **best})
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    for row in rows:
        reference = next(r for r in rows if r["model"] == row["model"] and not r["snapshot_every"])
        row["ratio_vs_none"] = round(row["updates_per_s"] / reference["updates_per_s"], 3)
    fs = filesystem(state_dir.parent)
    print_table(rows, fs, args.repeats)
    if args.json:
        meta = {
            "kind": "meta",
            "codec": CODEC,
            "filesystem": fs,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
        }
        Path(args.json).write_text(json.dumps([*rows, meta], indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def print_table(rows: list[dict[str, Any]], fs: str, repeats: int) -> None:
    print(f"round snapshot cost: {CODEC} updates, snapshots on {fs}, best of {repeats}")
    header = (
        f"{'model':11} {'params':>9} {'snapshot':>12} {'updates':>7} {'upd/s':>9} "
        f"{'vs none':>7} {'writes':>6} {'ms/write':>8} {'snap KB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        every = r["snapshot_every"]
        when = "none" if not every else "every update" if every == 1 else f"every {every}"
        print(
            f"{r['model']:11} {r['parameters']:9,} {when:>12} {r['updates']:7} "
            f"{r['updates_per_s']:9.1f} {r['ratio_vs_none']:7.3f} {r['snapshot_writes']:6} "
            f"{r['ms_per_write']:8.2f} {r['snapshot_bytes'] / 1024:8.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
