"""Patch YaRN into an existing GGUF: only rope/context keys change, tensor bytes never do.

Two ways to write:

* in place (``in_place=True``): when the new header fits in the space before the data
  section (files yarnconv writes keep ``RESERVE`` spare bytes in a padding pair), the header
  is overwritten and no tensor byte moves; the old header is kept in a backup file until the
  new one has been re-read and checked.
* a new file: the new header, the unchanged tensor infos and then the old data section,
  copied verbatim by the kernel (``copy_file_range``) into a temporary file renamed at the end.

For split sets only the first shard carries metadata; the other shards are linked or copied.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from yarnconv.errors import UsageError, YarnconvError
from yarnconv.gguf.encode import PAD_MIN, encode_kv, pad_kv
from yarnconv.gguf.file import (
    MAGIC,
    PAD_KEY,
    RESERVE,
    SHARD_RE,
    GGUFHeader,
    GGUFValueType,
    read_header,
    shard_paths,
)
from yarnconv.gguf.keys import (
    NO_ROPE_ARCHS,
    RECORD_KEY,
    SPECIAL_YARN_ARCHS,
    KeyPlan,
    check_written_keys,
    llama_cpp_flags,
    plan_keys,
    record_value,
)
from yarnconv.gguf.llama_rope import pseudo_config, read_rope
from yarnconv.plan import ExtendPlan, ExtendRequest, override, plan_extend
from yarnconv.storage.atomic import atomic_files, check_new_files, require_space
from yarnconv.storage.files import place_file
from yarnconv.storage.progress import progress_bar

_CHUNK = 64 * 1024 * 1024


@dataclass
class GGUFPatchPlan:
    """What a patch will change: the planner's decision and the GGUF keys that carry it."""

    header: GGUFHeader
    plan: ExtendPlan
    keys: KeyPlan
    notes: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the file-level refusals overridden (the config-level ones are in plan)

    def summary(self) -> dict[str, Any]:
        out = self.plan.summary()
        out.pop("findings", None)
        out["architecture"] = self.header.arch
        out["gguf_keys"] = self.keys.summary()
        out["notes"] = out["notes"] + self.notes
        out["overrides"] = self.overrides + out["overrides"]
        out["llama_cpp_equivalent_flags"] = " ".join(llama_cpp_flags(self.plan.after, self.plan.max_position_after))
        return out


def plan_patch(header: GGUFHeader, request: ExtendRequest) -> GGUFPatchPlan:
    """Decide the new rope keys for ``header``; pure apart from the already-read header."""
    arch = header.arch
    no, count = header.split
    if no != 0:
        raise YarnconvError(
            f"{header.path.name} is shard {no + 1} of {count}; only the first shard holds metadata", "pass the -00001- file"
        )
    if not arch:
        raise YarnconvError(f"{header.path.name} has no general.architecture", "is this a model GGUF (not a LoRA or vocab file)?")
    if arch in NO_ROPE_ARCHS:
        raise YarnconvError(
            f"{arch} uses {NO_ROPE_ARCHS[arch]}, not RoPE; there is nothing to rescale", "YaRN applies to rotary-embedding models"
        )
    overrides: list[str] = []
    if arch in SPECIAL_YARN_ARCHS:
        override(
            overrides, request.unverified_family, "--unverified-family",
            f"llama.cpp handles YaRN specially for {arch}: {SPECIAL_YARN_ARCHS[arch]}", "pass --unverified-family to write the generic keys anyway",
        )  # fmt: skip
    if header.get(f"{arch}.context_length") is None:
        raise YarnconvError(f"{header.path.name} has no {arch}.context_length", "this file cannot be loaded by llama.cpp as is")
    if request.method == "dynamic":
        raise YarnconvError("dynamic NTK has no GGUF encoding; llama.cpp cannot apply it", "use --method yarn")
    current = read_rope(header)
    notes: list[str] = []
    if current.has_rope_freqs:
        override(
            overrides, request.replace_scaling, "--replace-scaling",
            "this file has a rope_freqs.weight tensor (Llama-3-style or precomputed scaling); YaRN would stack on top of it",
            "pass --replace-scaling to stack them anyway (the tensor is kept)",
        )  # fmt: skip
    if current.scaling_type not in ("none", "linear", "yarn"):
        raise YarnconvError(
            f"{arch}.rope.scaling.type is {current.scaling_type!r}, which yarnconv cannot re-plan", "patch a file without it"
        )
    dim = current.dim or _head_dim(header, arch)
    plan = plan_extend(pseudo_config(current, header.get(f"{arch}.block_count"), dim), request)
    keys = plan_keys(arch, plan.after, plan.max_position_after, dim)
    if current.applies_freqs:  # the kept tensor is part of what llama.cpp runs, so of the plan too
        stacked = replace(plan.after, freq_factors=current.freq_factors)
        keys.sets[RECORD_KEY] = (GGUFValueType.STRING, record_value(stacked, plan.max_position_after))
    keys.removes &= set(header.kvs)
    return GGUFPatchPlan(header, plan, keys, notes, overrides)


