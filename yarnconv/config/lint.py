"""Lint a parsed config: what runtimes will misread, and why.

Pure: a :class:`ConfigView` in, :class:`Finding` objects out.
"""

from __future__ import annotations

import math
from typing import Any

from yarnconv import families
from yarnconv.config.block import KNOWN_ROPE_MODEL_TYPES, LEGACY_YARN_KEYS, NON_ROPE_MODEL_TYPES, ConfigView, Finding


def positional_scheme(view: ConfigView) -> str | None:
    """Why this model has no RoPE to scale, or None when it uses RoPE."""
    text = view.text
    if view.model_type in NON_ROPE_MODEL_TYPES:
        return NON_ROPE_MODEL_TYPES[view.model_type]
    if text.get("alibi") or text.get("position_embedding_type") in ("alibi", "absolute", "learned"):
        return "ALiBi" if text.get("alibi") or text.get("position_embedding_type") == "alibi" else "learned absolute positions"
    has_rope_keys = any(
        k in text for k in ("rope_theta", "rope_scaling", "rope_parameters", "rotary_emb_base", "partial_rotary_factor", "rotary_dim")
    )
    known = view.model_type in KNOWN_ROPE_MODEL_TYPES or view.model_type in families.CLASS_DEFAULTS
    if not has_rope_keys and not known:
        return f"an unknown position scheme (model_type {view.model_type!r} has no rope_theta or rope block)"
    return None


def lint(view: ConfigView) -> list[Finding]:
    """Findings about how runtimes will (mis)read this config's rope settings."""
    out: list[Finding] = []
    text, block = view.text, view.rope
    scaling = text.get("rope_scaling") or {}
    params = text.get("rope_parameters") or {}
    raw_block = scaling or (params.get("full_attention") if view.nested else params) or {}
    scaled = block.rope_type not in ("default", "none")
    if raw_block and scaled:
        out.extend(_type_keys(raw_block, block.rope_type))
    if view.layout == "rope_parameters" and scaled:
        out.append(
            Finding(
                "warning",
                "v5-only-layout",
                "only rope_parameters (transformers 5 form): transformers 4.x ignores it and falls back to theta 10000 (silently no YaRN)",
            )
        )
    if "rope_theta" not in text and "rope_theta" not in raw_block and block.theta and view.layout == "rope_parameters":
        out.append(Finding("info", "theta-inside-only", "rope_theta only inside rope_parameters: transformers 4.x readers use 10000"))
    if block.rope_type == "yarn":
        out.extend(_lint_yarn(view, raw_block))
        if view.model_type in families.HEAD_DIM_NONE_IN_V4 and text.get("head_dim") is None:
            out.append(
                Finding(
                    "error",
                    "head-dim-missing",
                    f"no head_dim: transformers 4.56-4.57's {view.model_type} config keeps None and crashes building the YaRN rotary embedding; write head_dim",
                )
            )
        refused = families.refusal(view.model_type)
        if refused:
            out.append(Finding("error", "family-rejects-yarn", refused))
    elif block.rope_type in ("dynamic-yarn",):
        out.append(
            Finding(
                "warning",
                "dynamic-yarn",
                "dynamic-yarn exists only in the reference code; transformers computes static YaRN, other runtimes fail",
            )
        )
    out.extend(_general(view, raw_block, scaled))
    return out


