"""Read and re-encode GGUF headers without trusting them.

gguf-py's ``GGUFReader`` is fine for files we wrote, but on a corrupt file it can allocate
whatever a garbled count says. This reader checks every count and length against the bytes
that are actually there, keeps each key/value pair's raw bytes (so untouched pairs are
copied verbatim when a header is rewritten) and never reads tensor data.

Layout (ggml/src/gguf.cpp, docs/gguf.md §6): magic, version, n_tensors, n_kv,
the pairs, the tensor infos, padding to ``general.alignment``, then the data section.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError


class GGUFValueType(IntEnum):
    """Value type codes of GGUF key/value pairs (the same numbers as gguf-py's enum)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# ggml tensor types: id -> (name, elements per block, bytes per block), as in gguf-py's
# GGML_QUANT_SIZES (tests check they agree). Kept here so reading a header needs neither
# numpy nor gguf-py: patch and inspect start in a fraction of the time.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip


def ggml_type(type_id: int) -> tuple[str, int, int] | None:
    """(name, block, block bytes) for a ggml type id; asks gguf-py for ids newer than this table."""
    if type_id in GGML_TYPES:
        return GGML_TYPES[type_id]
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        qt = GGMLQuantizationType(type_id)
        block, size = GGML_QUANT_SIZES[qt]
        return qt.name, block, size
    except (ImportError, ValueError, KeyError):
        return None


MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME, terminating NUL included
PAD_KEY = "yarnconv.reserved"  # a string pair that only holds spare header room for in-place edits
RESERVE = 4096  # header room kept in every file yarnconv writes (the YaRN keys need ~200 bytes)
SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SMALL_ARRAY = 64
_U64 = struct.Struct("<Q")  # numeric arrays up to this length are decoded for display


@dataclass
class KV:
    """One key/value pair: decoded value (arrays: element type and count only) and its raw bytes."""

    key: str
    vtype: GGUFValueType
    value: Any
    start: int
    end: int
    subtype: GGUFValueType | None = None
    count: int | None = None


@dataclass
class TensorEntry:
    """One tensor info: ggml-order dims, type and offset relative to the data section."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        t = ggml_type(self.ggml_type)
        return t[0] if t else f"type{self.ggml_type}"

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (outermost first), the reverse of ggml's."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    """Everything before the data section, plus where each part lies in the file."""

    path: Path
    size: int
    version: int
    kvs: dict[str, KV]
    tensors: list[TensorEntry]
    kv_start: int
    tensor_info_start: int
    tensor_info_end: int
    alignment: int
    data_offset: int
    order: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kvs.get(key)
        return default if kv is None or kv.vtype == GGUFValueType.ARRAY else kv.value

    @property
    def arch(self) -> str | None:
        return self.get("general.architecture")

    @property
    def split(self) -> tuple[int, int]:
        """(0-based shard number, shard count); (0, 1) for a single file."""
        return int(self.get("split.no", 0)), int(self.get("split.count", 1))

    @property
    def slack(self) -> int:
        """Bytes a rewritten header may grow by without moving any tensor data."""
        pad = self.kvs.get(PAD_KEY)
        reserved = (pad.end - pad.start) if pad else 0
        return self.data_offset - self.tensor_info_end + reserved


def _corrupt(path: Path, what: str) -> YarnconvError:
    return YarnconvError(f"{path.name}: not a valid GGUF file ({what})", "re-download or re-convert it")


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)
        self.tokens: tuple[int, int] | None = None  # where tokenizer.ggml.tokens' strings start, and how many

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _corrupt(self.path, f"truncated: {what} needs {n} bytes at offset {self.pos}, file has {self.size}")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, *, decode: bool = True) -> str | None:
        n = self.unpack("<Q", f"{what} length")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n] if decode else None
        self.pos += n
        if raw is None:
            return None
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(raw).decode("utf-8", errors="replace")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<I", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise _corrupt(self.path, f"{what} has unknown value type {raw}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> tuple[Any, GGUFValueType | None, int | None]:
    if vtype in _SCALAR:
        return cur.unpack(_SCALAR[vtype], key), None, None
    if vtype == GGUFValueType.STRING:
        return cur.string(key), None, None
    if vtype != GGUFValueType.ARRAY:
        raise _corrupt(cur.path, f"{key} has unsupported type {vtype}")
    sub = cur.value_type(f"{key} element type")
    count = cur.unpack("<Q", f"{key} element count")
    if sub == GGUFValueType.STRING:
        cur.need(count * 8, f"{key} ({count} strings)")  # each string needs at least its length field
        pos, buf, size, unpack = cur.pos, cur.buf, cur.size, _U64.unpack_from  # hot loop: vocabularies
        if key == "tokenizer.ggml.tokens":
            cur.tokens = (pos, count)  # checked for repeats once the whole header has proved sound
        for _ in range(count):  # lengths only: nothing is sliced before every length is known to fit
            if pos + 8 > size:
                raise _corrupt(cur.path, f"truncated: {key} runs past the end of the file ({size} bytes)")
            n = unpack(buf, pos)[0]
            if n > size - pos - 8:
                raise _corrupt(cur.path, f"truncated: {key} runs past the end of the file ({size} bytes)")
            pos += 8 + n
        cur.pos = pos
        return None, sub, count
    if sub not in _SCALAR:
        raise _corrupt(cur.path, f"{key} is an array of {sub.name}, which GGUF does not allow")
    width = struct.calcsize(_SCALAR[sub])
    cur.need(count * width, f"{key} ({count} x {sub.name})")
    value = None
    if count <= _SMALL_ARRAY:
        value = list(struct.unpack_from(f"<{count}{_SCALAR[sub][1]}", cur.buf, cur.pos))
    cur.pos += count * width
    return value, sub, count


def _check_unique_tokens(buf: mmap.mmap | bytes, path: Path, pos: int, count: int) -> None:
    """llama.cpp aborts (GGML_ASSERT) on a repeated token, reading each as a C string (a NUL ends it).
    Run only on a header whose every length and offset has been checked: the slices stay inside it."""
    seen: set[bytes] = set()
    unpack = _U64.unpack_from
    for _ in range(count):
        n = unpack(buf, pos)[0]
        seen.add(buf[pos + 8 : pos + 8 + n].split(b"\0", 1)[0])
        pos += 8 + n
    if len(seen) != count:
        raise _corrupt(path, f"tokenizer.ggml.tokens repeats a token ({count - len(seen)} duplicates); llama.cpp aborts loading it")


def tensor_nbytes(dims: tuple[int, ...], type_id: int) -> int:
    t = ggml_type(type_id)
    assert t is not None
    _, block, type_size = t
    numel = 1
    for d in dims:
        numel *= d
    return numel // block * type_size


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and validate a GGUF header; every failure is one line, no allocation beyond the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise _corrupt(path, f"only {size} bytes")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size)
    except FileNotFoundError:
        raise YarnconvError(f"{path} does not exist", "check the path") from None
    except IsADirectoryError:
        raise YarnconvError(f"{path} is a directory, not a GGUF file", "pass the .gguf file") from None
    except PermissionError as exc:
        raise YarnconvError(f"cannot read {path}: {exc.strerror}", "check the permissions") from None


def _parse(buf: mmap.mmap, path: Path, size: int) -> GGUFHeader:
    cur = _Cursor(buf, path)
    if buf[:4] != MAGIC:
        raise _corrupt(path, f"bad magic {bytes(buf[:4])!r}, expected b'GGUF'")
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise _corrupt(path, f"unsupported GGUF version {version}")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "key/value count")
    # Each pair needs >= 8+1+4+1 bytes, each tensor info >= 8+1+4+8+4+8: reject absurd counts up front.
    if n_kv * 14 > size or n_tensors * 33 > size:
        raise _corrupt(path, f"header claims {n_kv} keys and {n_tensors} tensors, more than {size} bytes can hold")
    kv_start = cur.pos
    kvs: dict[str, KV] = {}
    order: list[str] = []
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"key #{i}")
        assert key is not None
        vtype = cur.value_type(f"key {key!r}")
        value, sub, count = _read_value(cur, vtype, key)
        if key in kvs:
            raise _corrupt(path, f"duplicate key {key!r}")
        kvs[key] = KV(key, vtype, value, start, cur.pos, sub, count)
        order.append(key)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kvs:
        alignment = kvs["general.alignment"].value
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise _corrupt(path, f"general.alignment {alignment!r} is not a power of two")
    tensor_info_start = cur.pos
    tensors = [_tensor_info(cur, path, size, i) for i in range(n_tensors)]
    tensor_info_end = cur.pos
    data_offset = -(-tensor_info_end // alignment) * alignment
    _check_layout(path, tensors, alignment)
    for t in tensors:
        if t.offset % alignment or data_offset + t.offset + t.nbytes > size:
            raise _corrupt(
                path,
                f"truncated: tensor {t.name!r} needs bytes up to {data_offset + t.offset + t.nbytes}, file has {size}"
                if t.offset % alignment == 0
                else f"tensor {t.name!r} offset {t.offset} is not aligned to {alignment}",
            )
    if cur.tokens is not None:
        _check_unique_tokens(buf, path, *cur.tokens)
    return GGUFHeader(path, size, version, kvs, tensors, kv_start, tensor_info_start, tensor_info_end, alignment, data_offset, order)


def _tensor_info(cur: _Cursor, path: Path, size: int, i: int) -> TensorEntry:
    """Tensor info #i: name, dims, a known ggml type, an offset; a shape no file of ``size`` bytes could hold is corrupt."""
    name = cur.string(f"tensor name #{i}") or ""
    n_dims = cur.unpack("<I", f"{name} dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise _corrupt(path, f"tensor {name!r} has {n_dims} dimensions")
    dims = tuple(cur.unpack("<Q", f"{name} dim") for _ in range(n_dims))
    type_id = cur.unpack("<I", f"{name} type")
    info = ggml_type(type_id)
    if info is None:
        raise _corrupt(path, f"tensor {name!r} has unknown ggml type {type_id}")
    offset = cur.unpack("<Q", f"{name} offset")
    type_name, block, _ = info
    if any(d == 0 or d > size * block for d in dims) or dims[0] % block:
        raise _corrupt(path, f"tensor {name!r} has impossible shape {list(dims)} for {type_name}")
    return TensorEntry(name, dims, type_id, offset, tensor_nbytes(dims, type_id))


def _check_layout(path: Path, tensors: list[TensorEntry], alignment: int) -> None:
    """llama.cpp's own rules (ggml/src/gguf.cpp): unique names shorter than GGML_MAX_NAME, and
    tensors laid out back to back in info order, each padded to the alignment (so no offset may
    alias, overlap or skip over another tensor's bytes)."""
    seen: set[str] = set()
    expected = 0
    for t in tensors:
        if "\0" in t.name or not t.name:
            raise _corrupt(path, f"tensor name {t.name!r} is empty or holds a NUL byte (llama.cpp reads names as C strings)")
        if t.name in seen:
            raise _corrupt(path, f"duplicate tensor name {t.name!r}")
        seen.add(t.name)
        if len(t.name.encode()) >= MAX_NAME:
            raise _corrupt(path, f"tensor name {t.name[:40]!r}... is {len(t.name.encode())} bytes, llama.cpp allows {MAX_NAME - 1}")
        if t.offset != expected:
            raise _corrupt(path, f"tensor {t.name!r} has offset {t.offset}, llama.cpp expects {expected} (tensors must be contiguous)")
        expected += -(-t.nbytes // alignment) * alignment


def shard_paths(path: Path) -> list[Path]:
    """All files of a split set named like ``path`` (llama.cpp's -0000N-of-0000M naming), or [path]."""
    m = SHARD_RE.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
