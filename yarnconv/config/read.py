"""Read any HF config layout into one canonical rope block (and lint it on the way).

Layouts in the wild (see docs/runtimes.md):

* transformers v4: ``rope_scaling`` + top-level ``rope_theta`` / ``partial_rotary_factor``;
* transformers v5: ``rope_parameters`` with ``rope_theta`` inside, possibly nested per layer type;
* either, under ``text_config`` for multimodal wrappers;
* ``type`` and/or ``rope_type`` as the selector, a top-level ``original_max_position_embeddings``.

Everything here is pure: dicts in, dataclasses out.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from yarnconv import families
from yarnconv.config.block import _BLOCK_KEYS, LAYER_TYPE_KEYS, ConfigView, Finding, RopeBlock
from yarnconv.config.lint import lint, positional_scheme
from yarnconv.errors import YarnconvError

# Text model types of wrappers whose text_config may omit its own model_type.
WRAPPER_TEXT_TYPES = {"gemma3": "gemma3_text", "qwen2_5_vl": "qwen2_5_vl_text", "qwen2_vl": "qwen2_vl_text", "mistral3": "mistral", "llava": "llama"}
# "mrope" (Qwen2-VL) names a sectioning of plain RoPE, not a scaling; "su" is LongRoPE's old name.
TYPE_ALIASES = {"mrope": "default", "su": "longrope"}
# Upper bounds that keep every runtime's integer types and float math meaningful.
MAX_CONTEXT = 2**31 - 1
MAX_THETA = 1e12


def _text_section(raw: dict[str, Any]) -> tuple[str, ...]:
    """Multimodal wrappers keep the language model's settings under ``text_config``."""
    text = raw.get("text_config")
    if isinstance(text, dict) and text:
        return ("text_config",)
    return ()


def _is_nested(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and bool(block)
        and any(k in LAYER_TYPE_KEYS for k in block)
        and all(v is None or isinstance(v, dict) for v in block.values())
    )


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise YarnconvError(f"config.json: {what} is {value!r}, not a finite number", "fix the value in config.json")
    return float(value)


def _theta(value: float | None, what: str) -> float | None:
    if value is not None and not 1.0 < value <= MAX_THETA:
        raise YarnconvError(f"config.json: {what} is {value:g}; a RoPE base must be above 1 (and at most {MAX_THETA:g})", "fix the value in config.json")
    return value


def _selector(block: dict[str, Any], findings: list[Finding]) -> str:
    """The scaling type named by ``type``/``rope_type``, flagging layouts some runtimes misread."""
    kind, legacy = block.get("rope_type"), block.get("type")
    if kind is not None and legacy is not None and kind != legacy:
        findings.append(
            Finding("error", "type-conflict", f"rope block says type={legacy!r} but rope_type={kind!r}; vLLM raises, others pick one")
        )
    if not isinstance(kind or legacy or "default", str):
        raise YarnconvError(f"config.json: rope type is {kind or legacy!r}, not a string", "fix the rope block in config.json")
    name = str(kind or legacy or "default")
    return TYPE_ALIASES.get(name, name)


def _block_from_dict(
    block: dict[str, Any], top: dict[str, Any], findings: list[Finding], *, theta_default: float | None = None, rho_default: float | None = None
) -> RopeBlock:
    kind = _selector(block, findings)
    theta = _block_theta(block, top, findings, theta_default)
    rho = _block_rho(block, top, findings, rho_default)
    original = block.get("original_max_position_embeddings")
    if original is None and kind == "longrope":
        original = top.get("original_max_position_embeddings")  # Phi-3 keeps it at top level
    if original is not None and (
        isinstance(original, bool) or not isinstance(original, (int, float)) or not 0 < original <= MAX_CONTEXT or original != int(original)
    ):
        raise YarnconvError(
            f"config.json: original_max_position_embeddings is {original!r}, not a positive integer", "fix the value in config.json"
        )
    truncate = block.get("truncate")
    return RopeBlock(
        rope_type=kind,
        theta=theta,
        partial_rotary_factor=rho,
        factor=_number(block.get("factor"), "factor"),
        original_context=int(original) if original is not None else None,
        beta_fast=_number(block.get("beta_fast"), "beta_fast"),
        beta_slow=_number(block.get("beta_slow"), "beta_slow"),
        truncate=bool(truncate) if truncate is not None else None,
        # transformers reads an explicit magnitude for yarn and longrope only
        attention_factor=_number(block.get("attention_factor"), "attention_factor") if kind in ("yarn", "longrope") else None,
        mscale=_number(block.get("mscale"), "mscale"),
        mscale_all_dim=_number(block.get("mscale_all_dim"), "mscale_all_dim"),
        extra={k: v for k, v in block.items() if k not in _BLOCK_KEYS},
    )


