"""``fedge-model``: build trainable builtins-only TFLite models; list the shipped ones.

Examples:
  fedge-model build fedge/models/zoo/specs.json --out fedge/models/zoo
  fedge-model build my-specs.json --out models/ --only conv8
  fedge-model list

Exit codes: 0 built/listed, 1 a model was refused (e.g. it would need a Flex op), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

MANIFEST = "manifest.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge-model",
        description="Build trainable TFLite models on builtin ops only (needs the 'build' extra).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the models of a JSON spec file")
    build.add_argument("spec", help='JSON spec file: {"models": [...]}')
    build.add_argument("--out", required=True, help="directory for the .tflite files + manifest")
    build.add_argument("--only", action="append", default=[], help="build just this model")
    sub.add_parser("list", help="list the shipped models")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "list":
        from fedge.models import zoo

        for name, e in sorted(zoo.manifest()["models"].items()):
            params = sum(_prod(shape) for _, shape in e["weights"])
            print(
                f"tflite:{name:<12} {e['n_features']:>4} -> {e['n_classes']:<3} "
                f"{params:>6} trainable  {e['bytes']:>7} B  sha256 {e['sha256'][:12]}"
            )
        return 0
    try:
        return _build(args.spec, Path(args.out), args.only)
    except FedgeError as exc:
        print(f"fedge-model: {exc}", file=sys.stderr)
        return 1


def _build(spec_path: str, out: Path, only: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fedge.modelbuild.convert import convert, initial_weights, manifest_entry
    from fedge.modelbuild.spec import load_specs

    specs = [s for s in load_specs(spec_path) if not only or s.name in only]
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    manifest: dict[str, Any] = (
        json.loads(path.read_text()) if path.exists() else {"format": 1, "models": {}}
    )
    for spec in specs:
        content = convert(spec, initial_weights(spec))
        file_name = f"{spec.name}.tflite"
        entry = manifest_entry(spec, content, file_name)
        _write_atomic(out / file_name, content)
        manifest["models"][spec.name] = entry
        print(
            f"built {file_name}: {len(content)} bytes, sha256 {entry['sha256'][:12]}, "
            f"ops {len(entry['ops'])} builtin"
        )
    manifest["models"] = dict(sorted(manifest["models"].items()))
    _write_atomic(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return 0


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
