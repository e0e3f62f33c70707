"""Update codecs: text specs, value coders, sparsification, lossless stage, pipelines.

``Pipeline("topk:0.05+int8+zstd")`` encodes a flat float32 vector to a wire map and decodes
it back; ``encode_params`` / ``decode_params`` do the same for a model's named tensors.
"""

from fedge.codecs.pipeline import (
    Encoded,
    Pipeline,
    WireDelta,
    accepted_names,
    decode_params,
    encode_params,
)
from fedge.codecs.spec import PipelineSpec, canonical, parse_pipeline

DEFAULT_CODEC = "int8"
DOWNLINK_CODECS = ("float32", "float16")

__all__ = [
    "DEFAULT_CODEC",
    "DOWNLINK_CODECS",
    "Encoded",
    "Pipeline",
    "PipelineSpec",
    "WireDelta",
    "accepted_names",
    "canonical",
    "decode_params",
    "encode_params",
    "parse_pipeline",
]
