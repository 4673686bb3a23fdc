"""What each runtime computes from a config (``readers``, modelled from their source) and how that
compares with yarnconv's own reading (``compare``: the rows ``inspect`` prints)."""

from yarnconv.runtimes.compare import compare, compare_config, reference_specs
from yarnconv.runtimes.readers import (
    EXLLAMAV2_MODEL_TYPES,
    LLAMA_CPP_IGNORES_SCALING,
    MLA_SOFTMAX_DROPPED_IN_V4,
    READERS,
    VLLM,
    RuntimeReading,
    mla_softmax_multiplier,
    reading,
)

__all__ = [
    "EXLLAMAV2_MODEL_TYPES",
    "LLAMA_CPP_IGNORES_SCALING",
    "MLA_SOFTMAX_DROPPED_IN_V4",
    "READERS",
    "RuntimeReading",
    "VLLM",
    "compare",
    "compare_config",
    "mla_softmax_multiplier",
    "reading",
    "reference_specs",
]
