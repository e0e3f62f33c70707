"""Update codecs compared side by side: bytes per update, accuracy kept, encode/decode time.

    python benchmarks/compression.py --json compression.json          # about 3 minutes
    python benchmarks/compression.py --quick --json /tmp/smoke.json   # seconds: a smoke test

Every row runs the same federation (digits, MLP, 20 clients, Dirichlet(0.5), 30 rounds, the
same seeds) in process with the real agent and aggregator code (``fleet.simulate``), so the
bytes are the exact update payloads and the accuracy is the global model's on the test split.
A second table times each codec on a synthetic 1M-parameter update (MB/s of float32 input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedge.codecs import Pipeline  # noqa: E402
from fleet.simulate import SimulationConfig, mean, simulate  # noqa: E402

# (codec, error feedback): the reference first
ROWS: list[tuple[str, bool]] = [
    ("float32", False),
    ("float16", False),
    ("int8", False),
    ("int8:block=1024", False),
    ("int8:block=256", False),
    ("int4:block=1024", False),
    ("int4:block=256", False),
    ("int2:block=256", False),
    ("sign", True),
    ("sign", False),
    ("topk:0.05+int8", True),
    ("topk:0.05+int8", False),
    ("topk:0.05+int8+zstd", True),
    ("topk:0.01+int8", True),
]
SYNTHETIC_LAYOUT = [784 * 1024, 1024, 1024 * 200, 200, 200 * 10, 10]  # 1,008,010 parameters


def run_row(config: SimulationConfig) -> dict[str, Any]:
    result = simulate(config)
    return {
        "codec": config.codec,
        "error_feedback": config.error_feedback,
        "bytes_per_update": round(mean(result.update_bytes), 1),
        "float32_bytes_per_update": round(result.float32_bytes / len(result.update_bytes), 1),
        "final_accuracy": round(result.accuracy[-1], 4),
        "best_accuracy": round(max(result.accuracy), 4),
        "accuracy_by_round": [round(a, 4) for a in result.accuracy],
        "rejected": result.rejected,
        "sim_seconds": round(result.seconds, 1),
    }


def time_codec(codec: str, lengths: list[int], repeats: int) -> tuple[float, float]:
    """Median encode and decode milliseconds for one update of ``sum(lengths)`` values."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(sum(lengths)) * 0.01).astype(np.float32)
    pipeline = Pipeline(codec)
    encodes, decodes = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        wire = pipeline.encode(x, lengths, rng).wire
        t1 = time.perf_counter()
        pipeline.decode(wire, lengths)
        t2 = time.perf_counter()
        encodes.append(t1 - t0)
        decodes.append(t2 - t1)
    return 1000 * float(np.median(encodes)), 1000 * float(np.median(decodes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="2 rounds, 4 clients, small synthetic")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    base = SimulationConfig(rounds=args.rounds, clients=args.clients)
    synthetic, repeats = SYNTHETIC_LAYOUT, 15
    if args.quick:
        base = replace(base, rounds=2, clients=4)
        synthetic, repeats = [5000, 100], 3
    configs = [replace(base, codec=c, error_feedback=ef) for c, ef in ROWS]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_row, configs))
    reference = rows[0]
    layout = [64 * 128, 128, 128 * 10, 10]  # the MLP the rows train
    for row in rows:
        row["kind"] = "federated"
        row["ratio_vs_float32"] = round(reference["bytes_per_update"] / row["bytes_per_update"], 2)
        row["accuracy_delta_vs_float32"] = round(
            row["final_accuracy"] - reference["final_accuracy"], 4
        )
        row["encode_ms"], row["decode_ms"] = (
            round(t, 3) for t in time_codec(row["codec"], layout, 5 if args.quick else 200)
        )
    throughput = []
    megabytes = 4 * sum(synthetic) / 1e6
    for codec in dict.fromkeys(c for c, _ in ROWS):
        encode_ms, decode_ms = time_codec(codec, synthetic, repeats)
        throughput.append(
            {
                "kind": "throughput",
                "codec": codec,
                "parameters": sum(synthetic),
                "encode_ms": round(encode_ms, 2),
                "decode_ms": round(decode_ms, 2),
                "encode_mb_s": round(megabytes / encode_ms * 1000, 1),
                "decode_mb_s": round(megabytes / decode_ms * 1000, 1),
            }
        )
    print_tables(rows, throughput, base)
    if args.json:
        meta = {"kind": "meta", "config": asdict(base), "machine": platform.platform()}
        Path(args.json).write_text(json.dumps([*rows, *throughput, meta], indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def print_tables(rows: list[dict], throughput: list[dict], base: SimulationConfig) -> None:
    print(
        f"{base.dataset}, {base.model}, {base.clients} clients, {base.partition}, "
        f"{base.rounds} rounds, seed {base.seed}"
    )
    header = (
        f"{'codec':24} {'EF':3} {'bytes/upd':>9} {'ratio':>6} {'final':>7} {'best':>7} "
        f"{'Δ pt':>6} {'enc ms':>7} {'dec ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['codec']:24} {'on' if r['error_feedback'] else '-':3} "
            f"{r['bytes_per_update']:9.0f} {r['ratio_vs_float32']:5.1f}x "
            f"{r['final_accuracy']:7.4f} {r['best_accuracy']:7.4f} "
            f"{100 * r['accuracy_delta_vs_float32']:+6.2f} "
            f"{r['encode_ms']:7.3f} {r['decode_ms']:7.3f}"
        )
    print(f"\nthroughput on a synthetic update of {throughput[0]['parameters']:,} parameters")
    header = f"{'codec':24} {'enc ms':>8} {'dec ms':>8} {'enc MB/s':>9} {'dec MB/s':>9}"
    print(header)
    print("-" * len(header))
    for t in throughput:
        print(
            f"{t['codec']:24} {t['encode_ms']:8.2f} {t['decode_ms']:8.2f} "
            f"{t['encode_mb_s']:9.0f} {t['decode_mb_s']:9.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
