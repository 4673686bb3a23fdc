"""What each runtime computes from a config (``readers`` and ``vllm``, modelled from their source and
checked against the real runtimes in the tests; ``registry``: the rows and how each is known) and how
that compares with yarnconv's own reading (``compare``: the rows ``inspect`` prints)."""

from yarnconv.runtimes.compare import compare, compare_config, reference_specs
from yarnconv.runtimes.readers import (
    EXLLAMAV2_MODEL_TYPES,
    LLAMA_CPP_IGNORES_SCALING,
    MLA_SOFTMAX_DROPPED_IN_V4,
    RuntimeReading,
    mla_softmax_multiplier,
)
from yarnconv.runtimes.registry import BASIS, READERS, reading
from yarnconv.runtimes.vllm import VLLM

__all__ = [
    "BASIS",
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
