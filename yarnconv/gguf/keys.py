"""YaRN into GGUF terms: the keys (or the rope_freqs tensor) that make llama.cpp run a rope block,
the plan recorded beside them, and the read-back check of what was written. Reading a file's rope
back is :mod:`yarnconv.gguf.llama_rope`.

Pure functions on plain values. The facts come from docs/gguf.md §1–4 (llama.cpp
@ 0c1e57098): llama.cpp multiplies its own g(s) = 0.1 ln s + 1 by ``rope.scaling.attn_factor``;
it reads betas from the file only for grok and mistral3; ggml always rounds the correction
range; ``rope_freqs.weight`` divides each pair's angle and is honoured by llama-family graphs.
"""

from __future__ import annotations

import json
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
# Architectures whose YaRN handling in llama.cpp is not the generic one (docs/gguf.md §1–2).
SPECIAL_YARN_ARCHS = {
    "deepseek2": "DeepSeek-V2/V3 fold mscale_all_dim into yarn_log_multiplier (MLA)",
    "phi3": "Phi-3 uses longrope factors and its own attn_factor",
    "grok": "Grok writes its own YaRN keys",
}
BETA_KEY_ARCHS = {"grok", "mistral3"}  # the only archs whose loader reads yarn_beta_fast/slow
ROPE_FREQS_ARCHS = {"llama", "deci", "mistral3", "arcee", "granite", "exaone", "minicpm"}  # graphs that apply rope_freqs.weight
SCALING_TYPES = ("none", "linear", "yarn", "longrope")
ROPE_FREQS = "rope_freqs.weight"
U32, F32, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING


def key(arch: str, name: str) -> str:
    return f"{arch}.{name}"


RECORD_KEY = "yarnconv.rope"  # JSON: the rope block and context yarnconv planned, so verify can check a file alone


def record_value(block: RopeBlock, context: int) -> str:
    """RECORD_KEY's value: the plan a GGUF was written for (verify checks the file against it)."""
    return json.dumps({"rope": block.to_dict(), "context_length": int(context)}, separators=(",", ":"), sort_keys=True)


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
        p.sets[RECORD_KEY] = (STR, record_value(block, length))
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
    p.sets[RECORD_KEY] = (STR, record_value(block, length))
    p.removes -= set(p.sets)
    return p


def llama_cpp_beta_flags(block: RopeBlock) -> list[str]:
    return [
        f"--yarn-beta-fast {block.beta_fast or rope.DEFAULT_BETA_FAST:g}",
        f"--yarn-beta-slow {block.beta_slow or rope.DEFAULT_BETA_SLOW:g}",
    ]


def llama_cpp_flags(block: RopeBlock, length: int) -> list[str]:
    """llama.cpp command-line flags that apply ``block`` to an unpatched file (docs/gguf.md §7)."""
    if block.rope_type == "yarn":
        flags = ["--rope-scaling yarn", f"--rope-scale {block.factor:g}", f"--yarn-orig-ctx {block.original_context}"]
        if unencodable("llama", block):
            flags += llama_cpp_beta_flags(block)
        return flags + [f"-c {length}"]
    if block.rope_type == "linear":
        return ["--rope-scaling linear", f"--rope-scale {block.factor:g}", f"-c {length}"]
    return [f"-c {length}"]


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
