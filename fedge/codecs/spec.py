"""Codec pipelines as text: ``[topk:K+] values [+lossless]``, parsed once, printed canonically.

An operator writes ``topk:0.05+int8:block=256+zstd``; the aggregator announces the canonical
form in its task and refuses updates whose codec differs from it. Stages, in order:

- ``topk:F`` (keep a fraction 0 < F < 1) or ``topk:N`` (keep N values): optional;
- one value coder: ``float32`` | ``float16`` | ``int8`` | ``int4`` | ``int2`` | ``sign``;
  quantisers take ``block=B`` (one scale per B values; 0 = one per tensor) and ``int*``
  also ``round=stochastic|nearest``; omitted, the values are float32;
- ``zstd`` or ``zlib``: optional lossless stage over everything before it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

VALUE_CODERS = ("float32", "float16", "int8", "int4", "int2", "sign")
LOSSLESS = ("zstd", "zlib")
ROUNDINGS = ("stochastic", "nearest")
MAX_BLOCK = 1 << 24
MAX_SPEC_CHARS = 200
_STAGE = re.compile(r"([a-z0-9]+)(?::(.*))?")


@dataclass(frozen=True)
class TopK:
    """Keep the largest-magnitude values: a fraction of them, or an exact count."""

    fraction: float = 0.0  # 0 < fraction < 1, or 0 when count is used
    count: int = 0

    def k_for(self, n: int) -> int:
        """How many of ``n`` values to keep (at least one when n > 0, never more than n)."""
        if n == 0:
            return 0
        if self.count:
            return min(self.count, n)
        return min(n, max(1, math.ceil(self.fraction * n)))

    def text(self) -> str:
        return f"topk:{self.count}" if self.count else f"topk:{self.fraction:g}"


@dataclass(frozen=True)
class ValueCoder:
    """How the (kept) values travel: raw floats, b-bit uniform levels, or 1-bit signs."""

    kind: str = "float32"
    block: int = 0  # values per scale; 0 = one scale per tensor
    rounding: str = "stochastic"

    @property
    def bits(self) -> int:
        return {"float32": 32, "float16": 16, "int8": 8, "int4": 4, "int2": 2, "sign": 1}[self.kind]

    @property
    def quantised(self) -> bool:
        return self.kind.startswith("int") or self.kind == "sign"

    def text(self) -> str:
        options = []
        if self.quantised and self.block:
            options.append(f"block={self.block}")
        if self.kind.startswith("int") and self.rounding != "stochastic":
            options.append(f"round={self.rounding}")
        return self.kind + (":" + ",".join(options) if options else "")


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline; ``text()`` is the canonical name carried on the wire."""

    values: ValueCoder = ValueCoder()
    topk: TopK | None = None
    lossless: str = ""

    def text(self) -> str:
        stages = [self.topk.text()] if self.topk else []
        stages.append(self.values.text())
        if self.lossless:
            stages.append(self.lossless)
        return "+".join(stages)

    @property
    def biased(self) -> bool:
        """True when decoding does not give the delta back in expectation: error feedback helps."""
        return (
            self.topk is not None
            or self.values.kind == "sign"
            or (self.values.kind.startswith("int") and self.values.rounding == "nearest")
        )

    @property
    def lossy(self) -> bool:
        return self.topk is not None or self.values.kind != "float32"


def parse_pipeline(text: str) -> PipelineSpec:
    """The pipeline ``text`` names; ValueError saying what is wrong and what is allowed."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_SPEC_CHARS:
        raise ValueError(f"codec must be a non-empty string of at most {MAX_SPEC_CHARS} chars")
    topk: TopK | None = None
    values: ValueCoder | None = None
    lossless = ""
    for position, stage in enumerate(text.split("+")):
        match = _STAGE.fullmatch(stage)
        if match is None:
            raise ValueError(f"codec stage {stage!r} is not 'name' or 'name:options'")
        name, options = match.group(1), match.group(2)
        if name == "topk":
            if position != 0:
                raise ValueError("topk must be the first stage of a codec")
            topk = _parse_topk(options)
        elif name in VALUE_CODERS:
            if values is not None or lossless:
                raise ValueError(f"value coder {name!r} must come once, before zstd/zlib")
            values = _parse_values(name, options)
        elif name in LOSSLESS:
            if lossless or options is not None:
                raise ValueError(f"{name!r} takes no options and must be the last stage")
            lossless = name
        else:
            known = ", ".join(("topk", *VALUE_CODERS, *LOSSLESS))
            raise ValueError(f"unknown codec stage {name!r}; known: {known}")
    return PipelineSpec(values or ValueCoder(), topk, lossless)


def canonical(text: str) -> str:
    return parse_pipeline(text).text()


def _parse_topk(options: str | None) -> TopK:
    if not options:
        raise ValueError("topk needs a fraction or count, e.g. topk:0.05 or topk:500")
    if re.fullmatch(r"[0-9]{1,9}", options):
        count = int(options)
        if count < 1:
            raise ValueError("topk count must be >= 1")
        return TopK(count=count)
    try:
        fraction = float(options)
    except ValueError:
        raise ValueError(f"topk option {options!r} is not a fraction or a count") from None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"topk fraction must be in (0, 1), got {options}")
    return TopK(fraction=fraction)


def _parse_values(name: str, options: str | None) -> ValueCoder:
    block, rounding = 0, "stochastic"
    allowed = (
        {"block", "round"} if name.startswith("int") else {"block"} if name == "sign" else set()
    )
    for option in options.split(",") if options else []:
        key, _, value = option.partition("=")
        if key not in allowed:
            raise ValueError(f"{name} takes options {sorted(allowed) or 'none'}, got {option!r}")
        if key == "block":
            if not re.fullmatch(r"[0-9]{1,8}", value) or int(value) > MAX_BLOCK:
                raise ValueError(f"block must be an integer 0..{MAX_BLOCK}, got {value!r}")
            block = int(value)
        elif value not in ROUNDINGS:
            raise ValueError(f"round must be one of {ROUNDINGS}, got {value!r}")
        else:
            rounding = value
    return ValueCoder(name, block, rounding)
