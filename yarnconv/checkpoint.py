"""Hugging Face checkpoint I/O: read headers (never tensors), place files, write atomically.

Weights are never decoded here. Safetensors headers are parsed and checked against the file
size so a truncated or garbled shard is reported before anything is written; pickle files
(``*.bin``) are carried as opaque bytes and never unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError

CONFIG = "config.json"
INDEX_SUFFIX = ".safetensors.index.json"
SIDECAR = "yarnconv_rope.safetensors"  # precomputed rope buffers, not model weights
RECORD = "yarnconv.json"  # what yarnconv did to make this directory
# Extensions that hold weights: always linked (or copied), never rewritten.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")
LINK_THRESHOLD = 16 * 1024 * 1024  # any file this large is linked rather than copied
SKIP_DIRS = {".git", ".cache", ".hg", "__pycache__"}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own reader refuses headers above 100 MB
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
    "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5,
    "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}  # fmt: skip
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, turning every failure into a one-line :class:`YarnconvError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YarnconvError(f"{what} not found: {path}", "is this a Hugging Face model directory?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YarnconvError(f"cannot read {what} {path}: {exc}", "check the file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise YarnconvError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "repair or re-download it"
        ) from None


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor entries of a safetensors file, validated against the file size (no data read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise YarnconvError(f"{path.name}: truncated safetensors file ({size} bytes)", "re-download the shard")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise YarnconvError(
                f"{path.name}: corrupt safetensors header (claims {n} header bytes, file has {size})", "re-download the shard"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise YarnconvError(f"{path.name}: garbled safetensors header (not JSON)", "re-download the shard") from None
    if not isinstance(header, dict):
        raise YarnconvError(f"{path.name}: garbled safetensors header (not an object)", "re-download the shard")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            raise YarnconvError(f"{path.name}: garbled safetensors entry for {name!r}", "re-download the shard") from None
        if not 0 <= start <= end:
            raise YarnconvError(f"{path.name}: tensor {name!r} has invalid offsets {start}..{end}", "re-download the shard")
        info = TensorInfo(dtype, shape, end - start, path, 8 + n + start)
        width = DTYPE_BYTES.get(dtype)
        if width is not None and info.numel * width != end - start:
            raise YarnconvError(
                f"{path.name}: tensor {name!r} is {end - start} bytes but {dtype}{list(shape)} needs {int(info.numel * width)}",
                "re-download the shard",
            )
        end_max = max(end_max, end)
        out[name] = info
    if end_max > data_len:
        raise YarnconvError(f"{path.name}: truncated (tensors need {end_max} data bytes, file has {data_len})", "re-download the shard")
    return out


def scan_weights(root: Path) -> WeightSet:
    """Find and validate the checkpoint's weight files (index and shards, or a single file)."""
    ws = WeightSet()
    indexes = sorted(root.glob(f"*{INDEX_SUFFIX}"))
    seen: set[Path] = set()
    for index in indexes:
        data = read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise YarnconvError(f"{index.name} has no weight_map", "repair or re-download the index")
        ws.index = index
        by_shard: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(str(shard), []).append(tensor)
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
            seen.add(path)
            ws.tensors.update(header)
    for path in sorted(root.glob("*.safetensors")):
        if path not in seen and path.name != SIDECAR:
            ws.tensors.update(read_safetensors_header(path))
            ws.files.append(path)
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in (".bin", ".pt", ".pth", ".ckpt") and path not in seen:
            ws.opaque.append(path)
    return ws


def is_weight_file(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES)


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (relative paths), skipping VCS and cache folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".yarnconv-"))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if full.is_file():
                yield full.relative_to(root)


def dir_size(root: Path) -> int:
    return sum((root / p).stat().st_size for p in walk_files(root))


# ---------------------------------------------------------------------------------------------
# Placing files

LINK_MODES = ("auto", "reflink", "hardlink", "copy")
_FICLONE = 0x40049409


def _reflink(src: Path, dst: Path) -> None:
    import fcntl

    with open(src, "rb") as s, open(dst, "wb") as d:
        try:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        except OSError:
            d.close()
            dst.unlink(missing_ok=True)
            raise


def place_file(src: Path, dst: Path, mode: str = "auto") -> str:
    """Put ``src`` at ``dst`` without rewriting bytes when possible; returns the method used.

    ``auto`` tries a reflink (copy-on-write, fully independent), then a hardlink (shares the
    inode: never edit the output's weights in place), then a plain copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()  # HF cache entries are symlinks into blobs/
    if mode in ("auto", "reflink"):
        try:
            _reflink(real, dst)
            return "reflink"
        except OSError as exc:
            if mode == "reflink":
                raise YarnconvError(f"cannot reflink {src.name}: {exc.strerror}", "use --link auto, hardlink or copy") from None
    if mode in ("auto", "hardlink"):
        try:
            os.link(real, dst)
            return "hardlink"
        except OSError as exc:
            if mode == "hardlink" or exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise YarnconvError(f"cannot hardlink {src.name}: {exc.strerror}", "use --link auto or copy") from None
    shutil.copyfile(real, dst)
    shutil.copymode(real, dst)
    return "copy"


def check_output_location(source: Path, output: Path, *, force: bool) -> None:
    """Refuse outputs that would overwrite, nest in, or contain the input."""
    src, out = source.resolve(), output.resolve()
    if out == src:
        raise YarnconvError("the output is the input directory", "choose another -o; the input is never modified")
    if src in out.parents:
        raise YarnconvError(f"the output {output} is inside the input {source}", "choose an -o outside the model directory")
    if out in src.parents:
        raise YarnconvError(f"the output {output} contains the input {source}", "choose another -o")
    if out.exists() and not force:
        raise YarnconvError(f"output {output} already exists", "pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise YarnconvError(f"output {output} exists and is not a directory", "choose another -o")


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside ``target``; it becomes ``target`` only on success.

    On any error (or Ctrl-C) the scratch directory is removed and ``target`` is untouched.
    """
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".yarnconv-tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        yield scratch
        if target.exists():
            if not force:
                raise YarnconvError(f"output {target} appeared while writing", "pass --force to replace it")
            trash = target.parent / f".yarnconv-old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
            os.rename(scratch, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """JSON as transformers writes it: indent 2, trailing newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A byte-counting tqdm bar, or a no-op one for --quiet / --json."""
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)
