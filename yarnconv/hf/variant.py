"""HF export variants: a checkpoint cast to another float dtype and resharded, or one safetensors file.

Tensors are streamed one chunk at a time (:mod:`yarnconv.storage.safetensors_out`), each cast
exactly as ``tensor.to(dtype)`` casts it; integer and bool tensors pass through unchanged. The
YaRN config, tokenizer and other small files are copied; the config's dtype key follows the cast
under both names transformers reads (``torch_dtype`` in 4.x, ``dtype`` in 5.x). Outputs appear
whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.storage.atomic import atomic_dir, atomic_files, check_new_files, check_output_location, require_space
from yarnconv.storage.files import CONFIG, RECORD, copy_small, read_json, walk_files, write_json
from yarnconv.storage.progress import progress_bar
from yarnconv.storage.safetensors_out import WIDTH, OutTensor, write_file
from yarnconv.storage.sources import resolve
from yarnconv.storage.weights import scan_weights

DTYPES = {"f32": ("F32", "float32"), "f16": ("F16", "float16"), "bf16": ("BF16", "bfloat16")}
INDEX = "model.safetensors.index.json"


def _tensors(root: Path, raw: dict[str, Any], dtype: str | None) -> tuple[list[OutTensor], list[str]]:
    if isinstance(raw.get("quantization_config"), dict):
        method = raw["quantization_config"].get("quant_method", "?")
        raise YarnconvError(f"{root} is a quantized checkpoint ({method}); its tensors are not plain floats to cast", "export from the unquantized checkpoint")
    weights = scan_weights(root)
    if not weights.tensors:
        raise YarnconvError(f"no safetensors weights in {root}", "export reads model.safetensors (or an index and shards)")
    target = DTYPES[dtype][0] if dtype else None
    notes, out = [], []
    for name, t in sorted(weights.tensors.items()):
        cast = target if target and t.dtype in WIDTH else t.dtype
        if target and t.dtype not in WIDTH:
            notes.append(f"{name} ({t.dtype}) is not a float tensor: copied unchanged")
        out.append(OutTensor(name, t, cast))
    return out, notes


def shard(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Greedy shards of at most ``max_bytes`` (a larger tensor gets a shard of its own), in name order."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if max_bytes and shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _config(raw: dict[str, Any], dtype: str | None) -> dict[str, Any]:
    if not dtype:
        return raw
    name = DTYPES[dtype][1]
    return {**raw, "torch_dtype": name, "dtype": name}


@dataclass
class HFVariant:
    """One planned ``export --hf``: the cast tensors in their shards, and the record it prints."""

    root: Path
    raw: dict[str, Any]
    out: Path
    dtype: str | None
    shards: list[list[OutTensor]]
    names: list[str]
    record: dict[str, Any]


def plan_hf(source: str | os.PathLike[str], output: str | os.PathLike[str], *, dtype: str | None = None, max_shard_size: int = 0, force: bool = False, dry_run: bool = False) -> HFVariant:
    """What :func:`writing_hf` will write; refuses an output inside the source, or an existing one without ``force``."""
    root = resolve(source).path
    raw = read_json(root / CONFIG, CONFIG)
    tensors, notes = _tensors(root, raw, dtype)
    shards = shard(tensors, max_shard_size)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    record: dict[str, Any] = {
        "source": str(root),
        "output": str(output),
        "dtype": DTYPES[dtype][1] if dtype else "unchanged",
        "tensors": len(tensors),
        "bytes": sum(t.nbytes for t in tensors),
        "shards": [{"file": f, "tensors": len(s), "bytes": sum(t.nbytes for t in s)} for f, s in zip(names, shards, strict=True)],
        "notes": notes,
        "dry_run": dry_run,
    }
    check_output_location(root, Path(output), force=force)
    return HFVariant(root, raw, Path(output), dtype, shards, names, record)


@contextlib.contextmanager
def writing_hf(v: HFVariant, *, force: bool = False, progress: bool = True) -> Iterator[Path]:
    """Write the variant into a scratch directory and yield it before it takes the output's name, so
    what the caller adds there (the model card) is committed with it."""
    total = v.record["bytes"]
    require_space(v.out.absolute().parent, total, "the exported checkpoint")
    with atomic_dir(v.out, force=force) as tmp, progress_bar(sum(t.src.nbytes for s in v.shards for t in s), progress, "export") as bar:
        for fname, part in zip(v.names, v.shards, strict=True):
            write_file(tmp / fname, part, {"format": "pt"}, bar)
        if len(v.names) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": {t.name: f for f, part in zip(v.names, v.shards, strict=True) for t in part}}
            write_json(tmp / INDEX, index)
        write_json(tmp / CONFIG, _config(v.raw, v.dtype))
        for rel in walk_files(v.root):
            if rel.suffix in (".safetensors", ".bin", ".pt", ".pth") or rel.name.endswith(".safetensors.index.json") or rel.as_posix() == CONFIG:
                continue
            copy_small(v.root / rel, tmp / rel)
        if (tmp / RECORD).is_file():  # the record says the weights are no longer the source's bytes (the card reads it)
            made = read_json(tmp / RECORD, RECORD)
            if isinstance(made, dict):
                write_json(tmp / RECORD, {**made, "variant": {k: v.record[k] for k in ("dtype", "tensors", "bytes")} | {"shards": len(v.names)}})
        yield tmp


def export_hf(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, dtype: str | None = None, max_shard_size: int = 0, force: bool = False, dry_run: bool = False, progress: bool = True
) -> dict[str, Any]:
    """A copy of the checkpoint at ``source`` with its weights cast to ``dtype`` and resharded."""
    v = plan_hf(source, output, dtype=dtype, max_shard_size=max_shard_size, force=force, dry_run=dry_run)
    if not dry_run:
        with writing_hf(v, force=force, progress=progress):
            pass
    return v.record


def export_safetensors(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, dtype: str | None = None, force: bool = False, dry_run: bool = False, progress: bool = True
) -> dict[str, Any]:
    """All tensors in one safetensors file, config.json and yarnconv.json in its header metadata."""
    root = resolve(source).path
    raw = read_json(root / CONFIG, CONFIG)
    tensors, notes = _tensors(root, raw, dtype)
    out = Path(output)
    if out.suffix != ".safetensors":
        raise YarnconvError(f"-o {output} is not a .safetensors file name", "name the file, e.g. -o model-yarn-64k.safetensors")
    metadata = {"format": "pt", "config": json.dumps(_config(raw, dtype), sort_keys=True)}
    if (root / RECORD).is_file():
        metadata["yarnconv"] = json.dumps(read_json(root / RECORD, RECORD), sort_keys=True)
    total = sum(t.nbytes for t in tensors)
    record = {"source": str(root), "output": str(out), "dtype": DTYPES[dtype][1] if dtype else "unchanged", "tensors": len(tensors), "bytes": total, "notes": notes, "dry_run": dry_run}
    check_new_files([out], force=force, inputs=[root / f for f in scan_weights(root).files])
    if dry_run:
        return record
    with atomic_files([out], "export") as tmp, progress_bar(sum(t.src.nbytes for t in tensors), progress, "export") as bar:
        require_space(tmp, total, "the safetensors file")
        write_file(tmp / out.name, tensors, metadata, bar)
    return record
