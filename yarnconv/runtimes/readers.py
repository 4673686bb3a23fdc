"""What each runtime effectively computes from a config.json, modelled from their source.

Each reader takes a parsed :class:`ConfigView` (the raw text section plus the family's class
defaults) and returns the rope settings that runtime would use per layer type, or the error it
would raise. The models follow docs/runtimes.md and docs/yarn-math.md (transformers
4.44-5.23, vLLM 0.32, llama.cpp with its converter, exllamav2) and are checked against the real
transformers 4.57.1 / 5.x, vLLM 0.32.0 and the llama.cpp converter on a corpus of published configs
(tests/test_corpus.py). They are pure, so ``inspect`` can run them without installing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yarnconv import families, rope
from yarnconv.config import TYPE_ALIASES, ConfigView

# Families whose llama.cpp converter class writes no HF rope scaling at all (conversion/*.py:
# set_gguf_parameters without the generic TextModel path).
LLAMA_CPP_IGNORES_SCALING = {"gpt_neox", "falcon", "stablelm", "phi", "gemma", "gemma2", "chatglm", "minicpm3"}
# transformers 4.x's built-in DeepSeek-V2 attention leaves the MLA softmax mscale out (measured on
# 4.57.1; DeepSeek's own code and transformers 5 apply it).
MLA_SOFTMAX_DROPPED_IN_V4 = {"deepseek_v2"}
# Text model types exllamav2 can load at all (exllamav2/architecture.py); others get no verdict.
EXLLAMAV2_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "starcoder2",
    "cohere", "internlm2", "minicpm", "phi3", "granite", "exaone", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text",
}  # fmt: skip


@dataclass
class RuntimeReading:
    """One runtime's effective interpretation of a config: a spec per layer type, or an error."""

    runtime: str
    specs: dict[str, rope.RopeSpec] = field(default_factory=dict)
    max_context: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    softmax_multiplier: float = 1.0  # MLA: g(s, mscale_all_dim)^2 on the attention softmax scale (yarn-math F9)


def mla_softmax_multiplier(view: ConfigView, spec: rope.RopeSpec) -> float:
    """What an MLA model multiplies its softmax scale by under YaRN; 1 for everything else."""
    if view.is_mla and spec.method == "yarn" and spec.mscale_all_dim:
        return rope.mscale(float(spec.factor or 1.0), spec.mscale_all_dim) ** 2
    return 1.0


def _with_softmax(view: ConfigView, out: RuntimeReading) -> RuntimeReading:
    main = out.specs.get("full_attention") or out.specs.get("all")
    if main is not None:
        out.softmax_multiplier = mla_softmax_multiplier(view, main)
    return out


def rope_kind(block: dict[str, Any]) -> str:
    name = str(block.get("rope_type", block.get("type", "default")))
    return TYPE_ALIASES.get(name, name)


def _spec(view: ConfigView, kind: str, block: dict[str, Any], theta: float, rho: float | None, **over: Any) -> rope.RopeSpec:
    """A spec for ``kind`` from raw block keys; ``over`` replaces what a runtime reads differently."""
    method = kind if kind in rope.METHODS else "default"

    def floats(key: str) -> tuple[float, ...] | None:
        v = block.get(key)
        return tuple(float(x) for x in v) if isinstance(v, list) else None

    fields: dict[str, Any] = dict(
        method=method,
        base=float(theta),
        dim=rope.rotary_dim(view.rope_head_dim or 0, rho),
        factor=block.get("factor"),
        original_context=block.get("original_max_position_embeddings"),
        beta_fast=block.get("beta_fast"),
        beta_slow=block.get("beta_slow"),
        truncate=bool(block.get("truncate", True)),
        attention_factor=block.get("attention_factor"),
        mscale=block.get("mscale"),
        mscale_all_dim=block.get("mscale_all_dim"),
        max_position=view.text.get("max_position_embeddings") or view.max_position,
        low_freq_factor=block.get("low_freq_factor"),
        high_freq_factor=block.get("high_freq_factor"),
        short_factor=floats("short_factor"),
        long_factor=floats("long_factor"),
    )
    if method == "longrope":
        top = view.text.get("original_max_position_embeddings")
        fields["original_context"] = fields["original_context"] or top
        if fields["factor"] is None and fields["original_context"]:
            fields["factor"] = fields["max_position"] / fields["original_context"]
    if method == "default":
        fields.update(factor=None, original_context=None)
    if method not in ("yarn", "longrope"):
        fields["attention_factor"] = None  # no runtime reads a magnitude for the other types from a config
    fields.update(over)
    return rope.RopeSpec(**fields)


