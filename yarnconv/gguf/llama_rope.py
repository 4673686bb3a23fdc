"""A GGUF's rope as llama.cpp computes it: its keys (absent ones take the loader's defaults),
``rope_freqs.weight`` and the plan yarnconv recorded, read once for inspect, verify and hints.

The rules are llama.cpp's (docs/gguf.md §1-4): type none forces freq_scale 1 and no ramp, linear
divides by s, yarn ramps with betas 32/1 except where the loader reads them; the magnitude is
``attn_factor`` times the host's g-ratio under yarn, ``attn_factor`` alone otherwise; the tensor
divides each pair's base frequency first, on the graphs that apply it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from yarnconv import rope
from yarnconv.config import RopeBlock
from yarnconv.gguf.file import GGUFHeader, TensorEntry
from yarnconv.gguf.keys import BETA_KEY_ARCHS, RECORD_KEY, ROPE_FREQS, ROPE_FREQS_ARCHS, key

# Loaders that read rope.scaling.yarn_log_multiplier (m_a): the DeepSeek family stores 0.1 * m_a and
# divides on load, and its host code also takes m = m_a; mistral3 stores m_a as is (docs/gguf.md §1-2).
LOG_MUL_TENTHS = {"deepseek2", "deepseek32", "glm-dsa"}
LOG_MUL_ARCHS = LOG_MUL_TENTHS | {"mistral3"}


@dataclass
class GGUFRope:
    """A file's rope as llama.cpp computes it: its keys (absent ones take the loader's defaults)
    and ``rope_freqs.weight``, which divides each pair's base frequency before any scaling."""

    arch: str
    context_length: int | None
    freq_base: float
    dim: int | None
    scaling_type: str
    factor: float | None
    original_context: int | None
    attn_factor: float
    beta_fast: float | None
    beta_slow: float | None
    has_rope_freqs: bool
    explicit_type: bool
    freq_factors: tuple[float, ...] | None = None  # the tensor's values (None when absent or unreadable)
    log_multiplier: float = 0.0  # m_a as the loader holds it (after the DeepSeek family's division by 0.1)
    recorded: dict[str, Any] | None = None  # the plan yarnconv wrote into the file (RECORD_KEY)

    @property
    def applies_freqs(self) -> bool:
        """llama.cpp's graph for this arch multiplies by rope_freqs.weight (others refuse or ignore it)."""
        return self.freq_factors is not None and self.arch in ROPE_FREQS_ARCHS

    def block(self, head_dim: int | None = None) -> RopeBlock:
        """The canonical block that reproduces what llama.cpp computes from these keys and tensor
        (``head_dim``: rope.dimension_count below it is a partial rotary factor)."""
        block = self._block()
        if head_dim and self.dim and self.dim < head_dim:
            block = replace(block, partial_rotary_factor=self.dim / head_dim)
        return block

    def _block(self) -> RopeBlock:
        ff = self.freq_factors if self.applies_freqs else None
        magnitude = None if abs(self.attn_factor - 1.0) < 1e-7 else self.attn_factor
        if self.scaling_type == "yarn" and self.factor:
            fixed_betas = self.arch not in BETA_KEY_ARCHS
            ratio = self._mscales()
            return RopeBlock(
                rope_type="yarn",
                theta=self.freq_base,
                factor=self.factor,
                original_context=self.original_context or self.context_length,
                beta_fast=rope.DEFAULT_BETA_FAST if fixed_betas or self.beta_fast is None else self.beta_fast,
                beta_slow=rope.DEFAULT_BETA_SLOW if fixed_betas or self.beta_slow is None else self.beta_slow,
                attention_factor=None if magnitude is None else self.yarn_magnitude(),
                freq_factors=ff,
                **(ratio if magnitude is None else {}),
            )
        if self.scaling_type == "linear" and self.factor and self.factor != 1.0:
            return RopeBlock(rope_type="linear", theta=self.freq_base, factor=self.factor, attention_factor=magnitude, freq_factors=ff)
        # type none (or linear without a factor): llama.cpp forces freq_scale 1 and no ramp, and the
        # magnitude is attn_factor alone (llama-context.cpp; docs/gguf.md §2)
        return RopeBlock(theta=self.freq_base, attention_factor=magnitude, freq_factors=ff)

    def _mscales(self) -> dict[str, float]:
        """llama.cpp's host magnitude g(s, m) / g(s, m_a) as config keys: m = m_a for the DeepSeek family, else 1."""
        if not self.log_multiplier:
            return {}
        return {"mscale": self.log_multiplier if self.arch in LOG_MUL_TENTHS else 1.0, "mscale_all_dim": self.log_multiplier}

    def yarn_magnitude(self) -> float:
        """The cos/sin magnitude llama.cpp applies under yarn: attn_factor times the host's g-ratio."""
        m = self._mscales()
        return self.attn_factor * rope.yarn_attention_factor(self.factor or 1.0, None, m.get("mscale"), m.get("mscale_all_dim"))

    def original(self) -> tuple[int | None, str]:
        """The pretraining length as the file tells it, and how that was found."""
        if self.scaling_type == "yarn" and self.factor:
            if self.original_context:
                return self.original_context, f"{self.arch}.rope.scaling.original_context_length"
            return self.context_length, f"{self.arch}.context_length (no original_context_length: llama.cpp falls back to it)"
        if self.applies_freqs and self.context_length and self.freq_factors:
            top = max(self.freq_factors)
            if top > 1.0 + 1e-6:
                length = round(self.context_length / top)
                return length, f"inferred: {self.arch}.context_length / the largest rope_freqs.weight divisor ({top:.4g})"
        if self.scaling_type == "linear" and self.factor and self.context_length:
            return round(self.context_length / self.factor), f"inferred: {self.arch}.context_length / rope.scaling.factor"
        return self.context_length, f"{self.arch}.context_length (the file states no scaling)"


