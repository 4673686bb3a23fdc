"""SGLang, mlx-lm, exllamav3, ollama and mistral.rs: how each reads a config.json's rope, modelled
from the project's source at the commit docs/runtimes.md §5 cites (none of them runs on this
project's machines, so every row here is "modelled from source").

Each reader returns the rope that runtime builds per layer type, the context it allows, or the
error it raises, like :mod:`yarnconv.runtimes.readers`. An architecture whose code was not read
is "not modelled" rather than guessed.
"""

from __future__ import annotations

import math
from typing import Any

from yarnconv import families
from yarnconv.config import ConfigView
from yarnconv.runtimes.readers import RuntimeReading, _class_theta, _layered, _spec, _top, llama_cpp, rope_kind

NOT_MODELLED = "not modelled"


def _v4_form(view: ConfigView, out: RuntimeReading, theta_default: float | None = None) -> tuple[dict[str, Any], float, float | None]:
    """The `rope_scaling` block, top-level theta and rotary fraction, as readers that predate
    transformers 5 see them (a v5-only `rope_parameters` block is not read: no scaling)."""
    block = dict(view.text.get("rope_scaling") or {})
    theta = _top(view, "rope_theta")
    if theta is None:
        theta = theta_default if theta_default is not None else _class_theta(view, v5=False)
        if view.text.get("rope_parameters"):
            out.notes.append(f"rope_parameters (v5 form) is not read: theta {theta:g}, no scaling")
    rho = _top(view, "partial_rotary_factor")
    if rho is None:
        rho = families.defaults(view.model_type).get("partial_rotary_factor")
    return block, float(theta), rho


def _not_yarn(view: ConfigView, out: RuntimeReading, kind: str, read: tuple[dict[str, Any], float, float | None], unknown: str) -> bool:
    """Fill ``out`` for a block that is not YaRN (its plain, linear, llama3 or longrope rope, or the
    error an unknown type raises); False leaves a YaRN block to the caller."""
    block, theta, rho = read
    if kind not in ("default", "linear", "llama3", "yarn", "longrope"):
        out.error = unknown
    elif kind != "yarn":
        out.specs = _layered(view, _spec(view, kind, block, theta, rho), rho)
    return kind != "yarn"


def sglang(view: ConfigView) -> RuntimeReading:
    """SGLang (python/sglang/srt/layers/rotary_embedding/factory.py, get_rope): `rope_type` before
    `type`; YaRN takes factor and L (KeyError without them), betas, `truncate`, and `attn_factor` as
    a multiplier on g(s); `attention_factor`, `mscale` and `mscale_all_dim` are not read for `yarn`.
    The context stays at max_position_embeddings when the block names L (docs/runtimes.md §2)."""
    out = RuntimeReading("SGLang")
    block, theta, rho = _v4_form(view, out)
    mpe = view.text.get("max_position_embeddings") or view.max_position
    out.max_context = mpe
    if block and "rope_type" not in block and "type" not in block:
        out.error = "rope_scaling names no type: ValueError (Unknown RoPE scaling type)"
        return out
    kind = rope_kind({"rope_type": block["rope_type"]} if "rope_type" in block else block)
    if kind != "yarn":
        out.specs = _layered(view, _spec(view, kind, block, theta, rho), rho)
        return out
    for key in ("factor", "original_max_position_embeddings"):
        if block.get(key) is None:
            out.error = f"YaRN without {key}: KeyError"
            return out
    ignored = [k for k in ("attention_factor", "mscale", "mscale_all_dim") if block.get(k) is not None]
    if ignored:
        out.notes.append(f"not read for yarn: {', '.join(ignored)}")
    factor = float(block["factor"])
    magnitude = (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0) * float(block.get("attn_factor", 1.0))
    spec = _spec(view, "yarn", block, theta, rho, attention_factor=magnitude, mscale=None, mscale_all_dim=None)
    out.specs = _layered(view, spec, rho)
    return out


def mlx_lm(view: ConfigView) -> RuntimeReading:
    """mlx-lm (mlx_lm/models/rope_utils.py, initialize_rope; the models' ModelArgs read `rope_scaling`
    and a top-level `rope_theta`, default 10000): `type` before `rope_type`; YaRN takes factor, L
    (default 4096 when absent), betas, `mscale`, `mscale_all_dim` and an explicit `attention_factor`;
    the correction range is always rounded (`truncate` is not read). No context cap."""
    out = RuntimeReading("mlx-lm")
    block, theta, rho = _v4_form(view, out, theta_default=10000.0)
    kind = rope_kind({"type": block["type"]} if "type" in block else block)
    if _not_yarn(view, out, kind, (block, theta, rho), f"Unsupported RoPE type {kind}: ValueError"):
        return out
    if block.get("factor") is None:
        out.error = "YaRN without factor: KeyError"
        return out
    if block.get("original_max_position_embeddings") is None:
        out.notes.append("original length missing: 4096 is used")
    if block.get("truncate") is False:
        out.notes.append("truncate: false is not read (the range is rounded)")
    original = block.get("original_max_position_embeddings") or 4096
    factor = float(block["factor"])

    def g(m: float) -> float:
        return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0

    magnitude = block.get("attention_factor")
    if magnitude is None:  # YarnRoPE: mscale defaults to 1 and mscale_all_dim to 0, so plain g(s)
        magnitude = g(float(block.get("mscale", 1.0))) / g(float(block.get("mscale_all_dim", 0.0)))
    spec = _spec(view, "yarn", block, theta, rho, original_context=original, truncate=True, attention_factor=magnitude, mscale=None, mscale_all_dim=None)
    out.specs = _layered(view, spec, rho)
    return out


