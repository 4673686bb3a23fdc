"""RoPE frequency math for YaRN and its sibling scalings, as pure functions.

Notation follows the YaRN paper (Peng et al., arXiv:2309.00071) as implemented by every
major runtime: D is the rotary dimension, b the base (``rope_theta``), s the scale factor,
L the original (pre-extension) context. Pair index i runs over 0 .. D/2 - 1.

Two precisions are offered on purpose:

* ``precision="float64"`` (default) is the canonical value, computed in Python floats.
* ``precision="float32"`` mirrors transformers' float32 operation order step by step, so
  the buffers yarnconv writes are the ones transformers would build itself.

Nothing here reads files or imports torch at module load: planning stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_BETA_FAST = 32.0
DEFAULT_BETA_SLOW = 1.0

Precision = Literal["float64", "float32"]
METHODS = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


def rotary_dim(head_dim: int, partial_rotary_factor: float | None = None) -> int:
    """Number of rotated channels D = int(head_dim * rho); the rest pass through unrotated."""
    return int(head_dim * (1.0 if partial_rotary_factor is None else partial_rotary_factor))


def base_inv_freq(base: float, dim: int) -> list[float]:
    """Unscaled RoPE frequencies theta_i = b^(-2i/D)."""
    return [1.0 / base ** (2 * i / dim) for i in range(dim // 2)]


def correction_dim(num_rotations: float, dim: int, base: float, original_context: int) -> float:
    """Pair index whose wavelength completes ``num_rotations`` turns within the original context."""
    return dim * math.log(original_context / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def correction_range(
    beta_fast: float,
    beta_slow: float,
    dim: int,
    base: float,
    original_context: int,
    truncate: bool = True,
) -> tuple[float, float]:
    """Bounds (low, high) of the ramp between extrapolated and interpolated pairs.

    Rounded outward with floor/ceil unless ``truncate`` is false; the upper clamp is D - 1,
    as in transformers, vLLM and ggml.
    """
    low = correction_dim(beta_fast, dim, base, original_context)
    high = correction_dim(beta_slow, dim, base, original_context)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def linear_ramp(low: float, high: float, n: int) -> list[float]:
    """gamma_i = clamp((i - low) / (high - low), 0, 1); a zero-width ramp is widened by 0.001."""
    if low == high:
        high += 0.001
    return [min(max((i - low) / (high - low), 0.0), 1.0) for i in range(n)]


def mscale(scale: float, m: float = 1.0) -> float:
    """Magnitude correction g(s, m) = 0.1 * m * ln(s) + 1 (1 when s <= 1)."""
    if scale <= 1:
        return 1.0
    return 0.1 * m * math.log(scale) + 1.0


def yarn_attention_factor(
    factor: float,
    attention_factor: float | None = None,
    mscale_: float | None = None,
    mscale_all_dim: float | None = None,
) -> float:
    """The factor a that multiplies cos and sin (so q.k gains a^2).

    An explicit ``attention_factor`` replaces the default, even when it is 0; ``mscale`` and
    ``mscale_all_dim`` count only when both are truthy, as in transformers and vLLM.
    """
    if attention_factor is not None:
        return float(attention_factor)
    if mscale_ and mscale_all_dim:
        return mscale(factor, mscale_) / mscale(factor, mscale_all_dim)
    return mscale(factor)


def attention_factor_from_temperature(temperature: float) -> float:
    """The paper's softmax temperature t relates to the cos/sin factor by a = sqrt(1/t)."""
    return math.sqrt(1.0 / temperature)


def temperature_from_attention_factor(attention_factor: float) -> float:
    """Inverse of :func:`attention_factor_from_temperature`: t = 1 / a^2."""
    return 1.0 / attention_factor**2


@dataclass(frozen=True)
class RopeSpec:
    """Everything that determines a layer's rotary frequencies, independent of config layout."""

    method: str = "default"
    base: float = 10000.0
    dim: int = 128
    factor: float | None = None
    original_context: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    truncate: bool = True
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    max_position: int | None = None  # dynamic NTK: the length beyond which the base grows
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    short_factor: tuple[float, ...] | None = None  # longrope, sequences up to the original length
    long_factor: tuple[float, ...] | None = None  # longrope, longer sequences
    # llama.cpp's rope_freqs.weight: pair i's base frequency is divided by freq_factors[i] before
    # any scaling (ggml_rope_ext); transformers has no such input (docs/gguf.md §4).
    freq_factors: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RopeResult:
    """Frequencies per pair, the cos/sin magnitude, and the YaRN ramp bounds when relevant."""

    inv_freq: list[float]
    attention_factor: float
    correction_range: tuple[float, float] | None = None
    notes: tuple[str, ...] = field(default=())


def compute(spec: RopeSpec, *, seq_len: int | None = None, precision: Precision = "float64") -> RopeResult:
    """Inverse frequencies and attention factor for ``spec``.

    ``seq_len`` matters only for dynamic NTK (the base grows once the sequence outgrows
    ``max_position``); the default is the value at initialisation.
    """
    if spec.dim <= 0 or spec.dim % 2:
        raise ValueError(f"rotary dimension must be a positive even number, got {spec.dim}")
    if spec.freq_factors is not None and spec.method not in ("default", "linear", "yarn"):
        raise ValueError(f"per-pair frequency divisors combine with default, linear or yarn RoPE, not {spec.method}")
    # An explicit magnitude on unscaled or linear RoPE exists only in llama.cpp (rope.scaling.attn_factor);
    # configs never carry one there (config.read keeps attention_factor for yarn and longrope only).
    magnitude = 1.0 if spec.attention_factor is None else float(spec.attention_factor)
    if spec.method == "default":
        return RopeResult(_divided(_inv_freq(spec.base, spec.dim, precision), spec.freq_factors), magnitude)
    factor = spec.factor
    if factor is None or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"scaling factor must be a positive finite number, got {factor}")
    if spec.method == "linear":
        return RopeResult(_scaled(_divided(_inv_freq(spec.base, spec.dim, precision), spec.freq_factors), factor, precision), magnitude)
    if spec.method == "dynamic":
        return RopeResult(_inv_freq(dynamic_ntk_base(spec, seq_len), spec.dim, precision), 1.0)
    if spec.method == "yarn":
        return _yarn(spec, precision)
    if spec.method == "llama3":
        return RopeResult(_llama3(spec), 1.0)
    if spec.method == "longrope":
        return _longrope(spec, seq_len)
    raise ValueError(f"unknown RoPE method {spec.method!r}; expected one of {', '.join(METHODS)}")


