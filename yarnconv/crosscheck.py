"""Ask an installed transformers what it builds from a config, and compare with yarnconv.

This is the first rung of ``verify``: the rotary buffers transformers itself constructs
(``model.rotary_emb.inv_freq`` and ``attention_scaling``) must equal yarnconv's numbers.
Logit-level checks build on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yarnconv import rope
from yarnconv.checkpoint import CONFIG, read_json
from yarnconv.config import read_config


def transformers_rope(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """inv_freq and attention scaling of the rotary embedding transformers builds for ``model_dir``."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    import torch

    with torch.device("meta"):  # find the rotary class without allocating weights
        model = AutoModelForCausalLM.from_config(_tiny(config))
    rotary = _find_rotary(model)
    rotary_cls = type(rotary)
    built = rotary_cls(config=text)
    return {
        "transformers_version": transformers.__version__,
        "inv_freq": built.inv_freq.tolist(),
        "attention_scaling": float(built.attention_scaling),
        "max_position_embeddings": int(text.max_position_embeddings),
        "rotary_class": rotary_cls.__name__,
    }


def compare_with_transformers(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """yarnconv's float32 and float64 numbers against what transformers builds."""
    got = transformers_rope(model_dir)
    view = read_config(read_json(Path(model_dir) / CONFIG, CONFIG))
    assert view.rope_head_dim is not None
    spec = view.rope.spec(view.rope_head_dim, view.max_position)
    exact, f32 = rope.compute(spec), rope.compute(spec, precision="float32")
    ref = got["inv_freq"]
    return {
        **{k: v for k, v in got.items() if k != "inv_freq"},
        "pairs": len(ref),
        "max_rel_diff_float64": max(abs(a - b) / b for a, b in zip(exact.inv_freq, ref, strict=False)),
        "max_rel_diff_float32": max(abs(a - b) / b for a, b in zip(f32.inv_freq, ref, strict=False)),
        "attention_factor_yarnconv": exact.attention_factor,
        "attention_factor_diff": abs(exact.attention_factor - got["attention_scaling"]),
        "lengths_match": len(ref) == len(exact.inv_freq),
    }


def _tiny(config: Any) -> Any:
    """A 1-layer, small-vocab copy of the config: enough to find the rotary class cheaply."""
    import copy

    tiny = copy.deepcopy(config)
    text = tiny.get_text_config() if hasattr(tiny, "get_text_config") else tiny
    text.num_hidden_layers = 1
    text.vocab_size = 8
    text.intermediate_size = 8
    if hasattr(text, "layer_types") and text.layer_types:
        text.layer_types = text.layer_types[:1]
    return tiny


def _find_rotary(model: Any) -> Any:
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "attention_scaling"):
            return module
    raise RuntimeError("no rotary embedding module found in the model")


def gguf_logits_vs_transformers(
    hf_dir: str | os.PathLike[str], gguf_path: str | os.PathLike[str], *, n_tokens: int = 128
) -> dict[str, Any]:
    """Run the same token ids through transformers (``hf_dir``) and llama.cpp (``gguf_path``).

    Needs ``llama-cpp-python``. Returns per-position KL(transformers || llama.cpp) and top-1
    agreement, counting a position as agreeing when llama.cpp's pick is within 1e-3 logits of
    transformers' best (random-ish ids produce near ties that float32 noise may flip).
    """
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    bos = read_config(read_json(Path(hf_dir) / CONFIG, CONFIG)).text.get("bos_token_id") or 1
    tokens = [int(bos), *np.random.default_rng(0).integers(100, 20000, n_tokens - 1).tolist()]
    llm = Llama(model_path=str(gguf_path), n_ctx=max(n_tokens, 64), logits_all=True, n_threads=os.cpu_count() or 2, verbose=False)
    llm.eval(tokens)
    got = np.array(llm.scores[:n_tokens], dtype=np.float64)
    llm.close()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.inference_mode():
        ref = model(torch.tensor([tokens])).logits[0].double().numpy()

    def log_softmax(x: Any) -> Any:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    agree = ref[np.arange(n_tokens), got.argmax(-1)] >= ref.max(-1) - 1e-3
    return {"tokens": n_tokens, "kl_max": float(kl.max()), "kl_mean": float(kl.mean()), "top1_agreement": float(agree.mean())}
