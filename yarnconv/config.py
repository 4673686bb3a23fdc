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
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from yarnconv import rope
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
        """The math-level view of this block for a head of ``head_dim`` channels."""
        method = self.rope_type if self.rope_type in rope.METHODS else "default"
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
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form with absent values dropped."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


@dataclass(frozen=True)
class Finding:
    """One lint result: ``level`` is error (runtimes will misread it), warning or info."""

    level: Literal["error", "warning", "info"]
    code: str
    message: str


@dataclass
class ConfigView:
    """A parsed config.json: where the text model's settings live and what its rope block says."""

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
    num_layers: int | None
    max_position: int | None
    vocab_size: int | None
    dtype: str | None
    findings: list[Finding]

    @property
    def text(self) -> dict[str, Any]:
        """The dict holding the text model's settings (root or ``text_config``)."""
        node = self.raw
        for key in self.section:
            node = node[key]
        return node

    @property
    def rotary_dim(self) -> int | None:
        if self.head_dim is None:
            return None
        return rope.rotary_dim(self.head_dim, self.rope.partial_rotary_factor)


def _text_section(raw: dict[str, Any]) -> tuple[str, ...]:
    """Multimodal wrappers keep the language model's settings under ``text_config``."""
    text = raw.get("text_config")
    if isinstance(text, dict) and ("max_position_embeddings" in text or "rope_scaling" in text or "rope_parameters" in text):
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise YarnconvError(f"config.json: {what} is {value!r}, not a number", "fix the value in config.json")
    return float(value)


def _selector(block: dict[str, Any], findings: list[Finding]) -> str:
    """The scaling type named by ``type``/``rope_type``, flagging layouts some runtimes misread."""
    kind, legacy = block.get("rope_type"), block.get("type")
    if kind is not None and legacy is not None and kind != legacy:
        findings.append(
            Finding("error", "type-conflict", f"rope block says type={legacy!r} but rope_type={kind!r}; vLLM raises, others pick one")
        )
    return str(kind or legacy or "default")


def _block_from_dict(block: dict[str, Any], top: dict[str, Any], findings: list[Finding]) -> RopeBlock:
    kind = _selector(block, findings)
    theta_in, theta_top = _number(block.get("rope_theta"), "rope_theta"), _number(top.get("rope_theta"), "rope_theta")
    if theta_in is not None and theta_top is not None and theta_in != theta_top:
        findings.append(
            Finding(
                "error",
                "theta-conflict",
                f"rope_theta is {theta_in:g} in the rope block but {theta_top:g} at top level; v4 reads the top level, v5 the block",
            )
        )
    theta = theta_in if theta_in is not None else theta_top
    if theta is None:
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
    original = block.get("original_max_position_embeddings")
    if original is not None and (isinstance(original, bool) or not isinstance(original, (int, float)) or original <= 0):
        raise YarnconvError(
            f"config.json: original_max_position_embeddings is {original!r}, not a positive integer", "fix the value in config.json"
        )
    truncate = block.get("truncate")
    return RopeBlock(
        rope_type=kind,
        theta=theta,
        partial_rotary_factor=rho_in if rho_in is not None else rho_top,
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


def read_config(raw: Any) -> ConfigView:
    """Parse a config.json dict into a :class:`ConfigView`, collecting lint findings on the way."""
    if not isinstance(raw, dict):
        raise YarnconvError("config.json does not hold a JSON object", "is this a Hugging Face model directory?")
    section = _text_section(raw)
    text = raw[section[0]] if section else raw
    findings: list[Finding] = []
    scaling, params = text.get("rope_scaling"), text.get("rope_parameters")
    for name, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise YarnconvError(f"config.json: {name} is {value!r}, not an object", f"fix or remove {name} in config.json")
    layout = "both" if scaling and params else "rope_scaling" if scaling else "rope_parameters" if params else "none"
    nested = _is_nested(params)
    if nested:
        full = params.get("full_attention") or next(v for v in params.values() if v)
        block = _block_from_dict(full, text, findings)
        findings.append(
            Finding(
                "info",
                "nested-rope",
                f"rope_parameters are per layer type ({', '.join(k for k in params if params[k])}); shown: full_attention",
            )
        )
    else:
        # transformers v5 lets a rope_scaling block win over rope_parameters; so do we.
        chosen = scaling or params or {}
        block = _block_from_dict(chosen, text, findings)
    if layout == "both" and not nested:
        other = _block_from_dict(params, text, [])
        if _comparable(other) != _comparable(block):
            findings.append(
                Finding(
                    "error",
                    "layouts-disagree",
                    "rope_scaling and rope_parameters disagree; transformers 5 follows rope_scaling, the llama.cpp converter (under transformers 4) rope_parameters",
                )
            )
    head_dim = text.get("head_dim")
    hidden, heads = _int_field(text, "hidden_size"), _int_field(text, "num_attention_heads")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    view = ConfigView(
        raw=raw,
        section=section,
        layout=layout,
        rope=block,
        nested=nested,
        model_type=text.get("model_type") or raw.get("model_type"),
        architectures=list(raw.get("architectures") or text.get("architectures") or []),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=_int_field(text, "num_key_value_heads") or heads,
        head_dim=head_dim,
        num_layers=_int_field(text, "num_hidden_layers"),
        max_position=_int_field(text, "max_position_embeddings"),
        vocab_size=_int_field(text, "vocab_size"),
        dtype=text.get("dtype") or text.get("torch_dtype") or raw.get("dtype") or raw.get("torch_dtype"),
        findings=findings,
    )
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
    has_rope_keys = any(k in text for k in ("rope_theta", "rope_scaling", "rope_parameters", "rotary_emb_base", "partial_rotary_factor"))
    if not has_rope_keys and view.model_type not in KNOWN_ROPE_MODEL_TYPES:
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
        elif has_rope_type:
            out.append(Finding("warning", "rope-type-only", "rope block has `rope_type` but no `type`: exllamav2 runs without YaRN"))
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


def write_rope(raw: dict[str, Any], section: tuple[str, ...], block: RopeBlock, max_position: int, schema: Schema) -> dict[str, Any]:
    """A copy of ``raw`` whose rope block and max length say ``block``; every other key is kept."""
    if schema not in SCHEMAS:
        raise YarnconvError(f"unknown schema {schema!r}", f"choose one of {', '.join(SCHEMAS)}")
    out = copy.deepcopy(raw)
    text = out[section[0]] if section else out
    text["max_position_embeddings"] = int(max_position)
    text["rope_theta"] = float(block.theta)  # v4 readers fall back to 10000 without it
    if "original_max_position_embeddings" in text and block.original_context is not None:
        text["original_max_position_embeddings"] = int(block.original_context)
    if schema == "v5":
        text.pop("rope_scaling", None)
        text["rope_parameters"] = block_to_dict(block, schema)
    else:
        text.pop("rope_parameters", None)
        text["rope_scaling"] = block_to_dict(block, schema)
        if block.partial_rotary_factor is not None:
            text["partial_rotary_factor"] = block.partial_rotary_factor
    return out
