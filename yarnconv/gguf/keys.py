"""YaRN in GGUF terms: which keys llama.cpp reads, how a canonical rope block maps onto them, and back.

Pure functions on plain values. The facts come from shared/reference/gguf.md §1–4 (llama.cpp
@ 0c1e57098): llama.cpp multiplies its own g(s) = 0.1 ln s + 1 by ``rope.scaling.attn_factor``;
it reads betas from the file only for grok and mistral3; ggml always rounds the correction
range; ``rope_freqs.weight`` divides each pair's angle and is honoured by llama-family graphs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from yarnconv import rope
from yarnconv.config import RopeBlock
from yarnconv.gguf.file import PAD_KEY, GGUFHeader, GGUFValueType

# llama.cpp architectures with no rotary embedding to rescale.
NO_ROPE_ARCHS = {
    "gpt2": "learned absolute positions",
    "starcoder": "learned absolute positions",
    "bert": "learned absolute positions",
    "bloom": "ALiBi",
    "mpt": "ALiBi",
    "refact": "ALiBi",
    "jais": "ALiBi",
    "jina-bert-v2": "ALiBi",
    "t5": "relative position buckets",
    "t5encoder": "relative position buckets",
    "mamba": "no attention positions",
    "mamba2": "no attention positions",
    "rwkv6": "no attention positions",
    "rwkv6qwen2": "no attention positions",
    "rwkv7": "no attention positions",
}
# Architectures whose YaRN handling in llama.cpp is not the generic one (gguf.md §2–3).
SPECIAL_YARN_ARCHS = {
    "deepseek2": "DeepSeek-V2/V3 fold mscale_all_dim into yarn_log_multiplier (MLA)",
    "phi3": "Phi-3 uses longrope factors and its own attn_factor",
    "grok": "Grok writes its own YaRN keys",
}
BETA_KEY_ARCHS = {"grok", "mistral3"}  # the only archs whose loader reads yarn_beta_fast/slow
ROPE_FREQS_ARCHS = {"llama", "deci", "mistral3", "arcee", "granite", "exaone", "minicpm"}  # graphs that apply rope_freqs.weight
SCALING_TYPES = ("none", "linear", "yarn", "longrope")

U32, F32, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING


def key(arch: str, name: str) -> str:
    return f"{arch}.{name}"


@dataclass
class GGUFRope:
    """A file's rope settings as llama.cpp reads them (defaults filled in the way the loader does)."""

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

    def block(self) -> RopeBlock:
        """The canonical block that reproduces what llama.cpp computes from these keys."""
        if self.scaling_type == "yarn" and self.factor:
            a = self.attn_factor * rope.mscale(self.factor)
            fixed_betas = self.arch not in BETA_KEY_ARCHS
            return RopeBlock(
                rope_type="yarn",
                theta=self.freq_base,
                factor=self.factor,
                original_context=self.original_context or self.context_length,
                beta_fast=rope.DEFAULT_BETA_FAST if fixed_betas or self.beta_fast is None else self.beta_fast,
                beta_slow=rope.DEFAULT_BETA_SLOW if fixed_betas or self.beta_slow is None else self.beta_slow,
                attention_factor=None if abs(self.attn_factor - 1.0) < 1e-7 else a,
            )
        if self.scaling_type == "linear" and self.factor and self.factor != 1.0:
            return RopeBlock(rope_type="linear", theta=self.freq_base, factor=self.factor)
        return RopeBlock(theta=self.freq_base)


def read_rope(get: Any, arch: str, tensor_names: set[str]) -> GGUFRope:
    """Rope settings from a header's ``get(key, default)``; absent keys take llama.cpp's defaults."""
    ctx = get(key(arch, "context_length"))
    scaling = get(key(arch, "rope.scaling.type"))
    factor = get(key(arch, "rope.scaling.factor"), get(key(arch, "rope.scale_linear")))
    if factor is not None and factor == 0:
        factor = None
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
        has_rope_freqs="rope_freqs.weight" in tensor_names,
        explicit_type=scaling is not None,
    )


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