def _local(view: ConfigView, rho: float | None) -> dict[str, rope.RopeSpec]:
    """The sliding layers' own plain RoPE (Gemma 3), when the family has one."""
    local = view.layer_ropes.get("sliding_attention")
    if local is None:
        return {}
    return {"sliding_attention": rope.RopeSpec(base=local.theta, dim=rope.rotary_dim(view.rope_head_dim or 0, rho))}


def _layered(view: ConfigView, spec: rope.RopeSpec, rho: float | None) -> dict[str, rope.RopeSpec]:
    if view.layer_ropes:
        return {"full_attention": spec, **_local(view, rho)}
    return {"all": spec}


def _class_theta(view: ConfigView, *, v5: bool) -> float:
    d = families.defaults(view.model_type)
    return float((d.get("rope_theta_v5") if v5 else None) or d.get("rope_theta") or 10000.0)


def _top(view: ConfigView, key: str) -> Any:
    """A top-level key as the family's config class reads it (aliases such as rotary_emb_base included)."""
    if key in view.text:
        return view.text[key]
    return view.resolved.get(key)


def hf4(variant: str) -> Callable[[ConfigView], RuntimeReading]:
    def read(view: ConfigView) -> RuntimeReading:
        out = _read(view)
        if view.model_type in MLA_SOFTMAX_DROPPED_IN_V4 and out.softmax_multiplier != 1.0:
            out.softmax_multiplier = 1.0
            out.notes.append("the 4.x DeepSeek-V2 attention drops the YaRN softmax mscale (transformers >= 5 applies it)")
        return out

    def _read(view: ConfigView) -> RuntimeReading:
        out = RuntimeReading(f"transformers {variant}")
        if view.custom_code_only:
            out.error = f"unsupported: {view.model_type} loads only with trust_remote_code (the repo's own modeling code)"
            return out
        text = view.text
        block = dict(text.get("rope_scaling") or {})
        theta = _top(view, "rope_theta")
        if theta is None:
            theta = _class_theta(view, v5=False)
            if text.get("rope_parameters"):
                out.notes.append(f"rope_parameters (v5 form) is not read by transformers 4.x: theta {theta:g}, no scaling")
        rho = _top(view, "partial_rotary_factor")
        if rho is None:
            rho = families.defaults(view.model_type).get("partial_rotary_factor")
        kind = rope_kind(block)
        mpe = text.get("max_position_embeddings") or view.max_position
        if view.model_type in families.REFUSED_MODEL_TYPES and kind in ("yarn", "linear", "dynamic", "llama3"):
            out.error = f"the {view.model_type} config class refuses the block (it expects LongRoPE): ValueError"
            return out
        if view.model_type in families.V4_LEGACY_SCALING_ONLY and block and (set(block) != {"type", "factor"} or kind not in ("linear", "dynamic")):
            out.error = f"the {view.model_type} config class accepts only {{type, factor}} linear/dynamic scaling: ValueError"
            return out
        if kind != "yarn":
            out.specs = _layered(view, _spec(view, kind, block, theta, rho), rho)
            return out
        if variant == "4.56-4.57" and view.layer_ropes.get("sliding_attention") and "rope_type" not in block:
            out.error = f"the {view.model_type} config class validates a `type`-only yarn block without mapping it: KeyError rope_type (measured, 4.57.1)"
            return out
        original = block.get("original_max_position_embeddings")
        factor = block.get("factor")
        if variant == "4.44-4.50":
            out.notes.append("original length taken from max_position_embeddings (D1)")
            spec = _spec(view, kind, block, theta, rho, original_context=mpe, truncate=True, mscale=None, mscale_all_dim=None)
        elif variant == "4.51-4.55":
            if original:
                if factor != mpe / original:
                    out.notes.append(f"factor replaced by max/original = {mpe / original:g} (D2)")
                factor = mpe / original
            if block.get("truncate") is False:
                out.notes.append("truncate honoured from 4.55 only")
            spec = _spec(view, kind, block, theta, rho, factor=factor, original_context=original or mpe, truncate=True)
        else:
            if view.model_type in families.HEAD_DIM_NONE_IN_V4 and text.get("head_dim") is None:
                out.error = f"{view.model_type} config keeps head_dim None: TypeError building the YaRN rotary embedding"
                return out
            spec = _spec(view, kind, block, theta, rho, original_context=original or mpe)
        out.specs = _layered(view, spec, rho)
        return _with_softmax(view, out)

    return read


