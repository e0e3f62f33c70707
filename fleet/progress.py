"""The emulator's live output: one line per round, a header and a summary (the CLI owns stdout)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RoundPrinter:
    def __init__(self, rounds: int, clients: int) -> None:
        self.rounds, self.clients = rounds, clients
        self.records: list[Mapping[str, Any]] = []

    def header(self, args: argparse.Namespace, aggregator: Any, broker: str) -> None:
        params = aggregator.model.num_parameters
        _out(
            f"fedge-fleet: {args.clients} agents, {args.rounds} rounds, {args.dataset} "
            f"({args.partition}), model {args.model} ({params} parameters), codec {args.codec}, "
            f"broker {broker}"
        )

    def baseline(self, accuracy: float) -> None:
        _out(f"centralised baseline (same model, all training data): accuracy {accuracy:.4f}")

    def line(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)
        accuracy = record.get("accuracy")
        share = record["uplink_bytes"] / record["float32_bytes"] if record["float32_bytes"] else 0
        _out(
            f"round {record['round']:>3}/{self.rounds}  clients {record['clients']:>3}/"
            f"{self.clients}  uplink {human_bytes(record['uplink_bytes']):>9} "
            f"({share:6.2%} of float32)  accuracy "
            f"{'n/a' if accuracy is None else f'{accuracy:.4f}'}  {record['seconds']:6.2f}s"
        )

    def summary(self, rejections: Mapping[str, int]) -> None:
        if not self.records:
            return
        up = sum(r["uplink_bytes"] for r in self.records)
        f32 = sum(r["float32_bytes"] for r in self.records)
        best = max((r["accuracy"] or 0.0) for r in self.records)
        _out(
            f"done: final accuracy {self.records[-1]['accuracy']:.4f} (best {best:.4f}); "
            f"uplink {human_bytes(up)} = {up / f32:.2%} of float32 ({human_bytes(f32)}); "
            f"rejected {dict(rejections) or 0}"
        )


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
