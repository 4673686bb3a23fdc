"""Every runtime's reading next to yarnconv's own, per layer type: the verdict rows ``inspect`` prints."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from yarnconv import rope
from yarnconv.config import ConfigView, read_config
from yarnconv.runtimes.others import NOT_MODELLED
from yarnconv.runtimes.readers import mla_softmax_multiplier
from yarnconv.runtimes.registry import BASIS, READERS, reading


def _layer_row(spec: rope.RopeSpec, ref: rope.RopeSpec) -> dict[str, Any]:
    got, want = rope.compute(spec), rope.compute(ref)
    if len(got.inv_freq) != len(want.inv_freq):
        diff = float("inf")
    else:
        diff = max((abs(a - b) / b for a, b in zip(got.inv_freq, want.inv_freq, strict=True)), default=0.0)
    same = diff <= 1e-6 and abs(got.attention_factor - want.attention_factor) <= 1e-7
    return {
        "method": spec.method,
        "factor": spec.factor,
        "original_context": spec.original_context,
        "theta": spec.base,
        "rotary_dim": spec.dim,
        "attention_factor": got.attention_factor,
        "inv_freq_max_rel_diff": diff,
        "verdict": "same" if same else "differs",
    }


def compare(view: ConfigView, references: dict[str, rope.RopeSpec]) -> list[dict[str, Any]]:
    """Every runtime's reading next to yarnconv's, per layer type: inv_freq difference and magnitude."""
    rows = []
    for name in READERS:
        r = reading(view, name)
        row: dict[str, Any] = {"runtime": name, "basis": BASIS[name], "notes": r.notes, "max_context": r.max_context}
        if r.error:
            verdict = "unsupported" if r.error.startswith("unsupported") else "unknown" if r.error.startswith(NOT_MODELLED) else "fails"
            rows.append({**row, "method": "error", "verdict": verdict, "error": r.error})
            continue
        layers: dict[str, Any] = {}
        try:
            for lt, ref in references.items():
                spec = r.specs.get(lt) or r.specs.get("all") or r.specs.get("full_attention")
                if spec is None:
                    raise ValueError(f"no rope for {lt} layers")
                layers[lt] = _layer_row(spec, ref)
        except ValueError as exc:
            rows.append({**row, "method": "error", "verdict": "fails", "error": str(exc)})
            continue
        main = layers.get("full_attention") or layers.get("all") or next(iter(layers.values()))
        want_softmax = mla_softmax_multiplier(view, references.get("full_attention") or references.get("all") or next(iter(references.values())))
        verdict = "same" if all(v["verdict"] == "same" for v in layers.values()) else "differs"
        if abs(r.softmax_multiplier - want_softmax) > 1e-7:
            verdict = "differs"
        if view.is_mla:
            row["softmax_multiplier"] = r.softmax_multiplier
        diff = max(v["inv_freq_max_rel_diff"] for v in layers.values())
        rows.append({**row, **main, "inv_freq_max_rel_diff": diff, "verdict": verdict, "layers": layers})
    return rows


def reference_specs(view: ConfigView) -> dict[str, rope.RopeSpec]:
    """yarnconv's reading per layer type ("all" for single-rope models); a YaRN block without L
    falls back to max length as transformers 5 does, and a missing factor to max / L."""
    blocks = view.layer_ropes or {"all": view.rope}
    out = {}
    for lt, block in blocks.items():
        spec = block.spec(view.rope_head_dim or 0, view.max_position)
        if spec.method in ("yarn", "longrope") and spec.original_context is None:
            spec = replace(spec, original_context=view.max_position)
        if spec.method in ("yarn", "linear", "dynamic", "longrope") and spec.factor is None and spec.original_context and view.max_position:
            spec = replace(spec, factor=view.max_position / spec.original_context)
        out[lt] = spec
    return out


def compare_config(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`compare` for a config.json dict against yarnconv's own reading of it."""
    view = read_config(raw)
    return compare(view, reference_specs(view))
