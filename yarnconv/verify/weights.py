"""Where the reference forward reads its weights: safetensors checkpoints or GGUF files.

Both sources read one tensor (or a few rows of one) at a time as float32, through ``pread``
rather than a memory map, so the file's pages never count in this process's memory and peak RSS
stays about one layer. The GGUF source names tensors the HF way, dequantizes each with gguf-py,
and undoes the Q/K row pairing llama.cpp's converter applies to Llama-family files, so one
forward serves both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yarnconv.errors import YarnconvError
from yarnconv.gguf.file import GGUFHeader, read_header, shard_paths
from yarnconv.gguf.llama_rope import pseudo_config, read_rope
from yarnconv.storage.weights import scan_weights

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# llama.cpp architectures the reference runs, as HF model types; "llama" files hold permuted Q/K.
GGUF_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    **{f"self_attn.{p}_proj.{kind}": f"attn_{p}.{kind}" for p in "qkv" for kind in ("weight", "bias")},
}


class _Files:
    """Open file descriptors, closed with the owner."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def pread(self, path: Path, n: int, offset: int) -> bytearray:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return bytearray(os.pread(self._fds[path], n, offset))

    def __del__(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


class Weights:
    """Tensors of a safetensors checkpoint, by HF name, read one at a time as float32."""

    def __init__(self, root: Path) -> None:
        self.tensors = scan_weights(root).tensors
        if not self.tensors:
            raise YarnconvError(f"no safetensors weights in {root}", "the reference forward reads model.safetensors or an index and shards")
        self._files = _Files()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def _read(self, name: str, first: int = 0, count: int | None = None) -> torch.Tensor:
        """Rows [first, first + count) of tensor ``name`` (all of it by default) as float32."""
        info = self.tensors.get(name)
        if info is None or info.path is None:
            raise YarnconvError(f"the checkpoint has no tensor {name}", "is it complete, and of a family the reference forward runs?")
        if info.dtype not in _DTYPES:
            raise YarnconvError(f"tensor {name} is {info.dtype}", "the reference forward reads F32, F16 and BF16 weights")
        rows = info.shape[0] if info.shape else 1
        row_bytes = info.nbytes // max(rows, 1)
        count = rows - first if count is None else count
        raw = self._files.pread(info.path, count * row_bytes, info.offset + first * row_bytes)
        flat = torch.frombuffer(raw, dtype=_DTYPES[info.dtype]) if raw else torch.empty(0, dtype=_DTYPES[info.dtype])
        return flat.float().reshape(count, *info.shape[1:]) if info.shape else flat.float().reshape(())

    def get(self, name: str) -> torch.Tensor:
        return self._read(name)

    def activation_format(self, name: str) -> str | None:
        """What a runtime's matmul with this tensor turns its float32 input into first: safetensors
        weights are run in float by the engines yarnconv compares against."""
        return None

    def rows(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Selected rows of a 2-D tensor (the embedding rows of the tokens in use)."""
        unique, inverse = torch.unique(index, return_inverse=True)
        picked = torch.stack([self._read(name, int(i), 1)[0] for i in unique])
        return picked[inverse]

    def row_chunks(self, name: str, chunk: int) -> Iterator[torch.Tensor]:
        n = self.shape(name)[0]
        for start in range(0, n, chunk):
            yield self._read(name, start, min(chunk, n - start))


@dataclass(frozen=True)
class _GGUFTensor:
    path: Path
    offset: int  # absolute
    shape: tuple[int, ...]  # numpy order
    ggml_type: int
    nbytes: int


class GGUFWeights(Weights):
    """Tensors of a GGUF file (or split set) under their HF names, dequantized to float32 per read."""

    def __init__(self, headers: list[GGUFHeader], arch: str, heads: int, kv_heads: int) -> None:
        by_gguf = {t.name: _GGUFTensor(h.path, h.data_offset + t.offset, t.shape, t.ggml_type, t.nbytes) for h in headers for t in h.tensors}
        self.entries: dict[str, _GGUFTensor] = {}
        for hf, gg in _GGUF_NAMES.items():
            if gg in by_gguf:
                self.entries[hf] = by_gguf[gg]
        layer = 0
        while f"blk.{layer}.attn_norm.weight" in by_gguf:
            for hf, gg in _GGUF_LAYER.items():
                if f"blk.{layer}.{gg}" in by_gguf:
                    self.entries[f"model.layers.{layer}.{hf}"] = by_gguf[f"blk.{layer}.{gg}"]
            layer += 1
        self.tensors = self.entries  # type: ignore[assignment]  # membership and shape, as Weights offers
        self._unpair = {"q_proj": heads, "k_proj": kv_heads} if arch == "llama" else {}
        self._files = _Files()

    def _read(self, name: str, first: int = 0, count: int | None = None) -> torch.Tensor:
        from gguf import GGMLQuantizationType, quants

        t = self.entries.get(name)
        if t is None:
            raise YarnconvError(f"the GGUF has no tensor for {name}", "is it complete, and of a family the reference forward runs?")
        rows = t.shape[0] if len(t.shape) > 1 else 1
        row_bytes = t.nbytes // rows
        count = rows - first if count is None else count
        raw = np.frombuffer(self._files.pread(t.path, count * row_bytes, t.offset + first * row_bytes), dtype=np.uint8)
        try:
            qtype = GGMLQuantizationType(t.ggml_type)
            values = quants.dequantize(raw.reshape(count, row_bytes), qtype)
        except (ValueError, NotImplementedError) as exc:
            raise YarnconvError(f"tensor {name} has a type gguf-py cannot dequantize ({exc})", "verify it against --base, or export another type") from None
        out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(count, *t.shape[1:]) if len(t.shape) > 1 else torch.from_numpy(values.astype(np.float32).reshape(-1))
        kind = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        if kind in self._unpair and first == 0 and count == rows:
            out = unpair_rows(out, self._unpair[kind])
        return out


    def activation_format(self, name: str) -> str | None:
        """ggml-cpu converts a matmul's input to its weight type's vec_dot_type (type_traits_cpu in
        ggml/src/ggml-cpu/ggml-cpu.c): f16/bf16 for those weights, 8-bit blocks of 32 (Q8_0, Q8_1)
        for the 32-wide quants, of 256 (Q8_K) for k-, i- and ternary quants."""
        from gguf import GGMLQuantizationType

        t = self.entries.get(name)
        kind = GGMLQuantizationType(t.ggml_type).name if t is not None else "F32"
        if kind in ("F32", "F64"):
            return None
        if kind in ("F16", "BF16"):
            return kind
        return "Q8_0" if kind in _Q8_0_INPUT else "Q8_K"


_Q8_0_INPUT = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "IQ4_NL", "MXFP4"}


def unpair_rows(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K layout: GGUF row 2j+a of each head is HF row a*(d/2)+j (docs/gguf.md §5)."""
    d = rows.shape[0] // heads
    return rows.reshape(heads, d // 2, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def pair_rows(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """HF Q/K rows into llama.cpp's pairs (what the converter writes)."""
    d = rows.shape[0] // heads
    return rows.reshape(heads, 2, d // 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def gguf_source(path: Path) -> tuple[dict[str, Any], GGUFWeights, list[GGUFHeader]]:
    """An HF-style config, HF-named weights and the shards' headers of a GGUF file the reference forward can run."""
    headers = [read_header(p) for p in shard_paths(path)]
    h = headers[0]
    arch = h.arch or "?"
    if arch not in GGUF_FAMILIES:
        raise YarnconvError(
            f"the reference forward runs GGUF files of architecture llama, qwen2 and qwen3, not {arch!r}",
            "verify this file against its HF checkpoint with --base, or in llama.cpp alone",
        )
    names = {t.name for hh in headers for t in hh.tensors}

    def get(name: str, default: Any = None) -> Any:
        return h.get(f"{arch}.{name}", default)

    heads, layers, hidden = get("attention.head_count"), get("block_count"), get("embedding_length")
    if not (isinstance(heads, int) and isinstance(layers, int) and isinstance(hidden, int)):
        raise YarnconvError(f"{path.name} lacks {arch}.attention.head_count, block_count or embedding_length", "re-convert it with llama.cpp's converter or yarnconv export")
    head_dim = get("attention.key_length") or hidden // heads
    keys = read_rope(headers)
    config = pseudo_config(keys, layers, head_dim)
    if keys.dim and keys.dim != head_dim:  # rope.dimension_count: the rotated channels of each head
        config["partial_rotary_factor"] = keys.dim / head_dim
    embd = next((t for hh in headers for t in hh.tensors if t.name == "token_embd.weight"), None)
    config.update(
        model_type=GGUF_FAMILIES[arch],
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv") or heads,
        head_dim=head_dim,
        intermediate_size=get("feed_forward_length"),
        rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-6),
        vocab_size=embd.shape[0] if embd else None,
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=h.get("tokenizer.ggml.bos_token_id"),
    )
    return config, GGUFWeights(headers, arch, heads, config["num_key_value_heads"]), headers
