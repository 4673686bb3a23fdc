"""A plain PyTorch decoder for the families yarnconv exports, used as the reference in ``verify``.

Llama / Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm): grouped-query attention,
RMSNorm, SwiGLU, tied or separate output embeddings; a partial rotary factor rotates the first
channels of each head (no transformers class of these families uses one, so that path is not yet
checked against a runtime). Its rotary embedding comes
from yarnconv's own YaRN math (:mod:`yarnconv.rope`), never from a runtime, so an engine that
misreads the config disagrees with it.

Memory stays bounded whatever the model size: the checkpoint is streamed layer by layer from the
memory-mapped safetensors files (one layer's weights in float32 at a time, freed before the
next), the embedding is read row by row for the tokens in use, attention runs over query chunks,
and the output projection over vocabulary chunks. Token positions are explicit, so short probes
can sit at large position ids (long rope distances without long sequences).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from yarnconv import rope
from yarnconv.config import ConfigView, read_config
from yarnconv.errors import YarnconvError
from yarnconv.storage.files import CONFIG, read_json
from yarnconv.verify.weights import Weights, gguf_source

FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}
QUERY_CHUNK = 256  # attention rows per step: the score matrix is heads x chunk x keys
VOCAB_CHUNK = 4096  # output-projection rows per step


@dataclass(frozen=True)
class Shape:
    """What the forward needs from config.json (already resolved with the family's class defaults)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    rotary_dim: int
    eps: float
    tied: bool
    qk_norm: bool


def _shape(view: ConfigView) -> Shape:
    r = view.resolved
    if view.model_type not in FAMILIES:
        raise YarnconvError(
            f"the reference forward runs llama, mistral, qwen2 and qwen3 models, not {view.model_type!r}",
            "verify checks its rope tables in transformers only (yarnconv verify DIR)",
        )
    if not (view.num_layers and view.hidden_size and view.num_heads and view.head_dim and view.rotary_dim):
        raise YarnconvError("config.json lacks the layer count, hidden size or head counts", "is this a decoder-only model config?")
    return Shape(
        layers=view.num_layers,
        hidden=view.hidden_size,
        heads=view.num_heads,
        kv_heads=view.num_kv_heads or view.num_heads,
        head_dim=view.head_dim,
        rotary_dim=view.rotary_dim,
        eps=float(r.get("rms_norm_eps") or 1e-6),
        tied=bool(r.get("tie_word_embeddings", False)),
        qk_norm=view.model_type == "qwen3",
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotary_tables(spec: rope.RopeSpec, positions: torch.Tensor, *, ggml_angles: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin per position for the rotated channels, magnitude included.

    The inverse frequencies are yarnconv's float32 values, and angles are formed in float32 as
    transformers forms them, so a runtime that reads the plan agrees to float32 rounding. With
    ``ggml_angles`` they are formed as ggml forms them (ggml-cpu's rope cache: the position times
    theta_scale, multiplied pair after pair in float32, then scaled to the plan's frequency), whose
    rounding grows with the position: llama.cpp's own noise at long range.
    """
    result = rope.compute(spec, precision="float32")
    inv = torch.tensor(result.inv_freq, dtype=torch.float32)
    if ggml_angles:
        scale = torch.tensor(spec.base, dtype=torch.float32) ** torch.tensor(-2.0 / spec.dim, dtype=torch.float32)
        extrap, theta, unit, one = [], positions.float(), [], torch.tensor(1.0)
        for _ in range(len(inv)):
            extrap.append(theta)
            unit.append(one)
            theta, one = theta * scale, one * scale
        angles = torch.stack(extrap, dim=1) * (inv / torch.stack(unit))[None, :]
    else:
        angles = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos() * result.attention_factor, emb.sin() * result.attention_factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of each head by pairs (i, i + d/2), as HF checkpoints lay them out."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    half = d // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, alone: Sequence[int] = ()) -> torch.Tensor:
    """Causal attention by position id (a key is visible when its position is not after the query's),
    over query chunks; the tokens at indices ``alone`` see only themselves (a sequence's first token
    in llama.cpp's gapped probe). q: [heads, T, d]; k, v: [kv_heads, T, d]."""
    groups = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
    scale = q.shape[-1] ** -0.5
    out = torch.empty_like(q[..., : v.shape[-1]])
    rising = bool((positions[1:] > positions[:-1]).all())  # then no key after a chunk is visible to it
    for start in range(0, q.shape[1], QUERY_CHUNK):
        end = min(q.shape[1], start + QUERY_CHUNK)
        keys = end if rising else k.shape[1]
        scores = torch.matmul(q[:, start:end], k[:, :keys].transpose(1, 2)) * scale
        hidden = positions[None, :keys] > positions[start:end, None]
        for i in alone:
            if start <= i < end:
                hidden[i - start] = True
                hidden[i - start, i] = False
        scores.masked_fill_(hidden[None], float("-inf"))
        out[:, start:end] = torch.matmul(torch.softmax(scores, dim=-1), v[:, :keys])
    return out


class ReferenceModel:
    """The reference decoder over an HF checkpoint directory or a GGUF file (weights streamed per layer)."""

    def __init__(self, source: str | os.PathLike[str], config: dict[str, Any] | None = None, spec: rope.RopeSpec | None = None) -> None:
        """``spec`` replaces the config's own rope (verify runs the plan, and plain RoPE, on the same weights)."""
        self.root = Path(source)
        if self.root.suffix == ".gguf" and self.root.is_file():
            own, self.weights, _ = gguf_source(self.root)
        else:
            own, self.weights = None, Weights(self.root)
        self.view = read_config(config if config is not None else own if own is not None else read_json(self.root / CONFIG, CONFIG))
        self.shape = _shape(self.view)
        blocks = list(self.view.layer_ropes.values())
        if any(b != blocks[0] for b in blocks):
            raise YarnconvError("the reference forward has one rope for all layers; this model has one per layer type", "verify it with the runtimes")
        self.spec = spec or self.view.rope.spec(self.view.rope_head_dim or self.shape.head_dim, self.view.max_position)

    @torch.inference_mode()
    def logits(
        self,
        tokens: list[int],
        positions: list[int] | None = None,
        *,
        keep: int | Sequence[int] = 0,
        spec: rope.RopeSpec | None = None,
        alone: Sequence[int] = (),
        round_to: torch.dtype | None = None,
        ggml_angles: bool = False,
        ggml_inputs: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """[T, vocab] float32 logits for ``tokens`` at ``positions`` (default 0..T-1); with ``keep``,
        only the last ``keep`` rows, or the rows at those indices (long sequences: the output projection
        dominates memory);
        ``spec`` runs another rope on the same weights for this call (the plan, plain RoPE);
        ``alone``: token indices that attend only to themselves; ``round_to`` (bfloat16, float16)
        rounds every activation a runtime stores in that type, while computing in float32: the
        size of the half-precision noise this model has, which sets verify's bounds for an engine
        that runs it in half precision; ``ggml_angles``: rope angles rounded as ggml rounds them;
        ``ggml_inputs``: each matmul's input converted as ggml converts it for that weight's type
        (8-bit blocks for quantized weights, the largest noise a quantized GGUF has in llama.cpp);
        ``dtype=torch.float64`` computes the same function (float32 weights and rope tables) in double
        precision: how far float32 arithmetic alone moves this model's logits, the noise floor an
        engine computing in float32 is judged against."""
        self._round = (lambda t: t.to(round_to).float()) if round_to is not None else (lambda t: t)
        self._inputs = ggml_inputs
        s, w, r = self.shape, self.weights, self._round
        ids = torch.tensor(tokens, dtype=torch.long)
        pos = torch.tensor(positions if positions is not None else range(len(tokens)), dtype=torch.long)
        if pos.shape != ids.shape:
            raise YarnconvError("positions and tokens differ in length", "pass one position per token")
        cos, sin = rotary_tables(spec or self.spec, pos, ggml_angles=ggml_angles)
        cos, sin = r(cos).to(dtype), r(sin).to(dtype)
        x = r(w.rows("model.embed_tokens.weight", ids)).to(dtype)
        for i in range(s.layers):
            x = self._layer(i, x, cos, sin, pos, alone)
        x = r(rms_norm(_kept(x, keep), w.get("model.norm.weight"), s.eps))
        head = "lm_head.weight" if "lm_head.weight" in w and not s.tied else "model.embed_tokens.weight"
        out = torch.empty(len(x), w.shape(head)[0], dtype=dtype)
        start, x = 0, self._input(x, head)
        for rows in w.row_chunks(head, VOCAB_CHUNK):
            out[:, start : start + len(rows)] = r(x @ rows.to(dtype).T)
            start += len(rows)
        return out

    def _layer(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, alone: Sequence[int]) -> torch.Tensor:
        s, w, p, r = self.shape, self.weights, f"model.layers.{i}.", self._round
        h = r(rms_norm(x, w.get(p + "input_layernorm.weight"), s.eps))

        def proj(name: str, heads: int) -> torch.Tensor:
            out = self._matmul(h, p + f"self_attn.{name}.weight")
            if p + f"self_attn.{name}.bias" in w:
                out = r(out + w.get(p + f"self_attn.{name}.bias"))
            return out.view(len(h), heads, s.head_dim).transpose(0, 1)

        q, k, v = proj("q_proj", s.heads), proj("k_proj", s.kv_heads), proj("v_proj", s.kv_heads)
        if s.qk_norm:
            q = r(rms_norm(q, w.get(p + "self_attn.q_norm.weight"), s.eps))
            k = r(rms_norm(k, w.get(p + "self_attn.k_norm.weight"), s.eps))
        q, k = r(apply_rotary(q, cos, sin)), r(apply_rotary(k, cos, sin))
        a = r(attention(q, k, v, pos, alone)).transpose(0, 1).reshape(len(h), s.heads * s.head_dim)
        x = r(x + self._matmul(a, p + "self_attn.o_proj.weight"))
        h = r(rms_norm(x, w.get(p + "post_attention_layernorm.weight"), s.eps))
        gate, up = self._matmul(h, p + "mlp.gate_proj.weight"), self._matmul(h, p + "mlp.up_proj.weight")
        return r(x + self._matmul(r(torch.nn.functional.silu(gate) * up), p + "mlp.down_proj.weight"))

    def _matmul(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self._round(self._input(x, name) @ self.weights.get(name).to(x.dtype).T)

    def _input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return ggml_input(x, self.weights.activation_format(name)) if self._inputs else x


def _kept(x: torch.Tensor, keep: int | Sequence[int]) -> torch.Tensor:
    if isinstance(keep, int):
        return x[-keep:] if keep else x
    return x[torch.tensor(list(keep), dtype=torch.long)]


def ggml_input(x: torch.Tensor, fmt: str | None) -> torch.Tensor:
    """``x`` as ggml-cpu hands it to a matmul, back in float32: rounded to f16/bf16, or quantized to
    8 bits per block of 32 (Q8_0: scale amax/127, stored in f16) or 256 (Q8_K: float32 scale)."""
    if fmt in ("F16", "BF16"):
        return x.to(torch.float16 if fmt == "F16" else torch.bfloat16).float()
    block = {"Q8_0": 32, "Q8_K": 256}.get(fmt or "")
    if block is None or x.shape[-1] % block:
        return x
    blocks = x.reshape(-1, block)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    q = torch.round(blocks / torch.where(scale > 0, scale, 1.0))
    stored = scale.half().float() if fmt == "Q8_0" else scale
    return (q * stored).reshape(x.shape)