def _block_theta(block: dict[str, Any], top: dict[str, Any], findings: list[Finding], theta_default: float | None) -> float:
    """The block's theta, else the top level's, else the class default (or 10000, with a warning)."""
    theta_in = _theta(_number(block.get("rope_theta"), "rope_theta"), "rope_theta")
    theta_top = _theta(_number(top.get("rope_theta"), "rope_theta"), "rope_theta")
    if theta_in is not None and theta_top is not None and theta_in != theta_top:
        findings.append(
            Finding(
                "error",
                "theta-conflict",
                f"rope_theta is {theta_in:g} in the rope block but {theta_top:g} at top level; v4 reads the top level, v5 the block",
            )
        )
    theta = theta_in if theta_in is not None else theta_top
    if theta is None and theta_default is not None:
        theta = theta_default
        findings.append(Finding("info", "theta-class-default", f"rope_theta not in config.json: read as the class default {theta:g}"))
    elif theta is None:
        findings.append(
            Finding(
                "warning", "theta-missing", "no rope_theta: transformers 4.x assumes 10000, 5.x a per-class default; write it explicitly"
            )
        )
        theta = 10000.0
    return theta


def _block_rho(block: dict[str, Any], top: dict[str, Any], findings: list[Finding], rho_default: float | None) -> float | None:
    """The rotary fraction: the block's, else the top level's, else the class default."""
    rho_in = _number(block.get("partial_rotary_factor"), "partial_rotary_factor")
    rho_top = _number(top.get("partial_rotary_factor"), "partial_rotary_factor")
    if rho_in is not None and rho_top is not None and rho_in != rho_top:
        findings.append(
            Finding(
                "error",
                "partial-rotary-conflict",
                f"partial_rotary_factor is {rho_in:g} in the rope block but {rho_top:g} at top level; v5 reads the block, v4 the top level",
            )
        )
    rho = rho_in if rho_in is not None else rho_top if rho_top is not None else rho_default
    if rho is not None and not 0.0 < rho <= 1.0:
        raise YarnconvError(f"config.json: partial_rotary_factor is {rho:g}, not in (0, 1]", "fix the value in config.json")
    return rho


def _int_field(text: dict[str, Any], key: str) -> int | None:
    value = text.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise YarnconvError(f"config.json: {key} is {value!r}, not a positive integer", "fix the value in config.json")
    return value


def _resolve(text: dict[str, Any], model_type: str | None) -> tuple[dict[str, Any], list[str]]:
    """The text section with renamed keys mapped and omitted shape keys set to the class defaults.

    rope_theta and partial_rotary_factor are left out: they may live inside a v5 rope block.
    """
    resolved = dict(text)
    for old, new in families.KEY_ALIASES.get(model_type or "", {}).items():
        if old in text and new not in text:
            resolved[new] = text[old]
    defaulted = []
    for key, value in families.defaults(model_type).items():
        if key in ("rope_theta", "rope_theta_v5", "partial_rotary_factor", "rope_local_base_freq") or resolved.get(key) is not None:
            continue
        resolved[key] = value
        defaulted.append(key)
    return resolved, defaulted


def _rope_head_dim(resolved: dict[str, Any], model_type: str | None, head_dim: int | None) -> int | None:
    if model_type in families.MLA_MODEL_TYPES:
        return _int_field(resolved, "qk_rope_head_dim")
    return head_dim


def read_config(raw: Any) -> ConfigView:
    """Parse a config.json dict into a :class:`ConfigView`, collecting lint findings on the way."""
    if not isinstance(raw, dict):
        raise YarnconvError("config.json does not hold a JSON object", "is this a Hugging Face model directory?")
    section = _text_section(raw)
    text = raw[section[0]] if section else raw
    findings: list[Finding] = []
    model_type = text.get("model_type") or WRAPPER_TEXT_TYPES.get(raw.get("model_type") or "") or raw.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise YarnconvError(f"config.json: model_type is {model_type!r}, not a string", "fix the value in config.json")
    resolved, defaulted = _resolve(text, model_type)
    if defaulted:
        findings.append(
            Finding("info", "class-defaults", f"{', '.join(defaulted)} not in config.json: read as {model_type}'s class defaults")
        )
    theta_default, rho_default = _rope_defaults(text, resolved, model_type)
    layout, nested, block, layer_ropes = _rope_blocks(text, findings, model_type, theta_default, rho_default)
    hidden, heads = _int_field(resolved, "hidden_size"), _int_field(resolved, "num_attention_heads")
    head_dim = _head_dim(resolved, model_type, hidden, heads)
    if model_type == "gptj" and head_dim and isinstance(resolved.get("rotary_dim"), int) and block.partial_rotary_factor is None:
        block = replace(block, partial_rotary_factor=resolved["rotary_dim"] / head_dim)
    dtype = text.get("dtype") or text.get("torch_dtype") or raw.get("dtype") or raw.get("torch_dtype")
    archs = raw.get("architectures") or text.get("architectures") or []
    view = ConfigView(
        raw=raw,
        section=section,
        layout=layout,
        rope=block,
        nested=nested,
        model_type=model_type,
        architectures=[a for a in archs if isinstance(a, str)] if isinstance(archs, list) else [],
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=_int_field(resolved, "num_key_value_heads") or heads,
        head_dim=head_dim,
        rope_head_dim=_rope_head_dim(resolved, model_type, head_dim),
        num_layers=_int_field(resolved, "num_hidden_layers"),
        max_position=_int_field(resolved, "max_position_embeddings"),
        vocab_size=_int_field(resolved, "vocab_size"),
        dtype=dtype if isinstance(dtype, str) else None,
        findings=findings,
        resolved=resolved,
        defaulted=defaulted,
        layer_ropes=layer_ropes,
    )
    if positional_scheme(view):  # no RoPE: a missing theta is not a problem
        view.findings = [f for f in findings if f.code != "theta-missing"]
    view.findings.extend(lint(view))
    return view


