"""Write safetensors files tensor by tensor, casting rows in chunks, so memory stays near one chunk.

safetensors' own ``save_file`` needs every tensor in memory at once; the format is simple enough
to stream: an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of
each tensor, plus ``__metadata__``) padded with spaces to 8 bytes, then the tensors' bytes in
header order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from yarnconv.storage.weights import TensorInfo

TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
CHUNK_BYTES = 64 * 1024 * 1024  # source bytes per chunk


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its source and the dtype it gets (the source's own when not cast)."""

    name: str
    src: TensorInfo
    dtype: str

    @property
    def nbytes(self) -> int:
        if self.dtype == self.src.dtype:
            return self.src.nbytes
        return self.src.numel * WIDTH[self.dtype]


def header(tensors: list[OutTensor], metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        entries[t.name] = {"dtype": t.dtype, "shape": list(t.src.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_file(path: Path, tensors: list[OutTensor], metadata: dict[str, str], bar: Any) -> None:
    """Stream ``tensors`` into a new safetensors file at ``path``."""
    fds: dict[Path, int] = {}
    try:
        with open(path, "wb") as out:
            out.write(header(tensors, metadata))
            for t in tensors:
                assert t.src.path is not None
                fd = fds.get(t.src.path) or fds.setdefault(t.src.path, os.open(t.src.path, os.O_RDONLY))
                _copy(t, fd, out, bar)
    finally:
        for fd in fds.values():
            os.close(fd)


def _copy(t: OutTensor, fd: int, out: Any, bar: Any) -> None:
    src = t.src
    rows = src.shape[0] if src.shape else 1
    row_bytes = src.nbytes // max(rows, 1)
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for first in range(0, rows, step):
        count = min(step, rows - first)
        raw = os.pread(fd, count * row_bytes, src.offset + first * row_bytes)
        if t.dtype != src.dtype:  # exactly what tensor.to(dtype) gives
            cast = torch.frombuffer(bytearray(raw), dtype=TORCH[src.dtype]).to(TORCH[t.dtype])
            raw = cast.view(torch.uint8).numpy().tobytes()
        out.write(raw)
        bar.update(count * row_bytes)