def read_rope(headers: GGUFHeader | Sequence[GGUFHeader]) -> GGUFRope:
    """Rope settings of a GGUF (the first shard's keys, ``rope_freqs.weight`` from whichever shard
    holds it); absent keys take llama.cpp's defaults."""
    shards = [headers] if isinstance(headers, GGUFHeader) else list(headers)
    h = shards[0]
    arch = h.arch or "?"
    get = h.get
    ctx = get(key(arch, "context_length"))
    scaling = get(key(arch, "rope.scaling.type"))
    factor = get(key(arch, "rope.scaling.factor"), get(key(arch, "rope.scale_linear")))
    if factor is not None and factor == 0:
        factor = None
    freqs = next(((sh, t) for sh in shards for t in sh.tensors if t.name == ROPE_FREQS), None)
    return GGUFRope(
        arch=arch,
        context_length=ctx,
        freq_base=float(get(key(arch, "rope.freq_base"), 10000.0)),
        dim=get(key(arch, "rope.dimension_count")),
        # llama.cpp's default type is "linear", which with no factor means no scaling at all.
        scaling_type=scaling if scaling is not None else ("linear" if factor else "none"),
        factor=factor,
        original_context=get(key(arch, "rope.scaling.original_context_length")),
        attn_factor=float(get(key(arch, "rope.scaling.attn_factor"), 1.0)),
        beta_fast=get(key(arch, "rope.scaling.yarn_beta_fast")),
        beta_slow=get(key(arch, "rope.scaling.yarn_beta_slow")),
        has_rope_freqs=freqs is not None,
        explicit_type=scaling is not None,
        freq_factors=None if freqs is None else read_freq_factors(*freqs),
        log_multiplier=_log_multiplier(arch, get(key(arch, "rope.scaling.yarn_log_multiplier"), 0.0)),
        recorded=_recorded(get(RECORD_KEY)),
    )


