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
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise YarnconvError(f"{bad} (__metadata__ must map strings to strings)", hint)
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
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
        info = TensorInfo(dtype, tuple(shape), end - start, path, 8 + n + start)
        bits = info.numel * int(DTYPE_BYTES[dtype] * 8)
        if bits % 8 or bits // 8 != end - start:
            raise YarnconvError(
                f"{path.name}: tensor {name!r} is {end - start} bytes but {dtype}{list(shape)} needs {bits / 8:g}", hint
            )
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


# Scratch files and directories yarnconv writes carry the writer's pid, so a later run can tell
# leftovers of a process that died (kill -9, power loss) from work in progress.
SCRATCH_RE = re.compile(r"^\.yarnconv-(?P<kind>[a-z]+)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")


def scratch_path(parent: Path, kind: str, suffix: str = "") -> Path:
    """A short hidden name beside the output (at most ~40 bytes, so any legal output name works)."""
    return parent / f".yarnconv-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parent: Path) -> list[str]:
    """Remove yarnconv scratch left in ``parent`` by processes that no longer run; returns the names."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = SCRATCH_RE.match(entry.name)
        if not m or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def require_space(directory: Path, needed: int, what: str) -> None:
    """Refuse before writing ``needed`` bytes into a filesystem that cannot hold them."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise YarnconvError(
            f"not enough space for {what} in {directory}: needs {_human(needed)}, {_human(free)} free", "free some space or choose another -o"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_writable_parent(output: Path) -> None:
    """Refuse an output whose parent path runs through a file (``-o model.gguf/sub``)."""
    for parent in output.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise YarnconvError(f"{parent} is a file, so {output} cannot be created", "choose an -o inside a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise YarnconvError(f"cannot write into {parent}: permission denied", "choose a writable -o")
            return


def made_dirs(target: Path) -> list[Path]:
    """Create ``target`` and missing parents; return the ones created (to remove if the run fails)."""
    missing = []
    d = target.absolute()
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir()
    return missing


def remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()


def check_output_location(source: Path, output: Path, *, force: bool) -> None:
    """Refuse outputs that would overwrite, nest in, or contain the input."""
    src, out = source.resolve(), output.resolve()
    if out == src:
        raise YarnconvError("the output is the input directory", "choose another -o; the input is never modified")
    if src in out.parents:
        raise YarnconvError(f"the output {output} is inside the input {source}", "choose an -o outside the model directory")
    if out in src.parents:
        raise YarnconvError(f"the output {output} contains the input {source}", "choose another -o")
    if out.exists() and not out.is_dir():
        raise YarnconvError(f"output {output} exists and is a file", "choose a directory name for -o")
    if out.exists() and not force:
        raise YarnconvError(f"output {output} already exists", "pass --force to replace it")
    check_writable_parent(out)


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside ``target``; it becomes ``target`` only on success.

    On any error, Ctrl-C or SIGTERM the scratch directory is removed and ``target`` is untouched;
    scratch left by a killed earlier run is swept first.
    """
    target = target.absolute()
    created = made_dirs(target.parent)
    sweep_stale(target.parent)
    scratch = scratch_path(target.parent, "tmp")
    try:
        scratch.mkdir()
        yield scratch
        if target.exists():
            if not force:
                raise YarnconvError(f"output {target} appeared while writing", "pass --force to replace it")
            trash = scratch_path(target.parent, "old")
            os.rename(target, trash)
            os.rename(scratch, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        remove_empty(created)
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
