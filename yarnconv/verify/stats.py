"""The statistics verify reports: llama-perplexity's KL-divergence set, NLL drift with a bootstrap
interval, and Wilson intervals for passkey accuracy. Pure numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from yarnconv.verify.logits import compare_logits, log_softmax


def token_nll(logits: np.ndarray, next_tokens: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each row's next token (rows whose next token is -1 are dropped)."""
    has = next_tokens >= 0
    lp = log_softmax(np.asarray(logits, dtype=np.float64)[has])
    return -lp[np.arange(len(lp)), next_tokens[has]]


def region_stats(ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray) -> dict[str, Any]:
    """The statistics llama.cpp's ``llama-perplexity --kl-divergence`` reports, for one region.

    ``next_tokens`` holds each position's following token (-1 for the last), for the PPL ratio.
    """
    c = compare_logits(ref, got)
    centred = ref - ref.mean(-1, keepdims=True)
    ref_nll, got_nll = token_nll(ref, next_tokens), token_nll(got, next_tokens)
    return {
        **c.to_dict(),
        "kl_p99": float(np.percentile(c.kl, 99)),
        "kl_p999": float(np.percentile(c.kl, 99.9)),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "nmse": float(((got - ref) ** 2).sum() / max((centred**2).sum(), 1e-30)),
        "ppl_ratio": float(np.exp(got_nll.mean() - ref_nll.mean())) if len(ref_nll) else 1.0,
    }


def bootstrap_mean(values: np.ndarray, *, seed: int = 0, resamples: int = 2000) -> tuple[float, float, float]:
    """Mean and a 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return 0.0, 0.0, 0.0
    idx = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    means = values[idx].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def drift(base: np.ndarray, extended: np.ndarray, next_tokens: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Base vs extended on the same tokens below the original length: the NLL the extension costs
    (static YaRN's known price), with a bootstrap 95% interval, and how often the top pick flips."""
    b, e = token_nll(base, next_tokens), token_nll(extended, next_tokens)
    mean, low, high = bootstrap_mean(e - b, seed=seed)
    return {
        "tokens": len(b),
        "nll_base": float(b.mean()) if len(b) else 0.0,
        "nll_extended": float(e.mean()) if len(e) else 0.0,
        "nll_delta": mean,
        "nll_delta_ci95": [low, high],
        "ppl_ratio": math.exp(mean),
        "top1_flips": float((np.argmax(base, -1) != np.argmax(extended, -1)).mean()),
    }


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