@dataclass
class KeyPlan:
    """Keys to set and remove in a GGUF, plus what llama.cpp cannot be told through them."""

    sets: dict[str, tuple[GGUFValueType, Any]] = field(default_factory=dict)
    removes: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    rope_freqs: Any = None  # float32 numpy array for the freqs route

    def summary(self) -> dict[str, Any]:
        return {
            "set": {k: v for k, (_, v) in self.sets.items()},
            "remove": sorted(self.removes),
            "warnings": self.warnings,
            "rope_freqs_tensor": self.rope_freqs is not None,
        }


def unencodable(arch: str, block: RopeBlock) -> list[str]:
    """Settings of ``block`` that llama.cpp's YaRN keys cannot carry for ``arch``."""
    out = []
    if block.rope_type != "yarn":
        return out
    if arch not in BETA_KEY_ARCHS:
        for name, value, default in (
            ("beta_fast", block.beta_fast, rope.DEFAULT_BETA_FAST),
            ("beta_slow", block.beta_slow, rope.DEFAULT_BETA_SLOW),
        ):
            if value is not None and value != default:
                out.append(f"{name}={value:g} (llama.cpp uses {default:g} for {arch})")
    if block.truncate is False:
        out.append("truncate=false (ggml always rounds the correction range)")
    return out


def _magnitude(block: RopeBlock, dim: int) -> float:
    return rope.compute(block.spec(dim)).attention_factor


def plan_keys(arch: str, block: RopeBlock, length: int, dim: int, *, route: str = "keys") -> KeyPlan:
    """GGUF keys (route ``keys``) or keys plus a ``rope_freqs.weight`` tensor (route ``freqs``) for ``block``."""
    p = KeyPlan()
    p.sets[key(arch, "context_length")] = (U32, int(length))
    stale = ("rope.scaling.attn_factor", "rope.scale_linear", "rope.scaling.original_context_length", "rope.scaling.factor")
    p.removes.update(key(arch, k) for k in stale)
    if block.rope_type == "dynamic":
        raise ValueError("dynamic NTK has no GGUF encoding")
    if route == "freqs":
        # Exact: per-pair divisors carry ramp, betas and truncate; "none" stops llama.cpp's own YaRN.
        import numpy as np

        result = rope.compute(block.spec(dim))
        base = rope.base_inv_freq(block.theta, dim)
        p.rope_freqs = np.array([b / f for b, f in zip(base, result.inv_freq, strict=True)], dtype=np.float32)
        p.sets[key(arch, "rope.scaling.type")] = (STR, "none")
        if abs(result.attention_factor - 1.0) > 1e-7:
            p.sets[key(arch, "rope.scaling.attn_factor")] = (F32, result.attention_factor)
        p.removes -= set(p.sets)
        return p
    if block.rope_type == "default":
        p.sets[key(arch, "rope.scaling.type")] = (STR, "none")
    elif block.rope_type == "linear":
        p.sets[key(arch, "rope.scaling.type")] = (STR, "linear")
        p.sets[key(arch, "rope.scaling.factor")] = (F32, float(block.factor or 1.0))
    else:
        s = float(block.factor or 1.0)
        p.sets[key(arch, "rope.scaling.type")] = (STR, "yarn")
        p.sets[key(arch, "rope.scaling.factor")] = (F32, s)
        p.sets[key(arch, "rope.scaling.original_context_length")] = (U32, int(block.original_context or length))
        attn = _magnitude(block, dim) / rope.mscale(s)
        if abs(attn - 1.0) > 1e-7:
            p.sets[key(arch, "rope.scaling.attn_factor")] = (F32, attn)
        if arch in BETA_KEY_ARCHS:
            p.sets[key(arch, "rope.scaling.yarn_beta_fast")] = (F32, float(block.beta_fast or rope.DEFAULT_BETA_FAST))
            p.sets[key(arch, "rope.scaling.yarn_beta_slow")] = (F32, float(block.beta_slow or rope.DEFAULT_BETA_SLOW))
        lost = unencodable(arch, block)
        if lost:
            fix = (
                "export with --gguf-rope freqs for an exact rope_freqs.weight tensor"
                if arch in ROPE_FREQS_ARCHS
                else f"run llama.cpp with {' '.join(llama_cpp_beta_flags(block))}"
                if any("beta" in x for x in lost)
                else "no GGUF route exists"
            )
            p.warnings.append(f"llama.cpp will NOT apply {'; '.join(lost)} from this file: {fix}")
    p.removes -= set(p.sets)
    return p