def exllamav3(view: ConfigView) -> RuntimeReading:
    """exllamav3 (exllamav3/util/rope.py, RoPE._rope_params_yarn): `rope_type` before `type`; with L
    present the factor is max_position_embeddings / L and the written `factor` is not read; betas
    are read; the magnitude is `attention_factor`, else g(s) (`mscale` keys are not read); the
    correction range is always rounded. The context is max_position_embeddings."""
    out = RuntimeReading("exllamav3")
    block, theta, rho = _v4_form(view, out)
    mpe = view.text.get("max_position_embeddings") or view.max_position
    out.max_context = mpe
    kind = rope_kind({"rope_type": block["rope_type"]} if "rope_type" in block else block)
    if _not_yarn(view, out, kind, (block, theta, rho), f"Unknown rope_type: {kind}: ValueError"):
        return out
    original = block.get("original_max_position_embeddings")
    factor = mpe / original if original else block.get("factor")
    if original and block.get("factor") is not None and abs(float(block["factor"]) - factor) > 1e-9:
        out.notes.append(f"factor {block['factor']:g} is not read: max_position_embeddings / original = {factor:g}")
    magnitude = block.get("attention_factor", 0.1 * math.log(factor) + 1.0) if factor else None
    spec = _spec(view, "yarn", block, theta, rho, factor=factor, original_context=original or mpe, truncate=True, attention_factor=magnitude, mscale=None, mscale_all_dim=None)
    out.specs = _layered(view, spec, rho)
    return out


# GGUF architectures ollama runs in its own Go engine (fs/ggml/ggml.go, OllamaEngineRequired);
# every other one goes to its vendored llama.cpp runner, which reads YaRN as llama.cpp does.
OLLAMA_GO_ENGINE = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "mistral3", "deepseek_v2", "deepseek_v3", "gpt_oss", "llama4", "olmo3", "lfm2"}


def ollama(view: ConfigView) -> RuntimeReading:
    """ollama on the GGUF llama.cpp's converter writes from this config. The llama.cpp runner reads it
    as llama.cpp does. The Go qwen3 engine (model/models/qwen3/model.go) reads rope.scaling.type,
    factor and original length, and passes attn_factor 1/(1 + 0.1 ln s), which cancels the g(s) ggml
    multiplies in: YaRN frequencies at magnitude 1. The Go gemma3 engine (model/models/gemma3/
    model_text.go) reads only rope.freq_scale: YaRN off. num_ctx, not the file, sets the context."""
    base = llama_cpp(view)
    out = RuntimeReading("ollama", specs=base.specs, error=base.error, notes=list(base.notes), softmax_multiplier=base.softmax_multiplier)
    out.notes.append("the context is num_ctx (PARAMETER num_ctx or OLLAMA_CONTEXT_LENGTH), not the file's")
    mt = str(view.model_type)
    if mt not in OLLAMA_GO_ENGINE or base.error:
        return out
    if mt in ("qwen3", "qwen3_moe"):
        from dataclasses import replace

        out.specs = {lt: replace(s, attention_factor=1.0) if s.method == "yarn" else s for lt, s in base.specs.items()}
        if any(s.method == "yarn" for s in base.specs.values()):
            out.notes.append("Go qwen3 engine: YaRN at magnitude 1 (its attn_factor cancels ggml's g(s))")
        return out
    if mt in ("gemma3", "gemma3_text"):
        from dataclasses import replace

        out.specs = {lt: replace(s, method="default", factor=None, original_context=None, attention_factor=None) for lt, s in base.specs.items()}
        out.notes.append("Go gemma3 engine reads rope.freq_scale only: YaRN off")
        return out
    return RuntimeReading("ollama", error=f"{NOT_MODELLED}: ollama's Go engine for {mt}")


def mistral_rs(view: ConfigView) -> RuntimeReading:
    """mistral.rs (mistralrs-core/src/models/*.rs): the llama model deserialises `rope_scaling` only
    as Llama 3 scaling (models/llama.rs, Llama3RopeConfig), so a YaRN block fails to load; the
    Mistral (models/mistral.rs) and Qwen3 (models/qwen3.rs, qwen3_moe.rs) configs have no
    `rope_scaling` field at all, so YaRN is silently off. Other architectures are not modelled."""
    out = RuntimeReading("mistral.rs")
    block, theta, rho = _v4_form(view, out)
    mt = str(view.model_type)
    out.max_context = view.text.get("max_position_embeddings") or view.max_position
    kind = rope_kind(block) if block else "default"
    if mt == "llama":
        if kind not in ("default", "llama3"):
            out.error = f"rope_scaling is read as Llama 3 scaling only: a {kind} block does not deserialise (missing low_freq_factor)"
            return out
        out.specs = _layered(view, _spec(view, kind, block, theta, rho), rho)
        return out
    if mt in ("mistral", "qwen3", "qwen3_moe"):
        if kind != "default":
            out.notes.append(f"the {mt} config has no rope_scaling field: {kind} silently off")
        out.specs = _layered(view, _spec(view, "default", {}, theta, rho), rho)
        return out
    out.error = f"{NOT_MODELLED}: mistral.rs's {mt} model"
    return out
