"""What every message shares, and the task's structured fields: read and written in one place.

The envelope (version, kind, federation, round, sender, ts), the model reference that names
a model by content, and the readers for a task's layout and optional model file. ``wire.py``
builds the messages on top of these.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge.params import TensorSpec
from fedge.protocol import VERSION, Kind
from fedge.wire_fields import Reason, get_field, hash_field, int_field, name_field, pack, refuse

MAX_MODEL_FILE = 8 * 1024 * 1024  # a shipped .tflite file; the zoo's are well under 1 MiB


@dataclass(frozen=True)
class ModelRef:
    """Which model a message concerns: a readable id and the SHA-256 of its spec and layout."""

    id: str
    hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash}

    @classmethod
    def from_wire(cls, m: Any) -> ModelRef:
        if not isinstance(m, dict):
            raise refuse("field 'model' must be a map")
        model_id = get_field(m, "id", str)
        if not 0 < len(model_id) <= 128:
            raise refuse("model id must be 1-128 characters")
        return cls(model_id, hash_field(m, "hash"))


def model_ref(model_id: str, spec: Mapping[str, Any], layout: list[TensorSpec]) -> ModelRef:
    """The content hash that names a model: SHA-256 of msgpack([spec, layout])."""
    canonical = pack(
        {
            "spec": dict(sorted(spec.items())),
            "layout": [[name, list(shape)] for name, shape in layout],
        }
    )
    return ModelRef(model_id, hashlib.sha256(canonical).digest())


def read_header(kind: Kind, m: Mapping[str, Any]) -> tuple[str, int, str, int]:
    version = m.get("v")
    if version != VERSION:
        raise refuse(
            f"protocol version {version!r}, this receiver speaks {VERSION}", Reason.VERSION
        )
    if m.get("kind") != kind.value:
        raise refuse(f"expected kind {kind.value!r}, got {m.get('kind')!r}", Reason.KIND)
    return (
        name_field(m, "federation"),
        int_field(m, "round"),
        name_field(m, "sender"),
        int_field(m, "ts"),
    )


def envelope(kind: Kind, federation: str, round_number: int, sender: str, ts: int) -> dict:
    return {
        "v": VERSION,
        "kind": kind.value,
        "federation": federation,
        "round": round_number,
        "sender": sender,
        "ts": ts,
    }


def model_file_field(m: Mapping[str, Any], spec: Mapping[str, Any]) -> bytes:
    """The optional shipped model file: bounded, and hashing to the spec's ``sha256``."""
    if "model_file" not in m:
        return b""
    data = m["model_file"]
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_MODEL_FILE:
        raise refuse(f"model_file must be 1..{MAX_MODEL_FILE} bytes (bin)")
    if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
        raise refuse("model_file does not match model_spec.sha256", Reason.MODEL)
    return data


def layout_field(raw: list) -> list[TensorSpec]:
    if not 0 < len(raw) <= 256:
        raise refuse("layout must list 1-256 tensors")
    out: list[TensorSpec] = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], list)
            or len(item[1]) > 8
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 28 for d in item[1]
            )
        ):
            raise refuse(f"bad layout entry {item!r:.80}")
        out.append((item[0], tuple(item[1])))
    if len({name for name, _ in out}) != len(out):
        raise refuse("layout repeats a tensor name")
    if sum(math.prod(s) for _, s in out) > 1 << 28:  # Python ints: int64 products wrap
        raise refuse("layout too large")
    return out