def _head_dim(header: GGUFHeader, arch: str) -> int:
    heads, width = header.get(f"{arch}.attention.head_count"), header.get(f"{arch}.embedding_length")
    if not heads or not width:
        raise YarnconvError(f"{header.path.name} has no rope.dimension_count and no head count", "cannot tell the rotary dimension")
    return int(width) // int(heads)


def encode_header(header: GGUFHeader, src: Any, keys: KeyPlan) -> tuple[bytes, bytes, int]:
    """(preamble-less KV bytes without padding, raw tensor infos, new pair count) for the planned keys."""
    parts: list[bytes] = []
    done: set[str] = set()
    for k in header.order:
        if k == PAD_KEY or k in keys.removes:
            continue
        if k in keys.sets:
            vtype, value = keys.sets[k]
            parts.append(encode_kv(k, vtype, value))
            done.add(k)
        else:
            kv = header.kvs[k]
            parts.append(bytes(src[kv.start : kv.end]))
    for k, (vtype, value) in keys.sets.items():
        if k not in done:
            parts.append(encode_kv(k, vtype, value))
    return b"".join(parts), bytes(src[header.tensor_info_start : header.tensor_info_end]), len(parts)


def _preamble(header: GGUFHeader, n_kv: int) -> bytes:
    return MAGIC + struct.pack("<IQQ", header.version, len(header.tensors), n_kv)


def fit_in_place(header: GGUFHeader, kv_bytes: bytes, infos: bytes, n_kv: int) -> bytes | None:
    """A new header exactly ``data_offset`` bytes long, or None when it cannot fit."""
    d = header.data_offset
    body = len(kv_bytes) + len(infos)
    with_pad = len(_preamble(header, n_kv + 1)) + body
    if with_pad + PAD_MIN <= d:
        return _preamble(header, n_kv + 1) + kv_bytes + pad_kv(d - with_pad) + infos
    bare = len(_preamble(header, n_kv)) + body
    if d - header.alignment < bare <= d:
        return _preamble(header, n_kv) + kv_bytes + infos + b"\0" * (d - bare)
    return None


