"""Write safetensors files tensor by tensor, casting in chunks, so memory stays near a few chunks.

safetensors' own ``save_file`` needs every tensor in memory at once; the format is simple enough
to stream: an 8-byte little-endian header length, a JSON header (dtype, shape and byte range of
each tensor, plus ``__metadata__``) padded with spaces to 8 bytes, then the tensors' bytes in
header order.

The copy runs as a three-stage pipeline so disk and CPU work overlap: one thread reads the next
chunk into one of two fixed buffers, the caller's thread casts with torch into one of two output
buffers (``copy_``, the kernel ``tensor.to`` uses), and one thread writes with ``pwrite``. Tensors
that keep their dtype are copied by the kernel (``copy_file_range``), as ``cp`` does.
"""

from __future__ import annotations

import errno
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.storage.weights import TensorInfo

WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # the float dtypes a cast applies to
CHUNK_BYTES = 32 * 1024 * 1024  # source bytes per chunk


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


@dataclass(frozen=True)
class _Piece:
    """A byte range of one tensor: read here, (cast,) written there."""

    path: Path
    src_off: int
    size: int
    dst_off: int
    src_dtype: str
    dst_dtype: str

    @property
    def cast(self) -> bool:
        return self.src_dtype != self.dst_dtype


def header(tensors: list[OutTensor], metadata: dict[str, str]) -> bytes:
    entries: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        entries[t.name] = {"dtype": t.dtype, "shape": list(t.src.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _pieces(tensors: list[OutTensor], start: int) -> list[_Piece]:
    pieces, dst = [], start
    for t in tensors:
        assert t.src.path is not None
        width = WIDTH.get(t.src.dtype, 1)
        step = CHUNK_BYTES // width * width
        for off in range(0, t.src.nbytes, step):
            size = min(step, t.src.nbytes - off)
            pieces.append(_Piece(t.src.path, t.src.offset + off, size, dst + off // width * WIDTH.get(t.dtype, width), t.src.dtype, t.dtype))
        dst += t.nbytes
    return pieces


def write_file(path: Path, tensors: list[OutTensor], metadata: dict[str, str], bar: Any) -> None:
    """Stream ``tensors`` into a new safetensors file at ``path``."""
    head = header(tensors, metadata)
    pieces = _pieces(tensors, len(head))
    casts = [p for p in pieces if p.cast]
    grow = max((WIDTH[p.dst_dtype] / WIDTH[p.src_dtype] for p in casts), default=1.0)
    inbuf = [bytearray(CHUNK_BYTES) for _ in range(2)] if casts else []
    outbuf = [bytearray(int(CHUNK_BYTES * grow)) for _ in range(2)] if casts else []
    fds: dict[Path, int] = {}
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for p in pieces:
            if p.path not in fds:
                fds[p.path] = os.open(p.path, os.O_RDONLY)
        _pwrite(out, memoryview(head), 0)
        with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
            reads: dict[int, Future] = {}

            def prefetch(c: int) -> None:
                if c < len(casts):
                    p = casts[c]
                    reads[c] = reader.submit(_pread, fds[p.path], memoryview(inbuf[c % 2])[: p.size], p.src_off)

            prefetch(0)
            writes: list[Future] = []
            last: list[Future | None] = [None, None]  # the write still using each output buffer
            c = 0
            for p in pieces:
                if p.cast:
                    data = reads.pop(c).result()
                    prefetch(c + 1)
                    if last[c % 2] is not None:
                        last[c % 2].result()  # type: ignore[union-attr]
                    cast = _cast(data, p, outbuf[c % 2])
                    last[c % 2] = writer.submit(_pwrite, out, cast, p.dst_off)
                    writes.append(last[c % 2])  # type: ignore[arg-type]
                    c += 1
                else:
                    writes.append(writer.submit(_copy_range, fds[p.path], out, p.size, p.src_off, p.dst_off))
                bar.update(p.size)
            for w in writes:
                w.result()
    except OSError as exc:
        if exc.filename is None:  # pwrite does not say which file; the disk-full line should
            exc.filename = str(path)
        raise
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


def _cast(data: memoryview, p: _Piece, into: bytearray) -> memoryview:
    """``data`` cast from ``p.src_dtype`` to ``p.dst_dtype`` exactly as ``tensor.to(dtype)`` casts it."""
    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    src = torch.frombuffer(data, dtype=dtypes[p.src_dtype])
    dst = torch.frombuffer(into, dtype=dtypes[p.dst_dtype], count=src.numel())
    dst.copy_(src)
    return memoryview(into)[: src.numel() * WIDTH[p.dst_dtype]]


def _pread(fd: int, into: memoryview, offset: int) -> memoryview:
    got = 0
    while got < len(into):
        n = os.preadv(fd, [into[got:]], offset + got)
        if n == 0:
            raise YarnconvError("a weight file ended before its header said it would", "re-download the checkpoint")
        got += n
    return into


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _copy_range(src: int, dst: int, size: int, src_off: int, dst_off: int) -> None:
    """Kernel-side copy (as ``cp`` does); plain reads and writes where the filesystem refuses it."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, src_off + done, dst_off + done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < size:
        chunk = _pread(src, memoryview(bytearray(min(CHUNK_BYTES, size - done))), src_off + done)
        _pwrite(dst, chunk, dst_off + done)
        done += len(chunk)
