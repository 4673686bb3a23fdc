"""Read any HF config layout into one canonical rope block, lint it, and write it back.

Layouts in the wild (see shared/reference/runtimes.md):

* transformers v4: ``rope_scaling`` + top-level ``rope_theta`` / ``partial_rotary_factor``;
* transformers v5: ``rope_parameters`` with ``rope_theta`` inside, possibly nested per layer type;
* either, under ``text_config`` for multimodal wrappers;
* ``type`` and/or ``rope_type`` as the selector, a top-level ``original_max_position_embeddings``.

Everything here is pure: dicts in, dicts and dataclasses out.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from yarnconv import families, rope
from yarnconv.errors import YarnconvError

# Keys the canonical block understands; anything else inside a rope block is carried through.
_BLOCK_KEYS = {
    "type",
    "rope_type",
    "rope_theta",
    "partial_rotary_factor",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "truncate",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
}
LAYER_TYPE_KEYS = {"full_attention", "sliding_attention", "chunked_attention", "main", "compress"}
# Legacy keys that transformers and vLLM 0.33 ignore but the reference code, SGLang and TGI honour.
LEGACY_YARN_KEYS = ("attn_factor", "extrapolation_factor", "finetuned")
# model_type values known to use no rotary embedding at all.
NON_ROPE_MODEL_TYPES = {
    "gpt2": "learned absolute positions",
    "opt": "learned absolute positions",
    "bert": "learned absolute positions",
    "roberta": "learned absolute positions",
    "bart": "learned absolute positions",
    "whisper": "learned absolute positions",
    "gpt_bigcode": "learned absolute positions",
    "bloom": "ALiBi",
    "mpt": "ALiBi",
    "t5": "relative position buckets",
    "mamba": "no attention positions (state-space model)",
    "mamba2": "no attention positions (state-space model)",
    "rwkv": "no attention positions (recurrent model)",
}
# model_type values known to use RoPE even when the config names no rope key (old Llama configs).
KNOWN_ROPE_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi", "phi3", "gpt_neox", "gptj", "stablelm", "olmo", "olmo2", "starcoder2", "internlm2", "cohere", "granite",
    "exaone", "smollm3", "falcon", "deepseek_v2", "deepseek_v3", "yi", "baichuan", "minicpm", "persimmon",
}  # fmt: skip
Schema = Literal["portable", "v5", "exllamav2"]
SCHEMAS: tuple[str, ...] = ("portable", "v5", "exllamav2")
SCHEMA_HELP = {
    "portable": "rope_scaling with both type and rope_type + top-level rope_theta (read by transformers >= 4.51 "
    "and 5.x, vLLM, SGLang, the llama.cpp converter, MLX)",
    "v5": "transformers 5 rope_parameters only (transformers 4.x readers silently lose YaRN and theta)",
    "exllamav2": "rope_scaling with `type` only (exllamav2 asserts on both keys; transformers >= 4.44 still reads it)",
}


@dataclass(frozen=True)
class RopeBlock:
    """One canonical description of a model's rotary embedding, whatever layout it came from."""

    rope_type: str = "default"
    theta: float = 10000.0
    partial_rotary_factor: float | None = None
    factor: float | None = None
    original_context: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    truncate: bool | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self, head_dim: int, max_position: int | None = None) -> rope.RopeSpec:
        """The math-level view of this block for a head of ``head_dim`` rotary-capable channels."""
        method = self.rope_type if self.rope_type in rope.METHODS else "default"
        x = self.extra
        return rope.RopeSpec(
            method=method,
            base=self.theta,
            dim=rope.rotary_dim(head_dim, self.partial_rotary_factor),
            factor=self.factor,
            original_context=self.original_context,
            beta_fast=self.beta_fast,
            beta_slow=self.beta_slow,
            truncate=True if self.truncate is None else self.truncate,
            attention_factor=self.attention_factor,
            mscale=self.mscale,
            mscale_all_dim=self.mscale_all_dim,
            max_position=max_position,
            low_freq_factor=_opt_float(x.get("low_freq_factor")),
            high_freq_factor=_opt_float(x.get("high_freq_factor")),
            short_factor=_float_tuple(x.get("short_factor")),
            long_factor=_float_tuple(x.get("long_factor")),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form with absent values dropped."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float_tuple(value: Any) -> tuple[float, ...] | None:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    return None


@dataclass(frozen=True)
class Finding:
    """One lint result: ``level`` is error (runtimes will misread it), warning or info."""

    level: Literal["error", "warning", "info"]
    code: str
    message: str


@dataclass
class ConfigView:
    """A parsed config.json: where the text model's settings live and what its rope block says.

    ``resolved`` is the text section with the keys it omits filled in the way the family's
    transformers config class fills them (``defaulted`` names them). ``rope`` is the block that
    context scaling applies to (the full-attention layers'); ``layer_ropes`` holds every layer
    type's block for families whose sliding layers keep their own base (Gemma 3).
    """

    raw: dict[str, Any]
    section: tuple[str, ...]
    layout: str  # rope_scaling | rope_parameters | both | none
    rope: RopeBlock
    nested: bool
    model_type: str | None
    architectures: list[str]
    hidden_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    rope_head_dim: int | None  # channels per head the rotary embedding sees (MLA: qk_rope_head_dim)
    num_layers: int | None
    max_position: int | None
    vocab_size: int | None
    dtype: str | None
    findings: list[Finding]
    resolved: dict[str, Any] = field(default_factory=dict)
    defaulted: list[str] = field(default_factory=list)
    layer_ropes: dict[str, RopeBlock] = field(default_factory=dict)

    @property
    def text(self) -> dict[str, Any]:
        """The dict holding the text model's settings (root or ``text_config``)."""
        node = self.raw
        for key in self.section:
            node = node[key]
        return node

    @property
    def rotary_dim(self) -> int | None:
        if self.rope_head_dim is None:
            return None
        return rope.rotary_dim(self.rope_head_dim, self.rope.partial_rotary_factor)

    @property
    def is_mla(self) -> bool:
        return self.model_type in families.MLA_MODEL_TYPES

    @property
    def custom_code_only(self) -> bool:
        """Only the repo's own modeling code (trust_remote_code) loads this model."""
        auto_map = self.raw.get("auto_map") or self.text.get("auto_map")
        builtin = (KNOWN_ROPE_MODEL_TYPES | set(NON_ROPE_MODEL_TYPES)) - families.CUSTOM_CODE_ONLY
        return families.custom_code_only(self.model_type, auto_map, builtin)


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
    elif theta is None:
        findings.append(
            Finding(
                "warning", "theta-missing", "no rope_theta: transformers 4.x assumes 10000, 5.x a per-class default; write it explicitly"
            )
        )
        theta = 10000.0
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
        attention_factor=_number(block.get("attention_factor"), "attention_factor"),
        mscale=_number(block.get("mscale"), "mscale"),
        mscale_all_dim=_number(block.get("mscale_all_dim"), "mscale_all_dim"),
        extra={k: v for k, v in block.items() if k not in _BLOCK_KEYS},
    )


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
    class_defaults = families.defaults(model_type)
    theta_default = class_defaults.get("rope_theta")
    rho_default = class_defaults.get("partial_rotary_factor")
    if "rope_theta" in resolved and "rope_theta" not in text:  # an alias (rotary_emb_base)
        theta_default = _number(resolved["rope_theta"], "rope_theta")
    if "partial_rotary_factor" in resolved and "partial_rotary_factor" not in text:
        rho_default = _number(resolved["partial_rotary_factor"], "partial_rotary_factor")
    if model_type == "gptj" and isinstance(resolved.get("rotary_dim"), int):
        rho_default = None  # set from rotary_dim below, once the head size is known
    scaling, params = text.get("rope_scaling"), text.get("rope_parameters")
    for name, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise YarnconvError(f"config.json: {name} is {value!r}, not an object", f"fix or remove {name} in config.json")
    layout = "both" if scaling and params else "rope_scaling" if scaling else "rope_parameters" if params else "none"
    nested = _is_nested(params)
    local_key = families.LOCAL_BASE_KEY.get(model_type or "")
    local_theta = _theta(_number(text.get(local_key), local_key) if local_key else None, local_key or "")
    if local_key and local_theta is None:
        local_theta = class_defaults.get(local_key)
    layer_ropes: dict[str, RopeBlock] = {}
    if nested and not scaling:
        assert isinstance(params, dict)
        types = [k for k in params if params[k]]
        full = params.get("full_attention") or next(v for v in params.values() if v)
        block = _block_from_dict(full, text, findings, theta_default=theta_default, rho_default=rho_default)
        for lt in types:
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
            findings.append(
                Finding(
                    "error",
                    "layouts-disagree",
                    "rope_scaling and rope_parameters disagree; transformers 5 follows rope_scaling, the llama.cpp converter (under transformers 4) rope_parameters",
                )
            )
    hidden, heads = _int_field(resolved, "hidden_size"), _int_field(resolved, "num_attention_heads")
    head_dim = _int_field(resolved, "head_dim")
    if model_type in families.MLA_MODEL_TYPES and isinstance(resolved.get("qk_nope_head_dim"), int):
        head_dim = resolved["qk_nope_head_dim"] + (_int_field(resolved, "qk_rope_head_dim") or 0)
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
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


