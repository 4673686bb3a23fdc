"""Ask an installed transformers what it builds from a config, and compare with yarnconv.

The first rung of ``verify``: the rotary buffers transformers itself constructs
(``model.rotary_emb.inv_freq`` and ``attention_scaling``) must equal yarnconv's numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yarnconv import rope
from yarnconv.config import read_config
from yarnconv.storage.files import CONFIG, read_json
from yarnconv.verify.check import Bound, Check, judge


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


ROTARY_BOUNDS = (
    Bound("lengths_match", "==", True),
    Bound("max_rel_diff_float32", "<=", 0.0),
    Bound("attention_factor_diff", "<=", 1e-7),
)


def rotary_check(model_dir: str | os.PathLike[str]) -> Check:
    """transformers builds yarnconv's float32 inv_freq bit for bit, and its magnitude."""
    return judge("transformers rotary buffers", compare_with_transformers(model_dir), ROTARY_BOUNDS)


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
