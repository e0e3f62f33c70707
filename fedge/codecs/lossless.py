"""The optional lossless last stage: zstd when ``zstandard`` is installed, zlib always.

Decompression is bounded: the receiver knows the largest payload a pipeline can produce for
its layout and refuses anything that would inflate beyond it (a zip bomb is just ``oversize``).
"""

from __future__ import annotations

import zlib
from types import ModuleType

from fedge.errors import CodecError, WireError

zstandard: ModuleType | None
try:  # optional: the `zstd` extra; agents without it fall back to zlib
    import zstandard
except ImportError:  # pragma: no cover - exercised where zstandard is absent
    zstandard = None

ZSTD_LEVEL = 3
ZLIB_LEVEL = 6


def have_zstd() -> bool:
    return zstandard is not None


def available(name: str) -> str:
    """The lossless stage this process can produce for the requested one (zstd -> zlib)."""
    return "zlib" if name == "zstd" and zstandard is None else name


def compress(name: str, data: bytes) -> bytes:
    if name == "zstd":
        if zstandard is None:
            raise RuntimeError("zstd needs the 'zstandard' package (pip install 'fedge[zstd]')")
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)
    if name == "zlib":
        return zlib.compress(data, ZLIB_LEVEL)
    raise ValueError(f"unknown lossless stage {name!r}")


def decompress(name: str, data: bytes, max_size: int) -> bytes:
    """At most ``max_size`` bytes from one complete frame; WireError otherwise."""
    if name == "zstd":
        return _unzstd(data, max_size)
    if name == "zlib":
        return _unzlib(data, max_size)
    raise CodecError(f"unknown lossless stage {name!r}")


def _unzstd(data: bytes, max_size: int) -> bytes:
    if zstandard is None:
        raise CodecError("zstd-compressed update, but this receiver has no 'zstandard' package")
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise CodecError("not a zstd frame") from None
    if size < 0:
        raise CodecError("zstd frame without a content size")
    if size > max_size:
        raise WireError(f"zstd frame inflates to {size} bytes > {max_size}", reason="oversize")
    try:
        out = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=max_size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt zstd frame: {exc}") from None
    if len(out) != size:
        raise CodecError("zstd frame content size disagrees with its content")
    return out


def _unzlib(data: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise CodecError(f"corrupt zlib stream: {exc}") from None
    if len(out) > max_size or inflater.unconsumed_tail:
        raise WireError(f"zlib stream inflates beyond {max_size} bytes", reason="oversize")
    if not inflater.eof or inflater.unused_data:
        raise CodecError("zlib stream is truncated or followed by extra bytes")
    return out
