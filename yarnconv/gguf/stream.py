"""Stream one planned GGUF through gguf-py's public writer API, one row-chunk at a time.

Each tensor is handed to ``GGUFWriter.add_tensor`` as an array-like whose ``tofile`` reads,
re-pairs and encodes its rows in chunks (the way llama.cpp's converter hands over lazy tensors).
Encoding in chunks gives the same bytes, because every output type is per-element or
per-32-element block within a row, and keeps peak memory near one chunk whatever the tensor size.
Inputs are read with ``pread`` so nothing stays mapped (or counted in RSS) after a chunk is written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, QuantError, quant_shape_to_byte_shape, quants

from yarnconv import __version__
from yarnconv.gguf.export_plan import _ST_DTYPES, ExportPlan, OutTensor, Q
from yarnconv.gguf.file import PAD_KEY, RESERVE, read_header
from yarnconv.gguf.keys import check_written_keys
from yarnconv.storage.progress import progress_bar
from yarnconv.storage.weights import TensorInfo

CHUNK_BYTES = 32 * 1024 * 1024  # f32 working set per chunk


def _read_rows(t: TensorInfo, fd: int, row0: int, row1: int, *, raw: bool = False) -> np.ndarray:
    """Rows [row0, row1) of a tensor as f16 or f32 (the converter's working dtypes), or with ``raw``
    as stored (bf16 as uint16 bits)."""
    cols = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    np_dtype = _ST_DTYPES[t.dtype]
    width = np.dtype(np_dtype).itemsize
    start = t.offset + row0 * cols * width
    data = os.pread(fd, (row1 - row0) * cols * width, start)
    arr = np.frombuffer(data, dtype=np_dtype)
    if raw:
        pass
    elif t.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif t.dtype == "F64":
        arr = arr.astype(np.float32)
    rows_shape = (row1 - row0, *t.shape[1:]) if len(t.shape) > 1 else (row1 - row0,)
    return arr.reshape(rows_shape)


def _repair(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Llama Q/K: GGUF row 2j+a of each head is HF row a*(d/2)+j (docs/gguf.md §5)."""
    n = rows.shape[0] // head_dim
    return rows.reshape(n, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


# source dtype -> the GGUF type that stores it unchanged: such tensors are copied, not re-encoded
SAME = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}


def _quiet_nans(bits: np.ndarray) -> np.ndarray:
    """bf16 bits as gguf-py's BF16 encoder leaves them: a signalling NaN gets its quiet bit, all else
    is unchanged (bf16 -> f32 -> bf16 rounds nothing)."""
    magnitude = bits & np.uint16(0x7FFF)
    if bits.size == 0 or magnitude.max() <= 0x7F80:  # no NaN at all: the common case, one pass
        return bits
    return np.where(magnitude > 0x7F80, bits | np.uint16(0x0040), bits)


@functools.cache
def _bf16_f16_table() -> np.ndarray:
    """numpy's f16 for every bf16 bit pattern (bf16 -> f32 is exact, f32 -> f16 rounds to nearest even)."""
    with np.errstate(over="ignore"):  # bf16 beyond f16's range becomes inf, as in the converter
        return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32).astype(np.float16)


def _bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    """bf16 bits -> f16 with numpy's bytes (NaN payloads too), by table: one gather instead of a
    shift and a conversion through f32, which at 7B was the F16 write's CPU time (docs/gguf.md §8)."""
    return _bf16_f16_table()[bits]


