"""transformers as a verify engine: load the checkpoint as a user does, read the rotary tables it
built, and give the bounds its logits are judged by in half precision."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv import rope
from yarnconv.verify.check import Bound, Check, judge, within_noise
from yarnconv.verify.probe import Probe
from yarnconv.verify.stats import region_stats
from yarnconv.verify.subject import Subject

ROPE_BOUNDS = (Bound("inv_freq_max_rel_diff", "<=", 1e-6), Bound("attention_factor_diff", "<=", 1e-6), Bound("pairs_match", "==", True))

# transformers loaded in bfloat16 / float16 (models too large for float32): activations round to 8 or 11 bits.
# How far that moves logits depends on the model (a 32-layer 7B with random weights: KL mean 1.2e-2),
# so the bounds are these floors or a multiple of the noise measured on the model itself, whichever
# is looser (half_bounds).
HALF_BOUNDS = (Bound("kl_mean", "<=", 5e-3), Bound("kl_max", "<=", 5e-2), Bound("top1_agreement", ">=", 0.9))
HALF_NOISE_MARGIN = 3.0
NOISE_KEYS = ("kl_mean", "kl_max", "kl_p99", "top1_agreement")


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


TABLES_ONLY = "none"  # engine_dtype when the model fits in no precision: rope tables without weights
HALF_SHARE = 0.85  # share of the free memory a half-precision load may take (a 15 GB 7B on 24 GB)


def engine_dtype(s: Subject, requested: str) -> str:
    """transformers' load dtype: float32 when the model fits in float32 in 60% of the free memory
    (a 135M or 1B model), else the checkpoint's own half precision (a 7B on a 24 GB machine), else
    TABLES_ONLY (a 70B on the same machine; s.why_tables_only says so)."""
    if requested != "auto":
        return requested
    from yarnconv.storage.weights import scan_weights

    numel, free = sum(t.numel for t in scan_weights(s.path).tensors.values()), _available_memory()
    if numel * 4 <= 0.6 * free:
        return "float32"
    own = str(s.view.resolved.get("torch_dtype") or s.view.resolved.get("dtype") or "bfloat16")
    own = own if own in ("bfloat16", "float16") else "bfloat16"
    if numel * 2 <= HALF_SHARE * free:
        return own
    s.why_tables_only = (
        f"transformers needs {numel * 2 / 1e9:.0f} GB to load this model in {own} and {free / 1e9:.0f} GB are free: "
        f"its rope tables are checked from config.json without weights (--dtype {own} loads it anyway)"
    )
    return TABLES_ONLY


def transformers_tables(root: Path) -> dict[str, Any]:
    """The rotary tables transformers builds from config.json alone: the model class's own rotary
    embedding, constructed from the config as the model's __init__ does, without any weights."""
    import sys

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(root)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    module = sys.modules[model_class.__module__]
    own = model_class.__name__.split("For")[0] + "RotaryEmbedding"
    names = [own] if hasattr(module, own) else sorted(n for n in dir(module) if n.endswith("RotaryEmbedding"))
    if not names:
        return {}
    return _tables(getattr(module, names[0])(config=config.get_text_config()))


def _tables(rotary: Any) -> dict[str, Any]:
    """inv_freq and attention scaling of a rotary module: one table, or one per layer type (v5 Gemma 3)."""
    if rotary is None:
        return {}
    if hasattr(rotary, "layer_types") and not hasattr(rotary, "inv_freq"):
        return {lt: {"inv_freq": getattr(rotary, f"{lt}_inv_freq").tolist(), "attention_scaling": float(getattr(rotary, f"{lt}_attention_scaling"))} for lt in rotary.layer_types}
    return {"": {"inv_freq": rotary.inv_freq.tolist(), "attention_scaling": float(rotary.attention_scaling)}}


def transformers_logits(root: Path, tokens: list[int], positions: list[int], dtype: str = "float32") -> tuple[np.ndarray, dict[str, Any]]:
    """Logits from transformers, loading the checkpoint the way a user does, and its rotary tables."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(root, dtype=getattr(torch, dtype))
    table = _tables(next((m for m in model.modules() if hasattr(m, "inv_freq") or hasattr(m, "layer_types") and hasattr(m, "rope_type")), None))
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0].double().numpy()
    return out, table


def half_bounds(noise: dict[str, Any]) -> tuple[Bound, ...]:
    """Bounds for transformers in half precision from the reference's own half-precision noise on this
    model (every activation rounded as the engine stores it): measured on a 7B, transformers in
    bfloat16 was within 1.1x of that noise (KL mean 1.24e-2 against 1.14e-2)."""
    return within_noise(HALF_BOUNDS, noise, HALF_NOISE_MARGIN)


def half_noise(reference: Any, s: Subject, probe: Probe, planned: np.ndarray) -> dict[str, Any]:
    """KL between the reference in float32 and the reference rounding its activations to the
    engine's half precision, below the original length (the near half of the probe)."""
    import torch

    near = probe.near
    rounded = reference.logits(probe.tokens[:near], probe.positions[:near], spec=s.spec(), round_to=getattr(torch, s.engine_dtype)).double().numpy()
    stats = region_stats(planned[:near], rounded, np.array([*probe.tokens[1:near], -1]))
    return {k: stats[k] for k in NOISE_KEYS}


def rope_table_check(tables: dict[str, Any], spec: rope.RopeSpec, layer_specs: dict[str, rope.RopeSpec] | None = None) -> Check:
    """transformers' rotary tables equal the plan: one table, or one per layer type (Gemma 3)."""
    name = "transformers rope table" + (" per layer type" if layer_specs else "")
    if not tables:
        return Check(name, "failed", reason="no rotary embedding module found in the loaded model")
    wanted = layer_specs or {lt: spec for lt in tables}
    measured: dict[str, Any] = {"pairs_match": True, "inv_freq_max_rel_diff": 0.0, "attention_factor_diff": 0.0}
    worst = ""
    for lt, table in tables.items():
        want = rope.compute(wanted.get(lt, spec), precision="float32")
        got = table["inv_freq"]
        pairs = len(got) == len(want.inv_freq)
        diff = max((abs(a - b) / b for a, b in zip(got, want.inv_freq, strict=False)), default=0.0) if pairs else float("inf")
        factor_diff = abs(table["attention_scaling"] - want.attention_factor)
        if lt:
            measured[f"{lt}_inv_freq_max_rel_diff"], measured[f"{lt}_attention_factor_diff"] = diff, factor_diff
        if (diff > 1e-6 or factor_diff > 1e-6 or not pairs) and not worst:
            worst = lt
        measured["pairs_match"] &= pairs
        measured["inv_freq_max_rel_diff"] = max(measured["inv_freq_max_rel_diff"], diff)
        measured["attention_factor_diff"] = max(measured["attention_factor_diff"], factor_diff)
        measured["attention_factor"] = table["attention_scaling"]
    check = judge(name, measured, ROPE_BOUNDS)
    if check.passed or not worst:
        return check
    plan = layer_specs[worst] if layer_specs else spec
    return Check(name, "failed", measured, ROPE_BOUNDS, f"the {worst} layers get another rope than the plan's ({plan.method}, theta {plan.base:g})")


