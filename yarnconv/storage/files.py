"""Files of a checkpoint: JSON in and out, walking a model directory, and placing weight files
(reflink, hardlink or copy) without rewriting a byte."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
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


def write_json(path: Path, data: Any) -> None:
    """JSON as transformers writes it: indent 2, trailing newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
    import shutil  # start-up cost: links are the common case

    shutil.copyfile(real, dst)
    shutil.copymode(real, dst)
    return "copy"


def copy_small(src: Path, dst: Path) -> None:
    """Copy a small file (configs, tokenizers: under ``LINK_THRESHOLD``) by content, following symlinks."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.resolve().read_bytes())