def _encode(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    try:
        return quants.quantize(rows, qtype)
    except QuantError as exc:  # planned types avoid this; keep the converter's behaviour if it happens
        raise AssertionError(f"yarnconv bug: {exc}") from None


def _chunks(t: OutTensor) -> list[tuple[int, int]]:
    assert t.src is not None
    rows = t.src.shape[0] if t.src.shape else 1
    row_bytes = 4 * (int(np.prod(t.src.shape[1:])) if len(t.src.shape) > 1 else 1)
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if t.heads:
        head_dim = rows // t.heads
        step = max(head_dim, step // head_dim * head_dim)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


class StreamedTensor:
    """What ``GGUFWriter.add_tensor`` needs of an array (dtype, shape, nbytes, tofile), with the
    data produced chunk by chunk from the source file when the writer asks for it."""

    def __init__(self, t: OutTensor, bar: Any) -> None:
        self.t, self.bar = t, bar
        self.dtype = np.dtype({Q.F32: np.float32, Q.F16: np.float16}.get(t.qtype, np.uint8))
        self.shape = quant_shape_to_byte_shape(t.shape, t.qtype) if self.dtype == np.uint8 else t.shape
        self.nbytes = t.nbytes

    def tofile(self, fout: Any) -> None:
        t, written = self.t, 0
        if t.data is not None:
            data = _encode(t.data, t.qtype)
            fout.write(data.tobytes())
            written = data.nbytes
        else:
            assert t.src is not None and t.src.path is not None
            fd = os.open(t.src.path, os.O_RDONLY)
            try:
                same = SAME.get(t.src.dtype) == t.qtype
                halve = t.src.dtype == "BF16" and t.qtype == Q.F16
                for r0, r1 in _chunks(t):
                    rows = _read_rows(t.src, fd, r0, r1, raw=same or halve)
                    if t.heads:
                        rows = _repair(rows, t.src.shape[0] // t.heads)
                    if halve:
                        data = _bf16_to_f16(rows)
                    else:
                        data = (_quiet_nans(rows) if t.src.dtype == "BF16" else rows) if same else _encode(rows, t.qtype)
                    fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))  # no copy
                    written += data.nbytes
                    self.bar.update((r1 - r0) * (t.src.nbytes // max(t.src.shape[0] if t.src.shape else 1, 1)))
            finally:
                os.close(fd)
        if written != t.nbytes:
            raise AssertionError(f"yarnconv bug: {t.name} wrote {written} bytes, planned {t.nbytes}")


def writer_for(plan: ExportPlan, bar: Any) -> GGUFWriter:
    """A gguf-py writer holding the plan's metadata and (streamed) tensors; no file is opened."""
    w = GGUFWriter(None, plan.arch, split_max_size=plan.split_max_size)
    for key, value in [*plan.general.items(), *plan.hparams.items()]:
        getattr(w, f"add_{key}")(value)
    for k, (vtype, value) in plan.keys.sets.items():
        w.add_key_value(k, value, GGUFValueType(int(vtype)))
    if plan.vocab is not None:
        plan.vocab.add_to(w)
    w.add_string("yarnconv.version", __version__)
    w.add_string(PAD_KEY, " " * RESERVE)  # spare header room: later YaRN edits fit in place
    for t in plan.tensors:
        stream = StreamedTensor(t, bar)
        w.add_tensor(t.name, stream, raw_shape=stream.shape, raw_dtype=t.qtype)  # type: ignore[arg-type]
    return w


def write_plan(plan: ExportPlan, base: Path, progress: bool) -> None:
    """One planned GGUF (or split set) written under ``base``'s name, then read back."""
    try:
        _write_unchecked(plan, base, progress)
    except OSError as exc:
        if exc.filename is None:  # gguf-py's writes do not say which file; the disk-full line should
            exc.filename = str(base)
        raise
    names = [p.name for p in plan.outputs] or [base.name]
    for n in names:
        read_header(base.parent / n)  # re-read what was written before it gets its final name
    check_written_keys(read_header(base.parent / names[0]), plan.keys)


def _write_unchecked(plan: ExportPlan, base: Path, progress: bool) -> None:
    with progress_bar(sum(t.src.nbytes for t in plan.tensors if t.src), progress, "export") as bar:
        w = writer_for(plan, bar)
        if [p.name for p in w.format_shard_names(base)] != [p.name for p in plan.outputs] and plan.outputs:
            raise AssertionError("yarnconv bug: gguf-py would split the file differently from the plan")
        w.write_header_to_file(base)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