def _log_multiplier(arch: str, raw: Any) -> float:
    if arch not in LOG_MUL_ARCHS or not isinstance(raw, (int, float)):
        return 0.0
    return float(raw) / 0.1 if arch in LOG_MUL_TENTHS else float(raw)


def read_freq_factors(header: GGUFHeader, t: TensorEntry) -> tuple[float, ...] | None:
    """The values of a rope_freqs.weight tensor (F32 or F16, one row), or None if it is not one."""
    if t.type_name not in ("F32", "F16") or len(t.dims) != 1 or t.dims[0] > 1 << 16:
        return None
    width = 4 if t.type_name == "F32" else 2
    with open(header.path, "rb") as f:
        raw = os.pread(f.fileno(), t.dims[0] * width, header.data_offset + t.offset)
    if len(raw) != t.dims[0] * width:
        return None
    return struct.unpack(f"<{t.dims[0]}{'f' if width == 4 else 'e'}", raw)


def _recorded(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("rope"), dict) else None


def pseudo_config(r: GGUFRope, block_count: int | None = None, head_dim: int | None = None) -> dict[str, Any]:
    """An HF-style config with the same rope meaning, so one planner serves HF and GGUF alike."""
    cfg: dict[str, Any] = {"model_type": r.arch, "rope_theta": r.freq_base}
    if block_count:
        cfg["num_hidden_layers"] = block_count
    if r.dim or head_dim:
        cfg["head_dim"] = r.dim or head_dim
    if r.context_length:
        cfg["max_position_embeddings"] = r.context_length
    b = r.block()
    if b.rope_type != "default":
        block = {"rope_type": b.rope_type, "type": b.rope_type, "factor": b.factor}
        if b.rope_type == "yarn":
            block.update(original_max_position_embeddings=b.original_context, beta_fast=b.beta_fast, beta_slow=b.beta_slow)
            if b.attention_factor is not None:
                block["attention_factor"] = b.attention_factor
        cfg["rope_scaling"] = block
    elif r.scaling_type not in ("none", "linear"):
        cfg["rope_scaling"] = {"rope_type": r.scaling_type, "type": r.scaling_type}
    return cfg


def effective(r: GGUFRope) -> dict[str, Any]:
    """What llama.cpp's runtime will compute from these keys (llama-context.cpp's rules)."""
    out: dict[str, Any] = {
        "scaling": r.scaling_type,
        "n_ctx_train": r.context_length,
        "freq_base": r.freq_base,
        "rope_dim": r.dim,
    }
    if r.applies_freqs and r.freq_factors:
        out["rope_freqs"] = f"rope_freqs.weight divides each pair's frequency by {min(r.freq_factors):.4g} .. {max(r.freq_factors):.4g}"
    elif r.has_rope_freqs:
        out["rope_freqs"] = (
            "rope_freqs.weight is not a float vector llama.cpp can use"
            if r.arch in ROPE_FREQS_ARCHS
            else f"llama.cpp's {r.arch} graph has no rope_freqs.weight: loading fails with 'wrong number of tensors'"
        )
    if r.scaling_type == "yarn" and r.factor:
        out.update(
            freq_scale=1.0 / r.factor,
            n_ctx_orig_yarn=r.original_context or r.context_length,
            attention_magnitude=r.yarn_magnitude(),
            beta_fast=r.beta_fast if r.arch in BETA_KEY_ARCHS and r.beta_fast else rope.DEFAULT_BETA_FAST,
            beta_slow=r.beta_slow if r.arch in BETA_KEY_ARCHS and r.beta_slow else rope.DEFAULT_BETA_SLOW,
        )
        if r.original_context is None:
            out["warning"] = "no original_context_length: llama.cpp uses context_length as the original length"
    elif r.scaling_type == "linear" and r.factor:
        out["freq_scale"] = 1.0 / r.factor
    elif r.attn_factor != 1.0:
        out["attention_magnitude"] = r.attn_factor
    original, source = r.original()
    out["original_context"], out["original_context_from"] = original, source
    return out
