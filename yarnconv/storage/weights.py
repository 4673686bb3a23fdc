"""Safetensors checkpoints read by their headers alone: what tensors exist, where, and whether the files are sound.

Weights are never decoded here. Safetensors headers are parsed and checked against the file
size so a truncated or garbled shard is reported before anything is written; pickle files
(``*.bin``) are carried as opaque bytes and never unpickled.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.storage.files import INDEX_SUFFIX, SIDECAR, read_json

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own reader refuses headers above 100 MB
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
    "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5,
    "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    path: Path | None = None  # the file holding it
    offset: int = 0  # absolute byte offset of its data in that file

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class WeightSet:
    """The weight files of a checkpoint and what their headers say."""

    files: list[Path] = field(default_factory=list)
    index: Path | None = None
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    opaque: list[Path] = field(default_factory=list)  # pickle and other formats we do not parse

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.dtype] = out.get(t.dtype, 0) + t.numel
        return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor entries of a safetensors file, validated at least as strictly as the safetensors
    library validates them, without reading tensor data.

    The header must be a JSON object with no duplicate keys; ``__metadata__`` maps strings to
    strings; each tensor names a known dtype, a list of non-negative integer dims and integer
    offsets whose length matches dtype x shape; the tensors tile the data section exactly (no
    overlap, alias or hole) and the file ends where the last tensor does.
    """
    bad = f"{path.name}: invalid safetensors file"
    hint = "re-download or re-save the shard"
    size, n, header = _read_header_json(path, bad, hint)
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise YarnconvError(f"{bad} (__metadata__ must map strings to strings)", hint)
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info = _entry(path, name, entry, 8 + n, bad, hint)
        start, end = info.offset - 8 - n, info.offset - 8 - n + info.nbytes
        spans.append((start, end, name))
        out[name] = info
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            what = "overlaps another tensor" if start < position else "leaves a hole before it"
            raise YarnconvError(f"{bad} (tensor {name!r} at bytes {start}..{end} {what})", hint)
        position = end
    if position > data_len:
        raise YarnconvError(f"{path.name}: truncated (tensors need {position} data bytes, file has {data_len})", hint)
    if position != data_len:
        raise YarnconvError(f"{bad} ({data_len - position} bytes after the last tensor)", hint)
    return out


def _read_header_json(path: Path, bad: str, hint: str) -> tuple[int, int, dict[str, Any]]:
    """The file's size, the header's length and the header itself (a JSON object, no duplicate keys)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise YarnconvError(f"{path.name}: truncated safetensors file ({size} bytes)", hint)
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise YarnconvError(f"{path.name}: corrupt safetensors header (claims {n} header bytes, file has {size})", hint)
            raw = f.read(n)
    except PermissionError:
        raise YarnconvError(f"cannot read {path}: permission denied", "check the file's permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise YarnconvError(f"{path.name}: garbled safetensors header (not JSON, or the header length is wrong)", hint) from None
    except ValueError as exc:
        raise YarnconvError(f"{bad} ({exc} in the header)", hint) from None
    if not isinstance(header, dict):
        raise YarnconvError(f"{path.name}: garbled safetensors header (not an object)", hint)
    return size, n, header


def _entry(path: Path, name: str, entry: Any, data_start: int, bad: str, hint: str) -> TensorInfo:
    """One tensor's header entry, checked: a known dtype, integer dims and offsets whose span matches dtype x shape."""
    if not isinstance(entry, dict):
        raise YarnconvError(f"{bad} (entry {name!r} is not an object)", hint)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise YarnconvError(f"{bad} (tensor {name!r} has unknown dtype {dtype!r})", hint)
    if not isinstance(shape, list) or not all(_strict_int(d) for d in shape):
        raise YarnconvError(f"{bad} (tensor {name!r} has shape {shape!r}, not a list of non-negative integers)", hint)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_strict_int(o) for o in offsets) or offsets[0] > offsets[1]:
        raise YarnconvError(f"{bad} (tensor {name!r} has data_offsets {offsets!r})", hint)
    start, end = offsets
    info = TensorInfo(dtype, tuple(shape), end - start, path, data_start + start)
    bits = info.numel * int(DTYPE_BYTES[dtype] * 8)
    if bits % 8 or bits // 8 != end - start:
        raise YarnconvError(f"{path.name}: tensor {name!r} is {end - start} bytes but {dtype}{list(shape)} needs {bits / 8:g}", hint)
    return info


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file whose header :func:`read_safetensors_header` accepted."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n).decode("utf-8")).get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _hf_shards(root: Path) -> list[Path]:
    """Without an index, the single-file checkpoint, or every safetensors file but Mistral's
    ``consolidated*`` copy of the same weights (and yarnconv's own sidecar)."""
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    return [p for p in sorted(root.glob("*.safetensors")) if p.name != SIDECAR and not p.name.startswith("consolidated")]


def scan_weights(root: Path) -> WeightSet:
    """Find and validate the checkpoint's weight files: what the index names, or the HF-named
    single file. Other safetensors files beside them (Mistral's consolidated.safetensors) are
    not part of the checkpoint transformers loads."""
    ws = WeightSet()
    indexes = sorted(p for p in root.glob(f"*{INDEX_SUFFIX}") if not p.name.startswith("consolidated"))
    for index in indexes:
        data = read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
            raise YarnconvError(f"{index.name} has no usable weight_map", "repair or re-download the index")
        ws.index = index
        by_shard: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(tensor)
        for shard, names in sorted(by_shard.items()):
            path = root / shard
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise YarnconvError(f"{index.name} names a shard outside the model directory: {shard}", "repair the index")
            if not path.is_file():
                raise YarnconvError(f"{index.name} names {shard}, which is missing", "download the missing shard")
            header = read_safetensors_header(path)
            missing = [t for t in names if t not in header]
            if missing:
                raise YarnconvError(
                    f"{index.name} places {missing[0]} in {shard}, but that shard does not contain it", "repair or re-download the index"
                )
            ws.files.append(path)
            ws.tensors.update(header)
    if not indexes:
        for path in _hf_shards(root):
            ws.tensors.update(read_safetensors_header(path))
            ws.files.append(path)
    if not ws.files:
        for path in sorted(root.iterdir()):
            if path.is_file() and path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
                ws.opaque.append(path)
    return ws


