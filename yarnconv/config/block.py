"""The canonical rope block and the parsed view of a config.json that every other module reads.

Pure data: dataclasses and the constants that describe config layouts in the wild.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from yarnconv import families, rope

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
# Legacy keys that transformers and vLLM 0.32 ignore but the reference code, SGLang and TGI honour.
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
    # GGUF only: llama.cpp's rope_freqs.weight, per-pair divisors of the base frequencies.
    freq_factors: tuple[float, ...] | None = None

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
            freq_factors=None if self.freq_factors is None else tuple(float(f) for f in self.freq_factors),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form with absent values dropped."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def differences(got: RopeBlock, want: RopeBlock) -> list[str]:
    """``field got (want)`` for each rope setting where two blocks disagree: the named cause of a
    runtime reading another rope than the plan."""
    out = []
    for name in ("rope_type", "theta", "factor", "original_context", "beta_fast", "beta_slow", "truncate", "attention_factor", "mscale", "mscale_all_dim", "partial_rotary_factor"):
        a, b = getattr(got, name), getattr(want, name)
        if a != b and not (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-6 * max(abs(a), abs(b))):
            out.append(f"{name} {a!r} (the plan's {b!r})")
    ga, gb = got.freq_factors, want.freq_factors
    if (ga is None) != (gb is None) or (ga is not None and gb is not None and (len(ga) != len(gb) or any(abs(x - y) > 1e-6 * abs(y) for x, y in zip(ga, gb, strict=True)))):
        out.append("rope_freqs divisors differ")
    return out


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