def dynamic_ntk_base(spec: RopeSpec, seq_len: int | None = None) -> float:
    """transformers' Dynamic-NTK base b' = b * (s*l/M - (s-1))^(D/(D-2)), l = max(seq_len, M)."""
    if spec.max_position is None:
        raise ValueError("dynamic NTK needs max_position (the length where scaling starts)")
    length = max(seq_len or 0, spec.max_position)
    s = spec.factor or 1.0
    return spec.base * ((s * length / spec.max_position) - (s - 1)) ** (spec.dim / (spec.dim - 2))


def _yarn(spec: RopeSpec, precision: Precision) -> RopeResult:
    if spec.original_context is None or spec.original_context <= 0:
        raise ValueError("YaRN needs the original (pre-extension) context length")
    factor = float(spec.factor)  # type: ignore[arg-type]
    beta_fast = spec.beta_fast or DEFAULT_BETA_FAST  # falsy -> default, as transformers reads it
    beta_slow = spec.beta_slow or DEFAULT_BETA_SLOW
    low, high = correction_range(beta_fast, beta_slow, spec.dim, spec.base, spec.original_context, spec.truncate)
    a = yarn_attention_factor(factor, spec.attention_factor, spec.mscale, spec.mscale_all_dim)
    if precision == "float32" and spec.freq_factors is None:
        inv = _yarn_float32(spec.base, spec.dim, factor, low, high)
    else:  # ggml applies the ramp by pair index on top of the divided frequencies
        ramp = linear_ramp(low, high, spec.dim // 2)
        base = _divided(base_inv_freq(spec.base, spec.dim), spec.freq_factors)
        inv = [t * (g / factor + (1.0 - g)) for t, g in zip(base, ramp, strict=False)]
    return RopeResult(inv, a, (low, high))


def _divided(inv: list[float], freq_factors: tuple[float, ...] | None) -> list[float]:
    """Base frequencies divided pair by pair (llama.cpp's rope_freqs.weight); a length mismatch is an error."""
    if freq_factors is None:
        return inv
    if len(freq_factors) != len(inv):
        raise ValueError(f"rope_freqs has {len(freq_factors)} values, the rotary dimension needs {len(inv)}")
    if not all(math.isfinite(f) and f > 0 for f in freq_factors):
        raise ValueError("rope_freqs holds a value that is not a positive finite number")
    return [t / f for t, f in zip(inv, freq_factors, strict=True)]


def _inv_freq(base: float, dim: int, precision: Precision) -> list[float]:
    if precision == "float64":
        return base_inv_freq(base, dim)
    import torch

    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim
    return (1.0 / (base**exponents)).tolist()


def _scaled(inv: list[float], factor: float, precision: Precision) -> list[float]:
    if precision == "float64":
        return [x / factor for x in inv]
    import torch

    return (torch.tensor(inv, dtype=torch.float32) / factor).tolist()


def _yarn_float32(base: float, dim: int, factor: float, low: float, high: float) -> list[float]:
    """transformers' exact float32 sequence (modeling_rope_utils._compute_yarn_parameters)."""
    import torch

    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp
    return (interpolation * (1 - keep) + extrapolation * keep).tolist()


def _llama3(spec: RopeSpec) -> list[float]:
    """Llama 3.1's wavelength-banded scaling (transformers ``_compute_llama3_parameters``):
    long wavelengths are divided by the factor, short ones kept, the band between blended."""
    if spec.original_context is None or spec.low_freq_factor is None or spec.high_freq_factor is None:
        raise ValueError("llama3 scaling needs original_max_position_embeddings, low_freq_factor and high_freq_factor")
    factor, old = float(spec.factor), spec.original_context  # type: ignore[arg-type]
    low_wavelen, high_wavelen = old / spec.low_freq_factor, old / spec.high_freq_factor
    out = []
    for f in base_inv_freq(spec.base, spec.dim):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def _longrope(spec: RopeSpec, seq_len: int | None) -> RopeResult:
    """LongRoPE (Phi-3): per-pair divisors, short ones up to the original length, long ones beyond;
    magnitude sqrt(1 + ln s / ln L) unless given."""
    if spec.original_context is None or spec.short_factor is None or spec.long_factor is None:
        raise ValueError("longrope needs original_max_position_embeddings, short_factor and long_factor")
    factors = spec.long_factor if seq_len and seq_len > spec.original_context else spec.short_factor
    if len(factors) != spec.dim // 2:
        raise ValueError(f"longrope factors have {len(factors)} entries, the rotary dimension needs {spec.dim // 2}")
    inv = [t / e for t, e in zip(base_inv_freq(spec.base, spec.dim), factors, strict=True)]
    s = float(spec.factor or 1.0)
    if spec.attention_factor is not None:
        a = float(spec.attention_factor)
    else:
        a = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(spec.original_context))
    return RopeResult(inv, a)