def v5_blocks(view: ConfigView) -> dict[str, tuple[dict[str, Any], float, float | None]]:
    """Per layer type: (block, theta, rho) as transformers 5 standardises the config."""
    text = view.text
    scaling, params = text.get("rope_scaling"), text.get("rope_parameters")
    top_theta, top_rho = _top(view, "rope_theta"), _top(view, "partial_rotary_factor")
    default_rho = families.defaults(view.model_type).get("partial_rotary_factor")

    def entry(block: dict[str, Any], theta_default: float) -> tuple[dict[str, Any], float, float | None]:
        theta = block.get("rope_theta", top_theta)
        if theta is None:
            theta = theta_default
        rho = block.get("partial_rotary_factor", top_rho if top_rho is not None else default_rho)
        return dict(block), float(theta), rho

    class_theta = _class_theta(view, v5=True)
    local = view.layer_ropes.get("sliding_attention")
    if scaling or not (isinstance(params, dict) and view.nested):
        block = dict(scaling or params or {})
        if local is not None and scaling and "rope_type" not in block:
            # Gemma 3's config class starts its full_attention block as {"rope_type": "default"} and
            # updates it with rope_scaling: a `type`-only block stays default, YaRN off (measured, 5.25)
            block["rope_type"] = "default"
        if text.get("original_max_position_embeddings") and rope_kind(block) == "yarn":
            block["original_max_position_embeddings"] = text["original_max_position_embeddings"]  # D4: top level wins
        main = entry(block, class_theta)
        if local is not None:
            return {"full_attention": main, "sliding_attention": ({}, local.theta, main[2])}
        return {"all": main}
    result = {}
    for lt, block in params.items():
        if isinstance(block, dict):
            default = local.theta if (lt == "sliding_attention" and local is not None) else class_theta
            result[lt] = entry(block, default)
    return result


def hf5(view: ConfigView, name: str = "transformers 5.x") -> RuntimeReading:
    """transformers 5.x: rope_scaling wins over rope_parameters; a top-level original length overrides."""
    out = RuntimeReading(name)
    if view.custom_code_only:
        out.error = f"unsupported: {view.model_type} loads only with trust_remote_code (the repo's own modeling code)"
        return out
    blocks = v5_blocks(view)
    for lt, (block, theta, rho) in blocks.items():
        kind = rope_kind(block)
        if view.model_type in families.REFUSED_MODEL_TYPES and kind in ("yarn", "linear", "dynamic", "llama3"):
            out.error = f"the {view.model_type} config class refuses the block (it expects LongRoPE factors): KeyError"
            return out
        if kind == "yarn":
            if block.get("original_max_position_embeddings") is None:
                out.notes.append("original length missing: max_position_embeddings is used")
                block["original_max_position_embeddings"] = view.max_position
            if block.get("factor") is None:
                block["factor"] = view.max_position / block["original_max_position_embeddings"]
            if lt != "all" and block.get("truncate") is False:
                out.notes.append(f"truncate inside the nested {lt} block is ignored (D6)")
                block["truncate"] = True
        out.specs[lt] = _spec(view, kind, block, theta, rho)
    if view.layer_ropes and "all" in out.specs:
        out.specs = {"full_attention": out.specs["all"]}
    return _with_softmax(view, out)


