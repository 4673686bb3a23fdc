"""Compare two runtimes' logits on the same token ids: per-position KL and top-1 agreement.

One implementation, shared by ``demo``, ``verify`` and the tests. KL is KL(reference || candidate)
in nats; a position agrees when the candidate's top pick is within ``tie`` logits of the
reference's best (random ids produce near ties that float32 noise may flip).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.verify.check import Bound, Check, judge, skipped

LOGIT_BOUNDS = (Bound("kl_max", "<=", 1e-4), Bound("top1_agreement", ">=", 0.999))


@dataclass(frozen=True)
class LogitComparison:
    """KL per position and the agreement of the top pick."""

    kl: np.ndarray
    top1_agreement: float

    @property
    def kl_max(self) -> float:
        return float(self.kl.max())

    @property
    def kl_mean(self) -> float:
        return float(self.kl.mean())

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": len(self.kl), "kl_max": self.kl_max, "kl_mean": self.kl_mean, "top1_agreement": self.top1_agreement}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, tie: float = 1e-3) -> LogitComparison:
    """``reference`` and ``candidate`` are [positions, vocab] logits for the same tokens."""
    ref, got = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {got.shape}")
    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    agree = ref[np.arange(len(ref)), got.argmax(-1)] >= ref.max(-1) - tie
    return LogitComparison(kl, float(agree.mean()))


def probe_tokens(bos: int, n: int, *, high: int = 20000) -> list[int]:
    """BOS then ``n - 1`` fixed pseudo-random ids: the same sequence on every run."""
    return [int(bos), *np.random.default_rng(0).integers(100, high, n - 1).tolist()]


def llama_cpp_logits(gguf_path: str | os.PathLike[str], tokens: list[int], *, n_ctx: int | None = None, **kw: Any) -> np.ndarray:
    """llama.cpp's logits for every position (needs llama-cpp-python)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx or max(len(tokens), 64), logits_all=True, n_threads=os.cpu_count() or 2, verbose=False, **kw)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def transformers_logits(hf_dir: str | os.PathLike[str], tokens: list[int]) -> np.ndarray:
    """transformers' float32 logits for every position."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def gguf_check(hf_dir: str | os.PathLike[str], gguf_path: str | os.PathLike[str], *, n_tokens: int = 128) -> Check:
    """llama.cpp on ``gguf_path`` against transformers on ``hf_dir``, on the same ``n_tokens`` ids."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return skipped("llama.cpp logits", "llama-cpp-python is not installed (pip install llama-cpp-python)", LOGIT_BOUNDS)
    from yarnconv.config import read_config
    from yarnconv.storage.files import CONFIG, read_json

    bos = read_config(read_json(Path(hf_dir) / CONFIG, CONFIG)).text.get("bos_token_id") or 1
    tokens = probe_tokens(bos, n_tokens)
    got = llama_cpp_logits(gguf_path, tokens)
    ref = transformers_logits(hf_dir, tokens)
    return judge("llama.cpp logits", compare_logits(ref, got).to_dict(), LOGIT_BOUNDS)
