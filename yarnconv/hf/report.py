"""``inspect`` for HF checkpoints: what it is, what its rope config says, and what each runtime makes of it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from yarnconv import rope, runtimes
from yarnconv.config import ConfigView, positional_scheme, read_config
from yarnconv.errors import YarnconvError
from yarnconv.storage.files import CONFIG, RECORD, dir_size, read_json
from yarnconv.storage.sources import resolve
from yarnconv.storage.weights import WeightSet, read_safetensors_header, read_safetensors_metadata, scan_weights


def inspect_model(source: str | os.PathLike[str], *, revision: str | None = None) -> dict[str, Any]:
    """A machine-readable report on a checkpoint directory (or Hub id)."""
    src = resolve(source, revision)
    raw = read_json(src.path / CONFIG, CONFIG)
    record = src.path / RECORD
    made = read_json(record, RECORD) if record.is_file() else None
    return _report(raw, scan_weights(src.path), str(src.path), src.describe(), dir_size(src.path), made)


def inspect_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report on one safetensors file: its tensors, and when its metadata carries a config.json
    (``export --safetensors`` writes one) everything ``inspect`` says of a checkpoint."""
    p = Path(path)
    tensors = read_safetensors_header(p)
    meta = read_safetensors_metadata(p)
    weights = WeightSet(files=[p], tensors=tensors)
    try:
        raw = json.loads(meta["config"]) if "config" in meta else None
        made = json.loads(meta["yarnconv"]) if "yarnconv" in meta else None
    except json.JSONDecodeError:
        raise YarnconvError(f"{p.name}: the config in its metadata is not JSON", "re-export it with yarnconv export --safetensors") from None
    if not isinstance(raw, dict):
        return {"path": str(p), "config": None, "weight_dtypes": weights.dtypes, "parameters": weights.num_parameters, "tensors": len(tensors), "size_on_disk": p.stat().st_size, "metadata_keys": sorted(meta)}
    report = _report(raw, weights, str(p), "single safetensors file, config from its metadata", p.stat().st_size, made)
    report["tensors"] = len(tensors)
    return report


def _report(raw: dict[str, Any], weights: WeightSet, path: str, source: str, size: int, made: Any) -> dict[str, Any]:
    view = read_config(raw)
    block = view.rope
    report: dict[str, Any] = {
        "path": path,
        "source": source,
        "model_type": view.model_type,
        "architectures": view.architectures,
        "config_section": ".".join(view.section) or "root",
        "layers": view.num_layers,
        "hidden_size": view.hidden_size,
        "attention_heads": view.num_heads,
        "kv_heads": view.num_kv_heads,
        "head_dim": view.head_dim,
        "rope_head_dim": view.rope_head_dim,
        "rotary_dim": view.rotary_dim,
        "rope_theta": block.theta,
        "class_defaults_used": view.defaulted,
        "vocab_size": view.vocab_size,
        "dtype": view.dtype,
        "weight_dtypes": weights.dtypes,
        "parameters": weights.num_parameters if weights.tensors else None,
        "weight_files": [p.name for p in weights.files + weights.opaque],
        "unparsed_weight_files": [p.name for p in weights.opaque],
        "size_on_disk": size,
        "max_position_embeddings": view.max_position,
        "rope_layout": view.layout,
        "rope": block.to_dict(),
        "positional_encoding": positional_scheme(view) or "rope",
        "findings": [f.__dict__ for f in view.findings],
    }
    if view.rope_head_dim and not positional_scheme(view) and view.rotary_dim and view.rotary_dim % 2 == 0:
        refs = runtimes.reference_specs(view)
        report["effective"] = _effective(view, refs)
        report["runtimes"] = runtimes.compare(view, refs)
        if view.layer_ropes:
            report["layer_ropes"] = {lt: b.to_dict() for lt, b in view.layer_ropes.items()}
    if isinstance(made, dict):
        report["yarnconv"] = {k: made.get(k) for k in ("yarnconv_version", "created", "method", "factor", "original_context", "source")}
    return report


def _effective(view: ConfigView, refs: dict[str, rope.RopeSpec]) -> dict[str, Any]:
    spec = refs.get("full_attention") or refs["all"]
    try:
        result = rope.compute(spec)
    except ValueError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"method": spec.method, "attention_factor": result.attention_factor, "rotary_dim": spec.dim, "theta": spec.base}
    if spec.method == "yarn":
        out["correction_range"] = list(result.correction_range or ())
        out["temperature"] = rope.temperature_from_attention_factor(result.attention_factor)
        out["logit_multiplier"] = result.attention_factor**2
        if view.is_mla and spec.mscale_all_dim:
            # MLA models also scale the softmax by g(s, mscale_all_dim)^2 (yarn-math F9)
            out["softmax_multiplier"] = rope.mscale(spec.factor or 1.0, spec.mscale_all_dim) ** 2
            out["logit_multiplier"] *= out["softmax_multiplier"]
    if spec.method in ("yarn", "linear", "llama3", "longrope", "dynamic") and spec.factor:
        out["factor"] = spec.factor
    if spec.method == "dynamic" and spec.max_position:
        m = spec.max_position
        out["dynamic_base"] = {str(n): rope.dynamic_ntk_base(spec, n) for n in (m, 2 * m, 4 * m)}
    if spec.method in ("llama3", "longrope", "linear"):
        base = rope.base_inv_freq(spec.base, spec.dim)
        out["inv_freq_divisor"] = {"min": min(b / f for b, f in zip(base, result.inv_freq, strict=True)), "max": max(b / f for b, f in zip(base, result.inv_freq, strict=True))}
    for lt, other in refs.items():
        if other is not spec:
            out.setdefault("other_layers", {})[lt] = {"method": other.method, "theta": other.base, "attention_factor": rope.compute(other).attention_factor}
    return out