def _comparable(block: RopeBlock) -> dict[str, Any]:
    return {k: v for k, v in block.to_dict().items() if k != "extra"}


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
        has_type, has_rope_type = "type" in raw_block, "rope_type" in raw_block
        if has_type and has_rope_type:
            out.append(
                Finding(
                    "info",
                    "both-type-keys",
                    "rope block has both `type` and `rope_type`: fine for transformers >= 4.44, vLLM and llama.cpp; exllamav2 asserts (use --schema exllamav2 for it)",
                )
            )
        elif has_rope_type and block.rope_type == "yarn":
            out.append(Finding("warning", "rope-type-only", "rope block has `rope_type` but no `type`: exllamav2 runs without YaRN"))
        elif has_rope_type and block.rope_type in ("linear", "longrope", "dynamic"):
            out.append(
                Finding("info", "rope-type-only", f"rope block has `rope_type` but no `type`: exllamav2 reads `type`, so it ignores this {block.rope_type} scaling")
            )
        elif not has_type:
            out.append(Finding("error", "no-type-key", "rope block has neither `type` nor `rope_type`: transformers treats it as unscaled"))
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
                f"{', '.join(legacy)}: ignored by transformers and vLLM 0.33, multiplied in by SGLang/TGI/vLLM < 0.33 (three different scales)",
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
                f"attention_factor={block.attention_factor:g}: ignored by the llama.cpp converter path, exllamav2, MLX and vLLM < 0.33",
            )
        )
    if block.mscale or block.mscale_all_dim:
        out.append(
            Finding(
                "info",
                "mscale",
                "mscale/mscale_all_dim set: honoured by transformers >= 4.51 and vLLM 0.33, not by the generic llama.cpp converter",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def block_to_dict(block: RopeBlock, schema: Schema) -> dict[str, Any]:
    """The rope block as a JSON object for ``schema``; floats where runtimes require floats."""
    out: dict[str, Any] = {}
    if schema in ("portable", "exllamav2"):
        out["type"] = block.rope_type
    if schema in ("portable", "v5"):
        out["rope_type"] = block.rope_type
    if schema == "v5":
        out["rope_theta"] = float(block.theta)
        if block.partial_rotary_factor is not None:
            out["partial_rotary_factor"] = block.partial_rotary_factor
    if block.factor is not None:
        out["factor"] = float(block.factor)
    if block.original_context is not None:
        out["original_max_position_embeddings"] = int(block.original_context)
    for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"):
        value = getattr(block, key)
        if value is not None:
            out[key] = float(value)
    if block.truncate is not None:
        out["truncate"] = block.truncate
    out.update(copy.deepcopy(block.extra))
    return out


def write_rope(
    raw: dict[str, Any],
    section: tuple[str, ...],
    block: RopeBlock,
    max_position: int,
    schema: Schema,
    *,
    view: ConfigView | None = None,
) -> dict[str, Any]:
    """A copy of ``raw`` whose rope block and max length say ``block``; every other key is kept.

    With ``view``, family quirks are written too: the sliding layers' own base stays explicit
    (Gemma 3; nested per layer type in the v5 schema), and a head_dim that a 4.x config class
    would leave None is made explicit (hidden_size / heads, what every other reader assumes).
    """
    if schema not in SCHEMAS:
        raise YarnconvError(f"unknown schema {schema!r}", f"choose one of {', '.join(SCHEMAS)}")
    out = copy.deepcopy(raw)
    text = out[section[0]] if section else out
    text["max_position_embeddings"] = int(max_position)
    if "original_max_position_embeddings" in text and block.original_context is not None:
        text["original_max_position_embeddings"] = int(block.original_context)
    local = view.layer_ropes.get("sliding_attention") if view else None
    local_key = families.LOCAL_BASE_KEY.get(view.model_type or "") if view else None
    if view and view.model_type in families.HEAD_DIM_NONE_IN_V4 and text.get("head_dim") is None and view.head_dim:
        text["head_dim"] = int(view.head_dim)
    if schema == "v5":
        # The form transformers 5 saves: everything inside rope_parameters, nothing at top level.
        text.pop("rope_scaling", None)
        for key in ("rope_theta", "partial_rotary_factor", *([local_key] if local_key else [])):
            text.pop(key, None)
        full = block_to_dict(block, schema)
        if local is not None:
            sliding = {"rope_type": "default", "rope_theta": float(local.theta)}
            if local.partial_rotary_factor is not None:
                sliding["partial_rotary_factor"] = local.partial_rotary_factor
            text["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
        else:
            text["rope_parameters"] = full
        return out
    text["rope_theta"] = float(block.theta)  # v4 readers fall back to a class default without it
    text.pop("rope_parameters", None)
    text["rope_scaling"] = block_to_dict(block, schema)
    if block.partial_rotary_factor is not None and "rotary_pct" not in text:
        text["partial_rotary_factor"] = block.partial_rotary_factor
    if local is not None and local_key:
        text[local_key] = float(local.theta)
    return out