def llama_cpp(view: ConfigView) -> RuntimeReading:
    """llama.cpp: convert_hf_to_gguf (under transformers 5) then the runtime graph.

    Generic architectures ignore betas, ``truncate``, ``attention_factor`` and mscale: the
    runtime rounds the correction range and recomputes the magnitude as g(s). DeepSeek's MLA
    converter carries mscale_all_dim (as yarn_log_multiplier), so it matches transformers;
    several converter classes (GPT-NeoX, Falcon, StableLM, Gemma 1/2, ...) write no scaling.
    """
    out = RuntimeReading("llama.cpp", max_context=view.max_position)
    blocks = v5_blocks(view)
    if view.model_type in families.REFUSED_MODEL_TYPES and any(rope_kind(b) not in ("default", "longrope") for b, _, _ in blocks.values()):
        out.error = f"the {view.model_type} converter accepts only longrope/su scaling"
        return out
    ignores = view.model_type in LLAMA_CPP_IGNORES_SCALING
    for lt, (block, theta, rho) in blocks.items():
        kind = rope_kind(block)
        if ignores and kind != "default":
            out.notes.append(f"the {view.model_type} converter writes no rope scaling: plain RoPE")
            kind, block = "default", {}
        if ignores and "rope_theta" not in view.text and view.model_type == "gpt_neox":
            theta = 10000.0  # the converter writes no freq_base for GPT-NeoX
        if kind == "dynamic":
            out.notes.append("dynamic NTK is not converted (no GGUF key)")
            kind = "default"
        if kind != "yarn" or block.get("factor") is None:
            out.specs[lt] = _spec(view, kind if kind != "yarn" else "default", block, theta, rho)
            continue
        if block.get("original_max_position_embeddings") is None:
            out.error = "the converter needs original_max_position_embeddings: KeyError"
            return out
        if view.is_mla:
            out.specs[lt] = _spec(view, kind, block, theta, rho, beta_fast=None, beta_slow=None, truncate=True, attention_factor=None)
            continue
        ignored = [k for k in ("beta_fast", "beta_slow") if block.get(k) not in (None, 32, 32.0, 1, 1.0)]
        ignored += [k for k in ("attention_factor", "mscale", "mscale_all_dim") if block.get(k) is not None]
        if block.get("truncate") is False:
            ignored.append("truncate")
        if ignored:
            out.notes.append(f"ignored for {view.model_type}: {', '.join(ignored)}")
        out.specs[lt] = _spec(
            view, kind, block, theta, rho, beta_fast=None, beta_slow=None, truncate=True, attention_factor=None, mscale=None, mscale_all_dim=None
        )
    if view.layer_ropes and "all" in out.specs:
        out.specs = {"full_attention": out.specs["all"]}
    return _with_softmax(view, out)


def exllamav2(view: ConfigView) -> RuntimeReading:
    """exllamav2 (exllamav2/rope.py, config.py): YaRN by `type` only (both keys assert), the ramp
    from max_seq_len instead of the original length, betas 32/1, whole-head rotation, g(s);
    llama3 by `rope_type`, longrope by `type` su/longrope, linear by `type`."""
    out = RuntimeReading("exllamav2")
    if view.model_type not in EXLLAMAV2_MODEL_TYPES:
        out.error = f"unsupported: exllamav2 has no {view.model_type} architecture"
        return out
    text = view.text
    block = dict(text.get("rope_scaling") or {})
    theta = float(text.get("rope_theta", 10000.0))
    mpe = text.get("max_position_embeddings") or view.max_position
    out.max_context = mpe
    if block.get("rope_type") == "llama3":
        out.specs = _layered(view, _spec(view, "llama3", block, theta, None), None)
        return out
    if block.get("type") in ("su", "longrope", "linear"):
        out.specs = _layered(view, _spec(view, rope_kind({"type": block["type"]}), block, theta, None), None)
        return out
    if "type" in block and "rope_type" in block and block.get("type") == "yarn":
        out.error = "both `type` and `rope_type`: assertion error (use --schema exllamav2)"
        return out
    if block.get("type") != "yarn":
        if block.get("rope_type") == "yarn":
            out.notes.append("`rope_type` without `type`: YaRN silently off")
        elif block.get("rope_type") not in (None, "default"):
            out.notes.append(f"rope_type {block.get('rope_type')!r} is not read: plain RoPE")
        out.specs = _layered(view, rope.RopeSpec(method="default", base=theta, dim=view.rope_head_dim or 0), None)
        return out
    if block.get("original_max_position_embeddings") is None:
        out.error = "YaRN without original_max_position_embeddings: KeyError"
        return out
    out.notes.append("correction range computed from max_seq_len (defaults to max_position_embeddings), as transformers <= 4.50 did")
    rho = text.get("partial_rotary_factor")
    if rho not in (None, 1, 1.0):
        out.notes.append("partial_rotary_factor ignored (rotates the whole head)")
    spec = _spec(
        view, "yarn", block, theta, None, original_context=mpe, beta_fast=None, beta_slow=None, truncate=True,
        attention_factor=None, mscale=None, mscale_all_dim=None,
    )  # fmt: skip
    out.specs = _layered(view, spec, None)
    return out