def _lint_yarn(view: ConfigView, raw_block: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    block, text = view.rope, view.text
    top_original = text.get("original_max_position_embeddings")
    if block.original_context is None:
        out.append(
            Finding(
                "error",
                "missing-original",
                "YaRN block lacks original_max_position_embeddings: transformers 5/vLLM use max_position_embeddings, llama.cpp context_length, TGI 2048; the llama.cpp converter and exllamav2 fail",
            )
        )
    elif isinstance(raw_block.get("original_max_position_embeddings"), float):
        out.append(
            Finding(
                "warning", "float-original", "original_max_position_embeddings is a float; llama.cpp stores it as u32, write an integer"
            )
        )
    if top_original is not None and top_original != block.original_context:
        out.append(
            Finding(
                "error",
                "top-level-original",
                f"top-level original_max_position_embeddings={top_original} overrides the block's {block.original_context} in transformers 5 and vLLM but not in the llama.cpp converter",
            )
        )
    if block.factor is not None and block.original_context and view.max_position:
        implied = block.original_context * block.factor
        if view.max_position != implied:
            out.append(
                Finding(
                    "error",
                    "max-position-mismatch",
                    f"max_position_embeddings={view.max_position} but original x factor = {implied:g}: vLLM/SGLang/llama.cpp cap the context at {view.max_position}, transformers 4.51-4.55 use factor {view.max_position / block.original_context:g}",
                )
            )
    if block.factor is None:
        out.append(
            Finding(
                "error",
                "missing-factor",
                "YaRN block has no factor: vLLM and the llama.cpp converter fail, transformers 5 uses max/original",
            )
        )
    elif block.factor <= 1 or not math.isfinite(block.factor):
        out.append(Finding("error", "bad-factor", f"YaRN factor {block.factor:g} does not extend anything (must be > 1)"))
    out.extend(_yarn_keys(block, raw_block))
    return out


def _type_keys(raw_block: dict[str, Any], rope_type: str) -> list[Finding]:
    """`type` and `rope_type`: which runtimes read which (exllamav2 reads `type` alone)."""
    out: list[Finding] = []
    has_type, has_rope_type = "type" in raw_block, "rope_type" in raw_block
    if has_type and has_rope_type:
        out.append(
            Finding(
                "info",
                "both-type-keys",
                "rope block has both `type` and `rope_type`: fine for transformers >= 4.44, vLLM and llama.cpp; exllamav2 asserts (use --schema exllamav2 for it)",
            )
        )
    elif has_rope_type and rope_type == "yarn":
        out.append(Finding("warning", "rope-type-only", "rope block has `rope_type` but no `type`: exllamav2 runs without YaRN"))
    elif has_rope_type and rope_type in ("linear", "longrope", "dynamic"):
        out.append(
            Finding("info", "rope-type-only", f"rope block has `rope_type` but no `type`: exllamav2 reads `type`, so it ignores this {rope_type} scaling")
        )
    elif not has_type:
        out.append(Finding("error", "no-type-key", "rope block has neither `type` nor `rope_type`: transformers treats it as unscaled"))
    return out


def _general(view: ConfigView, raw_block: dict[str, Any], scaled: bool) -> list[Finding]:
    """Findings for any scaled block: integer factor, legacy keys, custom code, sliding window."""
    out: list[Finding] = []
    text = view.text
    factor = raw_block.get("factor")
    if scaled and isinstance(factor, int) and not isinstance(factor, bool):
        out.append(
            Finding(
                "warning", "integer-factor", f"factor is the integer {factor}: transformers 4.43 raises ValueError; write {float(factor)}"
            )
        )
    legacy = [k for k in LEGACY_YARN_KEYS if k in raw_block]
    if legacy:
        out.append(
            Finding(
                "warning",
                "legacy-keys",
                f"{', '.join(legacy)}: ignored by transformers and vLLM 0.32, multiplied in by SGLang, TGI and older vLLM (three different scales)",
            )
        )
    if text.get("auto_map") or view.raw.get("auto_map"):
        out.append(
            Finding(
                "warning",
                "custom-code",
                "auto_map points at custom modeling code, which may not implement YaRN; check it before trusting a long context",
            )
        )
    sliding = text.get("sliding_window")
    if sliding and text.get("use_sliding_window", True) and view.max_position and sliding < view.max_position:
        out.append(Finding("info", "sliding-window", f"sliding_window={sliding}: attention beyond {sliding} tokens is local"))
    return out


def _yarn_keys(block: Any, raw_block: dict[str, Any]) -> list[Finding]:
    """Betas, truncate, an explicit magnitude and mscale: the keys some runtimes drop."""
    out: list[Finding] = []
    for name, value in (("beta_fast", raw_block.get("beta_fast")), ("beta_slow", raw_block.get("beta_slow"))):
        if value is not None and not value:
            out.append(Finding("error", "zero-beta", f"{name}=0: transformers substitutes the default, vLLM divides by zero"))
    if (block.beta_fast or 32.0, block.beta_slow or 1.0) != (32.0, 1.0):
        out.append(
            Finding(
                "warning",
                "non-default-betas",
                f"betas {block.beta_fast or 32.0:g}/{block.beta_slow or 1.0:g}: llama.cpp (llama/qwen archs) and exllamav2 use 32/1",
            )
        )
    if block.truncate is False:
        out.append(
            Finding(
                "warning",
                "truncate-false",
                "truncate=false: llama.cpp always rounds the correction range, transformers < 4.55 ignores the key",
            )
        )
    if block.attention_factor is not None:
        out.append(
            Finding(
                "warning",
                "explicit-attention-factor",
                f"attention_factor={block.attention_factor:g}: ignored by the llama.cpp converter path, exllamav2, SGLang and older vLLM (0.32 and mlx-lm honour it)",
            )
        )
    if block.mscale or block.mscale_all_dim:
        out.append(
            Finding(
                "info",
                "mscale",
                "mscale/mscale_all_dim set: honoured by transformers >= 4.51 and vLLM 0.32, not by the generic llama.cpp converter",
            )
        )
    return out
