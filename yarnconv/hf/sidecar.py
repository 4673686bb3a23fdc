"""``yarnconv_rope.safetensors``: the final inverse frequencies and magnitude, for runtimes that take buffers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from yarnconv import __version__, rope
from yarnconv.config import RopeBlock
from yarnconv.plan import ExtendPlan


def write_sidecar(path: Path, plan: ExtendPlan) -> dict[str, Any]:
    """Precomputed inverse frequencies + attention factor, for runtimes that take buffers.

    ``inv_freq`` is float32 and bit-identical to what transformers builds for the (full-attention)
    layers YaRN applies to; ``inv_freq_float64`` is the exact value; ``attention_scaling`` is the
    cos/sin multiplier. Models whose sliding layers keep their own base (Gemma 3) also get
    ``{layer_type}.inv_freq`` / ``{layer_type}.attention_scaling``, and the per-layer copies under
    the pre-4.36 transformers buffer names carry each layer's own frequencies.
    """
    import torch
    from safetensors.torch import save

    def buffers(block: RopeBlock) -> tuple[Any, Any, float]:
        spec = block.spec(plan.head_dim)
        exact, f32 = rope.compute(spec), rope.compute(spec, precision="float32")
        return torch.tensor(f32.inv_freq, dtype=torch.float32), torch.tensor(exact.inv_freq, dtype=torch.float64), exact.attention_factor

    inv, inv64, a = buffers(plan.after)
    tensors = {"inv_freq": inv, "inv_freq_float64": inv64, "attention_scaling": torch.tensor([a], dtype=torch.float32)}
    per_type = {}
    for lt, block in plan.layer_ropes.items():
        lt_inv, lt_inv64, lt_a = buffers(plan.after if lt == "full_attention" else block)
        per_type[lt] = lt_inv
        tensors[f"{lt}.inv_freq"], tensors[f"{lt}.inv_freq_float64"] = lt_inv, lt_inv64
        tensors[f"{lt}.attention_scaling"] = torch.tensor([lt_a], dtype=torch.float32)
    for i in range(plan.num_layers):
        lt = plan.layer_types[i] if i < len(plan.layer_types) else None
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = per_type.get(lt or "", inv).clone()
    spec = plan.after.spec(plan.head_dim)
    meta = {
        "format": "pt",
        "yarnconv_version": __version__,
        "rope": json.dumps(plan.after.to_dict(), sort_keys=True),
        "rotary_dim": str(spec.dim),
        "attention_factor": repr(a),
        "max_position_embeddings": str(plan.max_position_after),
    }
    if plan.layer_ropes:
        meta["layer_ropes"] = json.dumps({lt: b.to_dict() for lt, b in plan.layer_ropes.items()}, sort_keys=True)
    path.write_bytes(_stable_header(save(tensors, metadata=meta)))
    return meta


def _stable_header(data: bytes) -> bytes:
    """The same file with its ``__metadata__`` keys sorted: the safetensors library writes them in
    hash order, which changes from run to run, and equal inputs should give equal bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for the same content; keep the library's bytes if it ever does
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n :]
