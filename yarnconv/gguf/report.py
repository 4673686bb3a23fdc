"""``inspect`` for GGUF files: architecture, context, rope keys and what llama.cpp will do with them."""

from __future__ import annotations

import os
from typing import Any

from yarnconv.gguf.file import PAD_KEY, read_header
from yarnconv.gguf.llama_rope import effective, read_rope


def inspect_gguf(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a GGUF file: architecture, context, rope keys and what llama.cpp will do with them."""
    h = read_header(path)
    arch = h.arch or "?"
    rope_keys = {k: h.get(k) for k in h.order if k.startswith(f"{arch}.rope") or k == f"{arch}.context_length"}
    types: dict[str, int] = {}
    for t in h.tensors:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    r = read_rope(h)
    no, count = h.split
    return {
        "path": str(h.path),
        "format": "gguf",
        "gguf_version": h.version,
        "architecture": arch,
        "name": h.get("general.name"),
        "size_label": h.get("general.size_label"),
        "file_type": h.get("general.file_type"),
        "context_length": h.get(f"{arch}.context_length"),
        "rope_keys": rope_keys,
        "llama_cpp": effective(r),
        "rope_block": r.block().to_dict(),
        "yarnconv_plan": r.recorded,  # the rope and context yarnconv planned for this file (verify checks against it)
        "tokenizer": {"model": h.get("tokenizer.ggml.model"), "pre": h.get("tokenizer.ggml.pre")},
        "tensors": len(h.tensors),
        "tensor_types": types,
        "split": {"no": no + 1, "count": count} if count > 1 else None,
        "header_bytes": h.data_offset,
        "spare_header_bytes": h.slack,
        "yarnconv_reserve": PAD_KEY in h.kvs,
        "size_on_disk": h.size,
    }
