"""Plan a context extension: config in, new config out, no I/O.

The rules come from docs/runtimes.md §4: max_position_embeddings = original x
factor exactly, the original length as an int inside the block, floats for factor and betas,
rope_theta written explicitly, foreign scalings never silently replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from yarnconv import families, rope
from yarnconv.config import (
    MAX_CONTEXT,
    SCHEMA_HELP,
    SCHEMAS,
    ConfigView,
    Finding,
    RopeBlock,
    Schema,
    positional_scheme,
    read_config,
    write_rope,
)
from yarnconv.errors import UsageError, YarnconvError
from yarnconv.options import option

# Keys that belong to another scaling method; dropped when --replace-scaling replaces it with YaRN.
METHOD_KEYS = {"low_freq_factor", "high_freq_factor", "short_factor", "long_factor"}
# Known pretraining lengths whose max_position_embeddings is not a power of two.
METHODS = ("yarn", "linear", "dynamic")
_KNOWN_ORIGINALS = {("qwen3", 40960): 32768, ("qwen3_moe", 40960): 32768}


@dataclass(frozen=True)
class ExtendRequest:
    """The rope change the user asked for; exactly one of ``scale`` and ``target_context``.

    Each field is also a CLI option and a recipe key (see :mod:`yarnconv.options`).
    """

    scale: float | None = option(help="YaRN factor s; the new context is original x s.", kind=float)
    target_context: int | None = option(help="New context length; the factor is target / original.", kind=int)
    original_context: int | None = option(help="Pretraining context length L (default: read from the config).", kind=int)
    method: str = option("yarn", "Scaling method; linear (PI) and dynamic (NTK) are for ablations.", choices=METHODS)
    beta_fast: float | None = option(help="YaRN beta_fast (default 32, or the source's).", kind=float)
    beta_slow: float | None = option(help="YaRN beta_slow (default 1, or the source's).", kind=float)
    attention_factor: float | None = option(help="Explicit cos/sin magnitude a (default 0.1 ln s + 1).", kind=float)
    temperature: float | None = option(help="The paper's softmax temperature t; sets a = sqrt(1/t).", kind=float)
    schema: Schema | None = option(
        help="Config layout to write: " + "; ".join(f"{k}: {v}" for k, v in SCHEMA_HELP.items()), choices=SCHEMAS, shown="portable"
    )
    replace_scaling: bool = option(
        False, "Replace the model's non-YaRN scaling (llama3, longrope, linear, dynamic) or switch YaRN to another method: the result is a different model."
    )
    unverified_family: bool = option(
        False, "Write YaRN for a family no runtime check covers (the repo's own modeling code, an unknown model_type, a config class transformers 4.x rejects, a GGUF arch llama.cpp scales its own way)."
    )
    accept_ambiguous_config: bool = option(False, "Extend a config whose rope keys contradict each other, as yarnconv reads them (runtimes may read them otherwise).")


@dataclass
class ExtendPlan:
    """The new config and why it looks the way it does."""

    config: dict[str, Any]
    before: RopeBlock
    after: RopeBlock
    max_position_before: int | None
    max_position_after: int
    original_source: str
    head_dim: int
    num_layers: int
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # refusals the request overrode, with the flag
    layer_ropes: dict[str, RopeBlock] = field(default_factory=dict)  # per layer type, when they differ (Gemma 3)
    layer_types: list[str] = field(default_factory=list)  # the type of each layer, when known
    section: tuple[str, ...] = ()  # where the text model's settings live in ``config`` (text_config)

    def written_block(self) -> dict[str, Any] | None:
        """The rope block as written into the new config, in the chosen schema."""
        text = self.config
        for key in self.section:
            text = text[key]
        return text.get("rope_scaling") or text.get("rope_parameters")

    def summary(self) -> dict[str, Any]:
        """Machine-readable description of the change."""
        return {
            "method": self.after.rope_type,
            "factor": self.after.factor,
            "original_context": self.after.original_context,
            "original_context_source": self.original_source,
            "max_position_embeddings": {"before": self.max_position_before, "after": self.max_position_after},
            "rope_before": self.before.to_dict(),
            "rope_after": self.after.to_dict(),
            **({"layer_ropes_after": {k: v.to_dict() for k, v in self.layer_ropes.items()}} if self.layer_ropes else {}),
            "notes": self.notes,
            "overrides": self.overrides,
            "findings": [f.__dict__ for f in self.findings],
        }


def _positive(value: float | None, name: str, *, above: float = 0.0) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value <= above:
        bound = "greater than 1" if above == 1.0 else "positive"
        raise YarnconvError(f"{name} must be a finite number {bound}, got {value}", f"pass a valid {name}")


def _looks_like_pretraining_length(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _original_context(view: ConfigView, req: ExtendRequest, notes: list[str]) -> tuple[int, str]:
    """The pre-extension length L, and where it came from; refuses to guess when M looks padded."""
    before = view.rope
    if req.original_context is not None:
        if req.original_context <= 0:
            raise YarnconvError(f"--original-context must be positive, got {req.original_context}", "pass the pretraining context length")
        if view.max_position and req.original_context > view.max_position and "max_position_embeddings" not in view.defaulted:
            raise YarnconvError(
                f"--original-context {req.original_context} is above the model's max_position_embeddings {view.max_position}; "
                "a model is never pretrained longer than its own context",
                f"pass the length it was pretrained at (at most {view.max_position})",
            )
        if before.original_context and before.original_context != req.original_context:
            notes.append(f"original context overridden: config says {before.original_context}, using {req.original_context}")
        return req.original_context, "--original-context"
    if before.original_context:
        return before.original_context, f"existing {before.rope_type} block"
    top = view.text.get("original_max_position_embeddings")
    if isinstance(top, int) and top > 0:
        return top, "top-level original_max_position_embeddings"
    m = view.max_position
    if m is None or "max_position_embeddings" in view.defaulted:
        # a class default is transformers' fallback, not this model's pretraining length: no guess
        default = f" (transformers' {view.model_type} class default would be {m})" if m else ""
        flag = f"--original-context {m}" if m else "--original-context"
        raise YarnconvError(
            f"config.json has no max_position_embeddings{default}, so the pretraining length is unknown",
            f"pass {flag} if the model was pretrained at {m or 'that length'}, else --original-context with the length it was",
        )
    if not _looks_like_pretraining_length(m):
        known = _KNOWN_ORIGINALS.get((view.model_type or "", m))
        hint = (
            f"{view.model_type} models of this shape were pretrained at {known}: pass --original-context {known}"
            if known
            else "pass --original-context with the length the model was pretrained at"
        )
        raise YarnconvError(f"max_position_embeddings is {m}, which does not look like a pretraining length", hint)
    return m, "max_position_embeddings"


def _factor_and_length(req: ExtendRequest, original: int, current: int | None) -> tuple[float, int]:
    if (req.scale is None) == (req.target_context is None):
        raise UsageError("give exactly one of --scale and --target-context", "e.g. --scale 4 or --target-context 131072")
    if req.scale is not None:
        _positive(req.scale, "--scale", above=1.0)
        length = original * req.scale
        if abs(length - round(length)) > 1e-9 * length:
            lo, hi = math.floor(length), math.ceil(length)
            raise YarnconvError(
                f"--scale {req.scale:g} x original {original} = {length:g} is not a whole number of tokens",
                f"use --target-context {lo} or {hi}",
            )
        factor, length = float(req.scale), int(round(length))
        _check_length(length)
    else:
        length = int(req.target_context)  # type: ignore[arg-type]
        if length <= original:
            raise YarnconvError(
                f"--target-context {length} is not longer than the original context {original}",
                "pass a longer target",
            )
        _check_length(length)
        factor = length / original
    if current is not None and length < current:
        raise YarnconvError(
            f"the new context {length} is below the current max_position_embeddings {current}",
            f"ask for at least {current} tokens",
        )
    return factor, length


def layer_types(view: ConfigView) -> list[str]:
    """Each layer's attention type, from ``layer_types`` or Gemma 3's sliding-window pattern."""
    text, n = view.resolved, view.num_layers or 0
    listed = text.get("layer_types")
    if isinstance(listed, list) and len(listed) == n and all(isinstance(t, str) for t in listed):
        return list(listed)
    if view.layer_ropes and n:
        pattern = text.get("sliding_window_pattern") or text.get("_sliding_window_pattern")
        pattern = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0 else 6  # Gemma 3's default
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    return []


def _check_length(length: int) -> None:
    if length > MAX_CONTEXT:
        raise YarnconvError(
            f"the new context {length} does not fit the 32-bit lengths of GGUF and most runtimes (max {MAX_CONTEXT})",
            "ask for a shorter context or check --original-context",
        )


def _attention(req: ExtendRequest, before: RopeBlock, notes: list[str]) -> dict[str, float | None]:
    """Explicit magnitude settings for the new block; existing ones are kept unless overridden."""
    if req.attention_factor is not None and req.temperature is not None:
        raise UsageError("--attention-factor and --temperature set the same thing", "pass only one of them")
    if req.temperature is not None:
        _positive(req.temperature, "--temperature")
        return {"attention_factor": rope.attention_factor_from_temperature(req.temperature), "mscale": None, "mscale_all_dim": None}
    if req.attention_factor is not None:
        _positive(req.attention_factor, "--attention-factor")
        return {"attention_factor": float(req.attention_factor), "mscale": None, "mscale_all_dim": None}
    if before.rope_type != "yarn":
        return {"attention_factor": None, "mscale": None, "mscale_all_dim": None}
    if before.attention_factor is not None:
        notes.append(f"kept the source's explicit attention_factor {before.attention_factor:g} (not re-derived for the new factor)")
    return {"attention_factor": before.attention_factor, "mscale": before.mscale, "mscale_all_dim": before.mscale_all_dim}


def override(overrides: list[str], allowed: bool, flag: str, problem: str, fix: str) -> None:
    """Refuse ``problem`` unless its flag was given; an overridden refusal is recorded with the flag."""
    if not allowed:
        raise YarnconvError(problem, fix)
    overrides.append(f"{problem} ({flag})")


def _refusals(view: ConfigView, req: ExtendRequest, overrides: list[str]) -> None:
    """Everything yarnconv refuses to extend, each with the one flag that overrides it (or none)."""
    scheme = positional_scheme(view)
    if scheme and not scheme.startswith("an unknown"):
        raise YarnconvError(f"{view.model_type or 'this model'} uses {scheme}, not RoPE; there is nothing to rescale", "YaRN applies to rotary-embedding models only")
    if scheme:
        override(
            overrides, req.unverified_family, "--unverified-family",
            f"{view.model_type or 'this model'} uses {scheme}, not known RoPE",
            "if it does use RoPE, add rope_theta to config.json or pass --unverified-family",
        )  # fmt: skip
    if view.model_type in families.REFUSED_MODEL_TYPES:  # no runtime loads the output: never written
        raise YarnconvError(f"{view.model_type}: {families.REFUSED_MODEL_TYPES[view.model_type]}", "extend it with its own scaling, or pick a family transformers loads with YaRN")
    refused = families.refusal(view.model_type)
    if refused:
        override(overrides, req.unverified_family, "--unverified-family", f"{view.model_type}: {refused}", "pass --unverified-family to write it for transformers >= 5 only")
    if view.custom_code_only:
        auto_map = view.raw.get("auto_map") or view.text.get("auto_map") or {}
        auto_map = auto_map if isinstance(auto_map, dict) else {}
        override(
            overrides, req.unverified_family, "--unverified-family",
            f"{view.model_type} runs custom modeling code ({auto_map.get('AutoModelForCausalLM', 'auto_map')}) that transformers does not ship; "
            "yarnconv cannot tell whether it implements YaRN",
            "check the repo's modeling code, then pass --unverified-family to write the config anyway",
        )  # fmt: skip
    if view.nested and set(view.layer_ropes) - {"full_attention", "sliding_attention"}:
        raise YarnconvError(
            f"per-layer-type rope_parameters for {', '.join(sorted(view.layer_ropes))} are not supported by extend",
            "extend a model whose layers are full_attention / sliding_attention",
        )
    if view.nested and view.layer_ropes.get("sliding_attention", view.rope).rope_type != "default":
        raise YarnconvError("the sliding-attention layers already use a scaled rope", "extend a model whose sliding layers use plain RoPE")
    if view.rope_head_dim is None:
        raise YarnconvError("config.json has no head_dim and no hidden_size/num_attention_heads", "is this a decoder-only transformer config?")
    if view.rotary_dim is None or view.rotary_dim <= 0 or view.rotary_dim % 2:
        raise YarnconvError(f"rotary dimension {view.rotary_dim} is not a positive even number", "check head_dim and partial_rotary_factor")
    errors = [f for f in view.findings if f.code in ("type-conflict", "theta-conflict", "partial-rotary-conflict", "layouts-disagree")]
    if errors:
        override(
            overrides, req.accept_ambiguous_config, "--accept-ambiguous-config",
            f"the source config is ambiguous: {errors[0].message}", "fix config.json, or pass --accept-ambiguous-config to use yarnconv's reading",
        )  # fmt: skip
    before = view.rope
    if before.rope_type not in ("default", "yarn"):
        override(
            overrides, req.replace_scaling, "--replace-scaling",
            f"the model already uses {before.rope_type!r} RoPE scaling, a different method from {req.method}",
            "pass --replace-scaling to replace it (the result is a different model)",
        )  # fmt: skip
    if before.rope_type == "yarn" and req.method != "yarn":
        override(
            overrides, req.replace_scaling, "--replace-scaling",
            f"the model already uses YaRN; switching it to {req.method} changes the model", "pass --replace-scaling to do it anyway",
        )  # fmt: skip


def plan_extend(raw: dict[str, Any], req: ExtendRequest) -> ExtendPlan:
    """Decide the new config for ``req``. Raises :class:`YarnconvError` on anything ambiguous."""
    view = read_config(raw)
    if req.method not in METHODS:
        raise YarnconvError(f"unknown method {req.method!r}", "choose yarn, linear or dynamic")
    notes: list[str] = []
    overrides: list[str] = []
    _refusals(view, req, overrides)
    before = view.rope
    original, source = _original_context(view, req, notes)
    factor, length = _factor_and_length(req, original, view.max_position if req.method != "dynamic" else None)
    if req.method == "dynamic":
        # transformers' dynamic NTK grows the base once a sequence passes max_position_embeddings,
        # so that field must stay at the original length.
        length = original
        notes.append(
            f"dynamic NTK keeps max_position_embeddings = {original}; runtimes that cap the context there need --max-model-len / -c"
        )
    for name, value in (("--beta-fast", req.beta_fast), ("--beta-slow", req.beta_slow)):
        _positive(value, name)
    after = _new_block(req, before, factor, original, notes)
    if view.text.get("original_max_position_embeddings") not in (None, original):
        notes.append(f"top-level original_max_position_embeddings set to {original} to match the rope block")
    schema = req.schema or "portable"
    if schema == "exllamav2" and view.layer_ropes.get("sliding_attention"):
        raise YarnconvError(
            f"--schema exllamav2 writes rope_scaling with `type` only, which transformers 5's {view.model_type} config class reads as plain RoPE "
            "(it fills rope_type 'default' first): YaRN would be silently off",
            "use --schema portable (or v5)",
        )
    if view.layout == "rope_parameters" and schema != "v5":
        notes.append("rope_parameters (transformers 5 form) rewritten as rope_scaling + rope_theta, which every runtime reads")
    new = write_rope(raw, view.section, after, length, schema, view=view)
    if "head_dim" not in view.text and "head_dim" in (new[view.section[0]] if view.section else new):
        notes.append(f"head_dim {view.head_dim} written: transformers 4.56-4.57 crash building YaRN for {view.model_type} without it")
    if view.layer_ropes.get("sliding_attention"):
        notes.append(f"YaRN applies to the full-attention layers; sliding-window layers keep theta {view.layer_ropes['sliding_attention'].theta:g}")
    after_view = read_config(new)
    plan = ExtendPlan(
        new, before, after, view.max_position, length, source, view.rope_head_dim, view.num_layers or 0, notes, after_view.findings, overrides,
        layer_ropes=after_view.layer_ropes, layer_types=layer_types(after_view), section=view.section,
    )  # fmt: skip
    # Self-check: the written config must read back as exactly the planned block.
    if replace(after_view.rope, extra={}) != replace(after, extra={}) or after_view.rotary_dim != view.rotary_dim:
        raise AssertionError(f"yarnconv bug: planned {after} but the written config reads {after_view.rope}")
    return plan


def _new_block(req: ExtendRequest, before: RopeBlock, factor: float, original: int, notes: list[str]) -> RopeBlock:
    """The rope block to write: the method's keys, the old block's theta and rotary fraction, a YaRN
    block's own betas and truncate kept when re-extending, the old method's keys dropped."""
    kept = before if before.rope_type == "yarn" else RopeBlock()
    extra = {k: v for k, v in before.extra.items() if k not in METHOD_KEYS}
    dropped = sorted(set(before.extra) - set(extra))
    if dropped:
        notes.append(f"dropped rope keys that belong to the old method: {', '.join(dropped)}")
    if req.method == "yarn":
        beta_fast = req.beta_fast or kept.beta_fast or rope.DEFAULT_BETA_FAST
        beta_slow = req.beta_slow or kept.beta_slow or rope.DEFAULT_BETA_SLOW
        if beta_fast <= beta_slow:
            raise YarnconvError(f"beta_fast ({beta_fast:g}) must be greater than beta_slow ({beta_slow:g})", "swap or fix the betas")
        after = RopeBlock(
            rope_type="yarn",
            theta=before.theta,
            partial_rotary_factor=before.partial_rotary_factor,
            factor=factor,
            original_context=original,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            truncate=kept.truncate,
            extra=extra,
            **_attention(req, before, notes),
        )
    else:
        if any(v is not None for v in (req.beta_fast, req.beta_slow, req.attention_factor, req.temperature)):
            raise UsageError(f"betas and attention settings apply to YaRN only, not {req.method}", "drop them or use --method yarn")
        after = RopeBlock(
            rope_type=req.method, theta=before.theta, partial_rotary_factor=before.partial_rotary_factor, factor=factor, extra=extra
        )
    return after
