"""Checks only a GGUF needs: its rope keys and context against the plan, llama.cpp's Q/K row layout,
and logit tolerances by weight type.

Tolerances (KL in nats per token, llama.cpp against the reference, measured on SmolLM2-135M ×4
with seeded ids, flash attention off, float32 cache; the bounds leave 3-10x headroom): F32 mean
1e-6 near / 8e-6 far is pure float32 rounding plus llama.cpp's angle products; F16 weights round
activations to f16 (mean ~1e-5); BF16 to bf16 (~5e-4); Q8_0 and 4-bit quants quantize
activations to 8 bits (~1e-2). With --base a bf16 file runs against the reference on the base's
weights and adds its own rounding, so the next looser rung applies; a quantized file (Q8_0 and
below) runs against the reference on its own dequantized weights with the base's plan, because its
quantization loss (KL 0.1-0.2 for 3- and 4-bit types on SmolLM2) would hide a rope fault of the
same size. Its loss is measured on its own (export --verify, against the float file). Where
llama.cpp's own arithmetic moves a model's logits further than these bounds allow (a 7B at long
range, nearly flat logits), the bounds follow that noise, measured on the model (docs/verify.md §7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from yarnconv import rope
from yarnconv.config.block import differences
from yarnconv.verify.check import Bound, Check, judge
from yarnconv.verify.probe import Probe
from yarnconv.verify.subject import Subject

_F32 = (Bound("kl_mean", "<=", 1e-5), Bound("kl_max", "<=", 1e-4), Bound("top1_agreement", ">=", 0.99))
_F16 = (Bound("kl_mean", "<=", 1e-4), Bound("kl_max", "<=", 1e-3), Bound("top1_agreement", ">=", 0.98))
_BF16 = (Bound("kl_mean", "<=", 5e-3), Bound("kl_max", "<=", 5e-2), Bound("top1_agreement", ">=", 0.9))
_Q8 = (Bound("kl_mean", "<=", 0.05), Bound("kl_p99", "<=", 0.3), Bound("top1_agreement", ">=", 0.7))
_LOW = (Bound("kl_mean", "<=", 0.15), Bound("kl_p99", "<=", 1.0), Bound("top1_agreement", ">=", 0.5))
LADDER = [("F32", _F32), ("F16", _F16), ("BF16", _BF16), ("Q8_0", _Q8), ("*", _LOW)]


FLOAT_TYPES = {"F32": None, "F16": "float16", "BF16": "bfloat16"}
# llama.cpp's arithmetic is emulated less closely than transformers' (its kernels, attention and
# softmax are not): on a Llama-2-7B-shaped F16 at 64k it sat 2.6x (KL mean) and 3.8x (KL max)
# above the emulated noise, against 1.55 for plain RoPE instead of the plan.
NOISE_MARGIN = 10.0
# A quantized file's noise is dominated by the 8-bit inputs, which are emulated block for block.
QUANT_NOISE_MARGIN = 3.0


def llama_cpp_noise(reference: Any, s: Subject, probe: Probe, planned: np.ndarray) -> dict[str, tuple[dict[str, Any], float]]:
    """How far llama.cpp's own arithmetic may move this model's logits, by region, with the margin
    that region's bounds get over it: the reference forms rope angles as ggml does and converts
    each matmul's input as ggml-cpu does (float files: rounded to the file's type, which matters
    only at long range; quantized files: 8-bit blocks, everywhere: on a Llama-2-7B-shaped Q4_K_M
    with random weights, whose logits are nearly flat, top-1 agreement fell to 0.45 from that alone)."""
    import torch

    from yarnconv.verify.stats import region_stats

    positions = np.array(probe.positions)
    quantized = s.weight_type not in FLOAT_TYPES
    regions = {"beyond": positions >= s.original} | ({"below": positions < s.original} if quantized else {})
    regions = {name: mask for name, mask in regions.items() if mask.any()}
    if not regions:
        return {}
    rounding = None if quantized else FLOAT_TYPES[s.weight_type]
    alone = (probe.near,) if probe.near < len(probe.tokens) else ()
    emulated = reference.logits(
        probe.tokens, probe.positions, spec=s.spec(), alone=alone, ggml_angles=True, ggml_inputs=quantized, round_to=getattr(torch, rounding) if rounding else None
    ).double().numpy()
    nxt = np.array([*probe.tokens[1:], -1])
    nxt[probe.near - 1] = -1
    margin = QUANT_NOISE_MARGIN if quantized else NOISE_MARGIN
    out = {}
    for name, mask in regions.items():
        stats = region_stats(planned[mask], emulated[mask], nxt[mask])
        out[name] = ({k: stats[k] for k in ("kl_mean", "kl_max", "kl_p99", "top1_agreement")}, margin)
    return out


def logit_bounds(weight_type: str, against_base: bool) -> tuple[Bound, ...]:
    rung = next((i for i, (name, _) in enumerate(LADDER) if name == weight_type), len(LADDER) - 1)
    if against_base and weight_type not in ("F32", "F16"):
        rung = min(rung + 1, len(LADDER) - 1)
    return LADDER[rung][1]


def keys_check(s: Subject) -> Check:
    """What llama.cpp builds from the file's rope keys equals the plan."""
    keys = s.gguf["keys"]
    got_block = keys.block(s.view.head_dim)
    try:
        got = rope.compute(got_block.spec(s.view.head_dim or s.dim, keys.context_length), precision="float32")
    except ValueError as exc:  # e.g. a rope_freqs.weight of the wrong length or with zeros
        return Check("llama.cpp rope from the GGUF keys", "failed", {"llama_cpp_reads": got_block.to_dict()}, reason=f"llama.cpp cannot run this rope: {exc}")
    want = rope.compute(s.spec(), precision="float32")
    pairs = len(got.inv_freq) == len(want.inv_freq)
    diff = max((abs(a - b) / b for a, b in zip(got.inv_freq, want.inv_freq, strict=False)), default=0.0) if pairs else float("inf")
    measured = {
        "pairs_match": pairs,
        "inv_freq_max_rel_diff": diff,
        "attention_factor": got.attention_factor,
        "attention_factor_diff": abs(got.attention_factor - want.attention_factor),
        "llama_cpp_reads": got_block.to_dict(),
    }
    check = judge("llama.cpp rope from the GGUF keys", measured, (Bound("pairs_match", "==", True), Bound("inv_freq_max_rel_diff", "<=", 1e-6), Bound("attention_factor_diff", "<=", 1e-6)))
    if check.passed:
        return check
    return Check(check.name, "failed", measured, check.bounds, _key_cause(keys, got_block, s))