def llama_cpp_beta_flags(block: RopeBlock) -> list[str]:
    return [
        f"--yarn-beta-fast {block.beta_fast or rope.DEFAULT_BETA_FAST:g}",
        f"--yarn-beta-slow {block.beta_slow or rope.DEFAULT_BETA_SLOW:g}",
    ]


def llama_cpp_flags(block: RopeBlock, length: int) -> list[str]:
    """llama.cpp command-line flags that apply ``block`` to an unpatched file (gguf.md §12)."""
    if block.rope_type == "yarn":
        flags = ["--rope-scaling yarn", f"--rope-scale {block.factor:g}", f"--yarn-orig-ctx {block.original_context}"]
        if unencodable("llama", block):
            flags += llama_cpp_beta_flags(block)
        return flags + [f"-c {length}"]
    if block.rope_type == "linear":
        return ["--rope-scaling linear", f"--rope-scale {block.factor:g}", f"-c {length}"]
    return [f"-c {length}"]


def effective(r: GGUFRope) -> dict[str, Any]:
    """What llama.cpp's runtime will compute from these keys (llama-context.cpp's rules)."""
    out: dict[str, Any] = {
        "scaling": r.scaling_type,
        "n_ctx_train": r.context_length,
        "freq_base": r.freq_base,
        "rope_dim": r.dim,
    }
    if r.has_rope_freqs:
        out["rope_freqs"] = "rope_freqs.weight divides each pair's angle (llama-family graphs only)"
    if r.scaling_type == "yarn" and r.factor:
        out.update(
            freq_scale=1.0 / r.factor,
            n_ctx_orig_yarn=r.original_context or r.context_length,
            attention_magnitude=r.attn_factor * rope.mscale(r.factor),
            beta_fast=r.beta_fast if r.arch in BETA_KEY_ARCHS and r.beta_fast else rope.DEFAULT_BETA_FAST,
            beta_slow=r.beta_slow if r.arch in BETA_KEY_ARCHS and r.beta_slow else rope.DEFAULT_BETA_SLOW,
        )
        if r.original_context is None:
            out["warning"] = "no original_context_length: llama.cpp uses context_length as the original length"
    elif r.scaling_type == "linear" and r.factor:
        out["freq_scale"] = 1.0 / r.factor
    elif r.attn_factor != 1.0:
        out["attention_magnitude"] = r.attn_factor
    return out


def _stored(vtype: GGUFValueType, value: Any) -> Any:
    """``value`` as it reads back once written with ``vtype`` (float32 rounding)."""
    if vtype == GGUFValueType.FLOAT32:
        return struct.unpack("<f", struct.pack("<f", float(value)))[0]
    return value


def check_written_keys(written: GGUFHeader, keys: KeyPlan, before: GGUFHeader | None = None) -> None:
    """Read-back self-check of a file yarnconv wrote: every planned key holds its planned value,
    removed keys are gone, and (for a patch) every other key of ``before`` is unchanged."""
    for k, (vtype, value) in keys.sets.items():
        kv = written.kvs.get(k)
        if kv is None or kv.vtype != vtype or kv.value != _stored(vtype, value):
            raise AssertionError(f"yarnconv bug: {written.path.name} reads {k} = {kv and kv.value!r}, planned {value!r}")
    for k in keys.removes:
        if k in written.kvs:
            raise AssertionError(f"yarnconv bug: {written.path.name} still has {k}")
    if before is None:
        return
    kept = [k for k in before.order if k not in keys.sets and k not in keys.removes and k != PAD_KEY]
    for k in kept:
        old, new = before.kvs[k], written.kvs.get(k)
        if new is None or (new.vtype, new.value, new.subtype, new.count) != (old.vtype, old.value, old.subtype, old.count):
            raise AssertionError(f"yarnconv bug: {written.path.name} changed {k}, which the patch does not touch")
    extra = set(written.kvs) - set(kept) - set(keys.sets) - {PAD_KEY}
    if extra:
        raise AssertionError(f"yarnconv bug: {written.path.name} gained {sorted(extra)[0]}")
