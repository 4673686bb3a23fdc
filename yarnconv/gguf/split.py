"""Split a finished GGUF file into llama.cpp's ``NAME-0000i-of-0000N.gguf`` shards, the tensor bytes
copied by the kernel. llama.cpp's quantizer writes one file; ``export --outtype q4_k_m
--split-max-size 2G`` splits it afterwards, the way gguf-py's writer (and so llama.cpp's converter)
splits: a new shard when the next tensor would pass the limit. The first shard keeps every
key of the input (YaRN keys and spare header room included) plus ``split.*``; the others hold only
``split.*`` and their tensors, as llama.cpp's loader expects.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from yarnconv.gguf.encode import encode_kv
from yarnconv.gguf.export_plan import shard_groups, shard_names
from yarnconv.gguf.file import MAGIC, GGUFHeader, GGUFValueType, TensorEntry, read_header
from yarnconv.gguf.patch import copy_range

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _infos(tensors: list[TensorEntry], alignment: int) -> tuple[bytes, list[int]]:
    """Tensor infos for one shard, offsets relative to its data section, and those offsets."""
    parts, offsets, offset = [], [], 0
    for t in tensors:
        name = t.name.encode()
        parts.append(struct.pack("<Q", len(name)) + name + struct.pack(f"<I{len(t.dims)}QIQ", len(t.dims), *t.dims, t.ggml_type, offset))
        offsets.append(offset)
        offset = _align(offset + t.nbytes, alignment)
    return b"".join(parts), offsets


def _shard_header(header: GGUFHeader, src: bytes, tensors: list[TensorEntry], no: int, count: int, total: int) -> bytes:
    keep = [k for k in header.order if k not in SPLIT_KEYS] if no == 0 else [k for k in ("general.alignment",) if k in header.kvs]
    kvs = [src[header.kvs[k].start : header.kvs[k].end] for k in keep]
    kvs += [
        encode_kv("split.no", GGUFValueType.UINT16, no),
        encode_kv("split.count", GGUFValueType.UINT16, count),
        encode_kv("split.tensors.count", GGUFValueType.INT32, total),
    ]
    infos, _ = _infos(tensors, header.alignment)
    head = MAGIC + struct.pack("<IQQ", header.version, len(tensors), len(kvs)) + b"".join(kvs) + infos
    return head + b"\0" * (_align(len(head), header.alignment) - len(head))


def split_gguf(src: Path, dst: Path, max_bytes: int, bar: Any) -> list[Path]:
    """Write ``src`` as shards of at most ``max_bytes`` of tensor data named after ``dst`` (in
    ``dst``'s directory); returns their paths. One shard: ``src`` is renamed to ``dst``."""
    header = read_header(src)
    if header.split[1] > 1:
        raise AssertionError(f"yarnconv bug: {src} is already a shard")
    shards = shard_groups(header.tensors, max_bytes)
    paths = shard_names(dst, len(shards))
    if len(shards) == 1:
        src.replace(dst)
        return paths
    with open(src, "rb") as fin:
        head = fin.read(header.data_offset)
        for no, (tensors, path) in enumerate(zip(shards, paths, strict=True)):
            with open(path, "wb", buffering=0) as fout:
                fout.write(_shard_header(header, head, tensors, no, len(shards), len(header.tensors)))
                base, (_, offsets) = fout.tell(), _infos(tensors, header.alignment)
                for t, offset in zip(tensors, offsets, strict=True):
                    fout.seek(base + offset)  # the padding between tensors reads back as zeros
                    copy_range(fin.fileno(), fout.fileno(), header.data_offset + t.offset, t.nbytes, bar)
                fout.truncate(base + _align(offsets[-1] + tensors[-1].nbytes, header.alignment))  # and after the last
            read_header(path)  # re-read: the layout checks run on every shard
    src.unlink()
    return paths