def _rope_defaults(text: dict[str, Any], resolved: dict[str, Any], model_type: str | None) -> tuple[Any, Any]:
    """The theta and rotary fraction a block without them gets: the family's class defaults, or an alias's value."""
    class_defaults = families.defaults(model_type)
    theta_default = class_defaults.get("rope_theta")
    rho_default = class_defaults.get("partial_rotary_factor")
    if "rope_theta" in resolved and "rope_theta" not in text:  # an alias (rotary_emb_base)
        theta_default = _number(resolved["rope_theta"], "rope_theta")
    if "partial_rotary_factor" in resolved and "partial_rotary_factor" not in text:
        rho_default = _number(resolved["partial_rotary_factor"], "partial_rotary_factor")
    if model_type == "gptj" and isinstance(resolved.get("rotary_dim"), int):
        rho_default = None  # set from rotary_dim once the head size is known
    return theta_default, rho_default


def _rope_blocks(text: dict[str, Any], findings: list[Finding], model_type: str | None, theta_default: Any, rho_default: Any) -> tuple[str, bool, RopeBlock, dict[str, RopeBlock]]:
    """The layout, whether it is nested per layer type, the main rope block and the per-layer-type blocks."""
    scaling, params = text.get("rope_scaling"), text.get("rope_parameters")
    for name, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise YarnconvError(f"config.json: {name} is {value!r}, not an object", f"fix or remove {name} in config.json")
    layout = "both" if scaling and params else "rope_scaling" if scaling else "rope_parameters" if params else "none"
    nested = _is_nested(params)
    local_key = families.LOCAL_BASE_KEY.get(model_type or "")
    local_theta = _theta(_number(text.get(local_key), local_key) if local_key else None, local_key or "")
    if local_key and local_theta is None:
        local_theta = families.defaults(model_type).get(local_key)
    layer_ropes: dict[str, RopeBlock] = {}
    if nested and not scaling:
        assert isinstance(params, dict)
        full = params.get("full_attention") or next(v for v in params.values() if v)
        block = _block_from_dict(full, text, findings, theta_default=theta_default, rho_default=rho_default)
        for lt in [k for k in params if params[k]]:
            default = local_theta if lt == "sliding_attention" and local_theta else theta_default
            layer_ropes[lt] = block if params[lt] is full else _block_from_dict(params[lt], text, findings, theta_default=default, rho_default=rho_default)
    else:
        # transformers v5 lets a rope_scaling block win over rope_parameters; so do we.
        chosen = scaling or (params if not nested else None) or {}
        block = _block_from_dict(chosen, text, findings, theta_default=theta_default, rho_default=rho_default)
        if local_key:
            layer_ropes = {"full_attention": block, "sliding_attention": RopeBlock(theta=float(local_theta or 10000.0))}
    if layout == "both" and not nested:
        other = _block_from_dict(params, text, [], theta_default=theta_default, rho_default=rho_default)
        if _comparable(other) != _comparable(block):
            what = "rope_scaling and rope_parameters disagree; transformers 5 follows rope_scaling, the llama.cpp converter (under transformers 4) rope_parameters"
            findings.append(Finding("error", "layouts-disagree", what))
    return layout, nested, block, layer_ropes


def _head_dim(resolved: dict[str, Any], model_type: str | None, hidden: int | None, heads: int | None) -> int | None:
    head_dim = _int_field(resolved, "head_dim")
    if model_type in families.MLA_MODEL_TYPES and isinstance(resolved.get("qk_nope_head_dim"), int):
        head_dim = resolved["qk_nope_head_dim"] + (_int_field(resolved, "qk_rope_head_dim") or 0)
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    return head_dim


def _comparable(block: RopeBlock) -> dict[str, Any]:
    return {k: v for k, v in block.to_dict().items() if k != "extra"}