def fresh_header(header: GGUFHeader, kv_bytes: bytes, infos: bytes, n_kv: int) -> bytes:
    """A new header with at least ``RESERVE`` spare bytes.

    Its length keeps the data section at the same offset modulo the page size, so the kernel
    copies whole pages (an unaligned copy was several times slower than cp).
    """
    start = len(_preamble(header, n_kv + 1)) + len(kv_bytes) + len(infos)
    page = max(4096, header.alignment)
    end = header.data_offset - ((header.data_offset - start - RESERVE) // page) * page
    return _preamble(header, n_kv + 1) + kv_bytes + pad_kv(end - start) + infos


def patch(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    request: ExtendRequest,
    *,
    in_place: bool = False,
    force_output: bool = False,
    link: str = "auto",
    dry_run: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Patch ``source`` into ``output`` (or in place); returns a machine-readable record."""
    src = Path(source)
    if in_place and not dry_run:
        _recover_in_place(src)
    header = read_header(src)
    pp = plan_patch(header, request)
    with open(src, "rb") as f:
        raw = f.read(header.tensor_info_end)
    kv_bytes, infos, n_kv = encode_header(header, raw, pp.keys)
    shards = _shards(src, header)
    record: dict[str, Any] = {"source": str(src), "shards": len(shards), "dry_run": dry_run, **pp.summary()}
    if in_place:
        if output is not None:
            raise UsageError("--in-place and -o are exclusive", "drop one of them")
        new = fit_in_place(header, kv_bytes, infos, n_kv)
        if new is None:
            need = len(kv_bytes) + len(infos) + 24 - header.data_offset
            raise YarnconvError(
                f"the new header needs {need} more bytes than {src.name} has before its tensor data",
                "write a new file with -o (yarnconv keeps 4 KiB spare in files it writes, so later edits fit in place)",
            )
        record.update(mode="in-place", output=str(src), header_bytes=len(new))
        if not dry_run:
            _write_in_place(src, header, new, pp.keys)
        return record
    if output is None:
        raise UsageError("no output given", "pass -o NEW.gguf, or --in-place to edit the file itself")
    target = Path(output)
    if target.is_dir() or str(output).endswith(os.sep):
        target = target / src.name
    dst_paths = _output_paths(target, shards)
    check_new_files(dst_paths, force=force_output, inputs=shards)
    new = fresh_header(header, kv_bytes, infos, n_kv)
    record.update(mode="rewrite", output=str(dst_paths[0]), outputs=[str(p) for p in dst_paths], header_bytes=len(new))
    if not dry_run:
        with atomic_files(dst_paths, "patch") as scratch:
            require_space(scratch, len(new) + header.size - header.data_offset, "the patched file")
            for s, d in list(zip(shards, dst_paths, strict=True))[1:]:
                record.setdefault("shard_actions", []).append(place_file(s, scratch / d.name, link))
            _rewrite(src, header, new, scratch / dst_paths[0].name, progress)
            check_written_keys(read_header(scratch / dst_paths[0].name), pp.keys, header)
    return record


def _shards(src: Path, header: GGUFHeader) -> list[Path]:
    no, count = header.split
    if count == 1:
        return [src]
    paths = shard_paths(src)
    if len(paths) != count:
        raise YarnconvError(
            f"{src.name} says it is 1 of {count} shards but is not named like one", "keep llama.cpp's -00001-of-0000N names"
        )
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise YarnconvError(f"split set incomplete: {missing[0]} is missing", "put all shards in one directory")
    return paths


def _output_paths(output: Path, shards: list[Path]) -> list[Path]:
    if len(shards) == 1:
        return [output]
    m = SHARD_RE.match(output.name)
    stem = m["stem"] if m else output.name.removesuffix(".gguf")
    return [output.with_name(f"{stem}-{i:05d}-of-{len(shards):05d}.gguf") for i in range(1, len(shards) + 1)]


def copy_range(fin: int, fout: int, offset: int, length: int, bar: Any) -> None:
    """Kernel-side copy of ``length`` bytes from ``offset``; falls back to read/write."""
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    while done < length:
        n = min(_CHUNK, length - done)
        if use_cfr:
            try:
                got = os.copy_file_range(fin, fout, n, offset + done)
            except OSError:
                use_cfr = False
                continue
        else:
            chunk = os.pread(fin, n, offset + done)
            got = os.write(fout, chunk)
        if got <= 0:
            raise YarnconvError("the input ended while copying tensor data", "is another process truncating it?")
        done += got
        bar.update(got)


def _rewrite(src: Path, header: GGUFHeader, new_header: bytes, dst: Path, progress: bool) -> None:
    """The new header, then the input's data section copied verbatim; the layout is re-read and checked."""
    data_len = header.size - header.data_offset
    with open(src, "rb") as fin, open(dst, "wb") as fout, progress_bar(data_len, progress, "patch") as bar:
        fout.write(new_header)
        fout.flush()
        copy_range(fin.fileno(), fout.fileno(), header.data_offset, data_len, bar)
    _same_tensors(header, read_header(dst))


def _same_tensors(old: GGUFHeader, new: GGUFHeader) -> None:
    a = [(t.name, t.dims, t.ggml_type, t.offset) for t in old.tensors]
    b = [(t.name, t.dims, t.ggml_type, t.offset) for t in new.tensors]
    if a != b or new.size - new.data_offset != old.size - old.data_offset:
        raise AssertionError("yarnconv bug: the patched file's tensor layout differs from the input's")


def _backup_path(path: Path) -> Path:
    """Where the old header waits during an in-place edit (a short name, whatever the file's)."""
    return path.parent / f".yarnconv-backup-{hashlib.sha1(path.name.encode()).hexdigest()[:12]}"


def _recover_in_place(path: Path) -> None:
    """A backup left by an in-place edit that was killed: keep the file if it reads, else restore."""
    backup = _backup_path(path)
    if not backup.is_file():
        return
    try:
        read_header(path)
    except YarnconvError:
        old = backup.read_bytes()
        with open(path, "r+b") as f:
            os.pwrite(f.fileno(), old, 0)
            os.fsync(f.fileno())
    backup.unlink()


def _write_in_place(path: Path, header: GGUFHeader, new: bytes, keys: KeyPlan) -> None:
    """Overwrite [0, data_offset) after backing it up; restore the backup if the result does not re-read."""
    backup = _backup_path(path)
    with open(path, "r+b") as f:
        old = f.read(header.data_offset)
        try:
            with open(backup, "wb") as b:
                b.write(old)
                b.flush()
                os.fsync(b.fileno())
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
        try:
            os.pwrite(f.fileno(), new, 0)
            os.fsync(f.fileno())
            check = read_header(path)
            _same_tensors(header, check)
            check_written_keys(check, keys, header)
            if check.data_offset != header.data_offset:
                raise AssertionError("yarnconv bug: the in-place edit moved the data section")
        except BaseException:
            os.pwrite(f.fileno(), old, 0)
            os.fsync(f.fileno())
            raise
    backup.unlink()
