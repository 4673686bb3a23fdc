"""What quantization costs: a quantized GGUF against the float GGUF it was made from.

Both files run in llama.cpp on the same real text (the file's own tokenizer, else seeded ids), and
their next-token distributions are compared the way ``llama-perplexity --kl-divergence`` reports
them: mean KL, its 99th percentile and the share of positions whose top token agrees. This is
reported, not gated: how much a type loses depends on the model (small models and rows that are
not a multiple of 256 lose more), and the verify checks on each file already gate its rope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.verify import llama_cpp
from yarnconv.verify.logits import compare_logits
from yarnconv.verify.probe import gguf_tokenizer, seeded_tokens, text_tokens

TOKENS = 256


def quant_loss(float_file: Path, quantized: dict[str, Path], *, tokens: int = TOKENS, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per quantized type: KL of its logits from ``float_file``'s over ``tokens`` positions of text."""
    tokenize = gguf_tokenizer(float_file)
    if tokenize is not None:
        ids, source = text_tokens(tokenize, tokens, seed=seed)
        source = f"text: {source}"
    else:
        from yarnconv.gguf.file import read_header

        h = read_header(float_file)
        vocab = next(t.shape[0] for t in h.tensors if t.name == "token_embd.weight")
        ids, source = seeded_tokens(vocab, tokens, seed, h.get("tokenizer.ggml.bos_token_id")), f"seeded ids ({seed})"
    reference = llama_cpp.gapped_logits(float_file, ids, [], 0)
    out = {}
    for outtype, path in quantized.items():
        c = compare_logits(reference, llama_cpp.gapped_logits(path, ids, [], 0))
        out[outtype] = {
            "tokens": len(ids),
            "source": source,
            "kl_mean": c.kl_mean,
            "kl_p99": float(np.quantile(c.kl, 0.99)),
            "kl_max": c.kl_max,
            "same_top1": c.top1_agreement,
        }
    return out
