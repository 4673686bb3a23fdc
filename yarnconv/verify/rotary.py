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


def sidecar_check(path: Path, spec: rope.RopeSpec, layer_specs: dict[str, rope.RopeSpec], layer_types: list[str]) -> Check:
    """``yarnconv_rope.safetensors`` (extend --precompute-inv-freq) holds the plan's buffers: float32
    inv_freq as transformers builds it, the float64 values, the magnitude, per layer type and per layer."""
    from safetensors.torch import load_file

    name = "precomputed rope buffers (yarnconv_rope.safetensors)"
    try:
        got = load_file(str(path))
    except Exception as exc:  # a damaged file of any kind is this check's failure, not a crash
        return Check(name, "failed", reason=f"{path.name} cannot be read ({exc}); fix: re-run extend --precompute-inv-freq")
    wanted: dict[str, tuple[rope.RopeSpec, str]] = {"": (spec, "")}
    wanted.update({f"{lt}.": (s, lt) for lt, s in layer_specs.items()})
    worst, measured = "", {"inv_freq_max_rel_diff": 0.0, "attention_factor_diff": 0.0, "pairs_match": True}
    for i, lt in enumerate(layer_types or []):
        wanted[f"model.layers.{i}.self_attn.rotary_emb."] = (layer_specs.get(lt, spec), lt)
    for prefix, (want_spec, _) in wanted.items():
        f32 = rope.compute(want_spec, precision="float32")
        checks = [(f"{prefix}inv_freq", f32.inv_freq)]
        if not prefix.startswith("model.layers."):
            checks.append((f"{prefix}inv_freq_float64", rope.compute(want_spec).inv_freq))
            a = got.get(f"{prefix}attention_scaling")
            diff = abs(float(a[0]) - f32.attention_factor) if a is not None and a.numel() == 1 else float("inf")
            measured["attention_factor_diff"] = max(measured["attention_factor_diff"], diff)
            if diff > 1e-6 and not worst:
                worst = f"{prefix}attention_scaling"
        for key, want in checks:
            t = got.get(key)
            pairs = t is not None and t.numel() == len(want)
            rel = max((abs(float(x) - w) / w for x, w in zip(t.tolist(), want, strict=True)), default=0.0) if pairs else float("inf")
            measured["pairs_match"] &= pairs
            if rel > measured["inv_freq_max_rel_diff"]:
                measured["inv_freq_max_rel_diff"] = rel
            if (rel > 1e-6 or not pairs) and not worst:
                worst = key
    check = judge(name, measured, (Bound("pairs_match", "==", True), Bound("inv_freq_max_rel_diff", "<=", 1e-6), Bound("attention_factor_diff", "<=", 1e-6)))
    if check.passed:
        return check
    return Check(name, "failed", measured, check.bounds, f"{worst} in {path.name} is not the plan's; fix: re-run extend --precompute-inv-freq")