def _key_cause(keys: Any, got: Any, s: Subject) -> str:
    arch, want = keys.arch, s.block
    if got.freq_factors is not None:
        planned = rope.compute(s.spec(), precision="float64").inv_freq
        divisors = [b / p for b, p in zip(rope.base_inv_freq(got.theta, len(planned) * 2), planned, strict=True)]
        return (
            f"rope_freqs.weight divides the frequencies by {min(got.freq_factors):.4g} .. {max(got.freq_factors):.4g}, "
            f"the plan needs {min(divisors):.4g} .. {max(divisors):.4g}; fix: re-export with yarnconv export --gguf --gguf-rope freqs"
        )
    if keys.has_rope_freqs and not keys.applies_freqs:
        return f"the file has a rope_freqs.weight tensor llama.cpp's {arch} graph cannot use; fix: re-export with yarnconv export --gguf --gguf-rope keys"
    if want.rope_type == "yarn" and got.rope_type != "yarn":
        return f"the GGUF has no YaRN keys ({arch}.rope.scaling.type is {keys.scaling_type!r}): llama.cpp runs it with plain RoPE; fix: yarnconv extend FILE.gguf --scale {want.factor:g}"
    if want.factor != got.factor:
        return f"{arch}.rope.scaling.factor is {got.factor}, the plan's factor is {want.factor}"
    if (want.original_context or 0) != (got.original_context or 0):
        absent = " (absent: llama.cpp falls back to context_length)" if keys.original_context is None else ""
        return f"llama.cpp's original length is {got.original_context}{absent}, the plan's is {want.original_context}; fix: set {arch}.rope.scaling.original_context_length"
    if got.theta != want.theta:
        return f"{arch}.rope.freq_base is {got.theta:g}, the plan's theta is {want.theta:g}"
    diffs = differences(got, want)
    if diffs:
        return f"llama.cpp reads {'; '.join(diffs)} from the file's keys"
    return f"llama.cpp's attention magnitude or ramp from these keys differs from the plan ({arch}.rope.scaling.attn_factor {keys.attn_factor:g})"


def context_check(s: Subject) -> Check:
    """context_length is what llama.cpp and its servers size the context by (n_ctx 0 = train length)."""
    ctx = s.gguf["context_length"] or 0
    recorded = s.gguf.get("planned_context")
    if s.base is not None:
        want = s.max_position
    else:
        want = recorded or int(round((s.block.original_context or ctx) * (s.block.factor or 1.0)))
    measured = {"context_length": ctx, "planned_context": want}
    if ctx == want or (s.base is None and recorded is None and ctx >= want):
        return Check("GGUF context_length", "passed", measured)
    arch = s.gguf["arch"]
    return Check(
        "GGUF context_length",
        "failed",
        measured,
        reason=f"{arch}.context_length is {ctx}, the planned context is {want}: llama.cpp's default context (-c 0) and servers that cap at it stop at {ctx}; fix: yarnconv extend FILE.gguf with the plan",
    )


def qk_layout_check(s: Subject, gguf_weights: Any, base_weights: Any) -> Check:
    """Llama-family GGUFs hold Q/K rows paired for llama.cpp's rope; layer 0 against the base tells."""
    from yarnconv.verify.weights import pair_rows

    name = "model.layers.0.self_attn.q_proj.weight"
    heads = s.view.num_heads or 1
    want = base_weights.get(name)
    paired = gguf_weights.get(name)  # the reader undoes llama.cpp's pairing: HF order if converted right
    as_stored = pair_rows(paired, heads)  # the rows as they lie in the file
    scale = float(want.norm()) or 1.0
    measured = {"rel_err_as_llama_cpp_pairs": float((paired - want).norm()) / scale, "rel_err_as_hf_order": float((as_stored - want).norm()) / scale}
    if measured["rel_err_as_hf_order"] < measured["rel_err_as_llama_cpp_pairs"]:
        return Check("GGUF Q/K row layout", "failed", measured, reason="attn_q/attn_k rows are in HF order, not paired for llama.cpp's rope: the converter's Q/K permute was skipped; re-export with yarnconv export --gguf")
    return judge("GGUF Q/K row layout", measured, (Bound("rel_err_as_llama_cpp_pairs", "<=", 0.25),))

