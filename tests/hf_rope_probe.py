"""Standalone probe run under *another* interpreter (e.g. a transformers 4.57 virtualenv):
print, as JSON, the rotary inv_freq and attention scaling that transformers builds for a
model directory, per layer type, plus the attention modules' softmax scale. It imports only
transformers and torch, never yarnconv.

Output: {"transformers_version", "max_position_embeddings", "rope": {layer_type: {"inv_freq",
"attention_scaling"}}, "softmax_scale"} where layer_type is "full_attention" /
"sliding_attention" for models with layer types (Gemma 3: transformers 4.x keeps the local
rotary in ``rotary_emb_local``), else "all". On failure: {"error": "..."} and exit 0.
"""

import copy
import json
import sys

import torch
import transformers
from transformers import AutoConfig


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _shrink(config):
    """A 2-layer, tiny-vocab, few-expert copy: the rotary modules are built as for the real model."""
    tiny = copy.deepcopy(config)
    text = _text(tiny)
    types = list(getattr(text, "layer_types", None) or [])
    keep = 2
    if types:  # keep one layer of each type, in the model's own order
        seen = []
        for t in types:
            if t not in seen:
                seen.append(t)
        keep = max(keep, len(seen))
        text.layer_types = seen + types[len(seen) : keep]
    text.num_hidden_layers = keep
    for name in ("n_routed_experts", "num_experts", "num_local_experts"):
        if getattr(text, name, None):
            setattr(text, name, 2)
    for name in ("num_experts_per_tok", "n_group", "topk_group", "first_k_dense_replace"):
        if getattr(text, name, None):
            setattr(text, name, 1)
    return tiny


def _rope_of(module, path, has_types):
    """Rebuild ``module`` on the CPU from its own config and read its buffers."""
    built = type(module)(config=module.config)
    out = {}
    per_type = [n[: -len("_inv_freq")] for n, _ in built.named_buffers() if n.endswith("_inv_freq") and "original" not in n]
    if per_type:
        for lt in per_type:
            out[lt] = {
                "inv_freq": getattr(built, f"{lt}_inv_freq").tolist(),
                "attention_scaling": float(getattr(built, f"{lt}_attention_scaling")),
            }
        return out
    name = "all"
    if has_types:
        name = "sliding_attention" if path.endswith("_local") else "full_attention"
    out[name] = {"inv_freq": built.inv_freq.tolist(), "attention_scaling": float(built.attention_scaling)}
    return out


def _build(config):
    """The model class a user would load: causal LM, else the image-text-to-text or base model."""
    import transformers as t

    for name in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"):
        auto = getattr(t, name, None)
        if auto is None:
            continue
        try:
            return auto.from_config(config)
        except ValueError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise
    raise ValueError(f"no model class for {type(config).__name__}")


def probe(model_dir):
    config = AutoConfig.from_pretrained(model_dir)
    text = _text(config)
    has_types = bool(getattr(text, "layer_types", None))
    with torch.device("meta"):
        model = _build(_shrink(config))
    rope, scales = {}, {}
    for path, module in model.named_modules():
        if "visual" in path or "vision" in path:
            continue  # a VLM's vision tower has its own rotary embedding
        if hasattr(module, "config") and (hasattr(module, "inv_freq") or any(n.endswith("_inv_freq") for n, _ in module.named_buffers(recurse=False))):
            for lt, value in _rope_of(module, path, has_types).items():
                rope.setdefault(lt, value)
        if path.endswith("self_attn") and hasattr(module, "scaling"):
            scales.setdefault(path, float(module.scaling))
    return {
        "transformers_version": transformers.__version__,
        "max_position_embeddings": text.max_position_embeddings,
        "rope": rope,
        "softmax_scale": sorted(set(scales.values())),
    }


def main(model_dirs):
    """One JSON line per directory, in order (a batch saves the import time per model)."""
    for model_dir in model_dirs:
        try:
            result = probe(model_dir)
        except Exception as exc:  # the caller compares verdicts, so a crash is data
            result = {"transformers_version": transformers.__version__, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print("\nPROBE " + json.dumps({"dir": model_dir, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
