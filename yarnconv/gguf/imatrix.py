"""Importance matrices (``--imatrix``) for llama.cpp's quantizer, read the way ``llama-quantize`` reads them.

An imatrix holds, for each weight matrix, the mean squared input activation of every column,
measured by ``llama-imatrix`` on sample text. The quantizer spends its precision where those values
are large. Two file formats exist: the GGUF one (``X.in_sum2`` and ``X.counts`` tensors, with
``imatrix.*`` keys) and the legacy ``.dat`` one (per entry: name, call count, summed values). Both
become per-column values here exactly as ``llama-quantize`` computes them (sums divided by counts,
in float32), so the quantized tensors match the tool's byte for byte.

A matrix computed on another model is the common mistake, and llama.cpp only partly catches it:
names that match nothing are skipped with a log line. :func:`check_fits` refuses such files before
anything is written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yarnconv.errors import YarnconvError

FIX = "compute it on this model: llama-imatrix -m MODEL-F16.gguf -f text.txt -o imatrix.gguf"


@dataclass(frozen=True)
class Imatrix:
    """Per-column importance of each weight matrix, keyed by GGUF tensor name."""

    path: str  # as the user wrote it (llama-quantize stores it in quantize.imatrix.file)
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    legacy: bool = False


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF or legacy imatrix file; one-line errors for anything llama-quantize would reject."""
    p = Path(path)
    if not p.is_file():
        raise YarnconvError(f"--imatrix {path}: no such file", "pass the file llama-imatrix wrote")
    with open(p, "rb") as f:
        magic = f.read(4)
    try:
        im = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    except (ValueError, struct.error, IndexError, KeyError) as exc:
        raise YarnconvError(f"--imatrix {path} is not a readable importance matrix ({exc})", FIX) from None
    im = Imatrix(os.fspath(path), im.entries, im.datasets, im.chunks, im.legacy)
    if not im.entries:
        raise YarnconvError(f"--imatrix {path} holds no entries", FIX)
    for name, values in im.entries.items():
        if not np.isfinite(values).all():
            raise YarnconvError(f"--imatrix {path}: {name} holds non-finite values", FIX)
    return im


def _read_gguf(p: Path) -> Imatrix:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(p)
    if not reader.tensors:
        raise ValueError("no tensors")
    fields = reader.fields
    if not all(k in fields for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")):
        raise ValueError("missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)")
    ds = fields["imatrix.datasets"]
    datasets = [bytes(ds.parts[i]).decode() for i in ds.data] if ds.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.STRING] else []
    chunks = int(fields["imatrix.chunk_count"].parts[-1][0])
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != 0:  # GGML_TYPE_F32
                    raise ValueError(f"{t.name} is not F32")
                into[t.name.removesuffix(suffix)] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if set(sums) != set(counts):
        raise ValueError(f"sums and counts do not pair up for {sorted(set(sums) ^ set(counts))[0]}")
    entries = {}
    for name, s in sums.items():
        c = np.rint(counts[name]).astype(np.int64).astype(np.float32)  # std::lround, then float as llama-quantize
        per = s.reshape(len(c), -1)
        entries[name] = np.where(c[:, None] > 0, per / np.where(c > 0, c, 1)[:, None], np.float32(1)).astype(np.float32).reshape(-1)
    return Imatrix(str(p), entries, datasets, chunks)


def _read_legacy(p: Path) -> Imatrix:
    data = p.read_bytes()
    (n,), pos = struct.unpack_from("<i", data, 0), 4
    if n < 1:
        raise ValueError("no entries")
    entries = {}
    for _ in range(n):
        (length,) = struct.unpack_from("<i", data, pos)
        if not 0 < length <= 4096:
            raise ValueError(f"entry name length {length}")
        name = data[pos + 4 : pos + 4 + length].split(b"\0")[0].decode()
        ncall, nval = struct.unpack_from("<ii", data, pos + 4 + length)
        pos += 12 + length
        if nval < 1 or pos + 4 * nval > len(data):
            raise ValueError(f"entry {name} is cut short")
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=pos)
        pos += 4 * nval
        entries[name] = (sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else sums.astype(np.float32)
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = struct.unpack_from("<i", data, pos)
        if pos + 8 <= len(data):
            (length,) = struct.unpack_from("<i", data, pos + 4)
            if 0 < length <= len(data) - pos - 8:
                datasets = [data[pos + 8 : pos + 8 + length].decode(errors="replace")]
    return Imatrix(str(p), entries, datasets, chunks, legacy=True)


def check_fits(im: Imatrix, tensors: Iterable[tuple[str, tuple[int, ...]]], model: str) -> int:
    """Refuse an imatrix computed on another model; returns how many of ``model``'s matrices it covers.

    ``tensors`` are (GGUF name, numpy-order shape). llama.cpp wants ``ne[0] * ne[2]`` values per
    matrix (columns times experts); the token embedding is a row lookup, never measured."""
    covered = 0
    for name, shape in tensors:
        if len(shape) < 2 or name.startswith("token_embd") or name not in im.entries:
            continue
        want = shape[-1] * (shape[-3] if len(shape) >= 3 else 1)
        got = im.entries[name].size
        if got != want:
            raise YarnconvError(f"--imatrix {im.path} does not match {model}: {name} has {got} values, the tensor has {want} columns", FIX)
        covered += 1
    if not covered:
        some = ", ".join(sorted(im.entries)[:2])
        raise YarnconvError(f"--imatrix {im.path} does not match {model}: none of its {len(im.entries)} entries ({some}, ...) names one of its tensors", FIX)
    return covered
