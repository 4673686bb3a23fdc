"""``extend``: read a checkpoint, plan the new rope config, write a new directory atomically.

Weights are linked (or copied) byte for byte; only config.json (and a matching
``model_max_length`` in tokenizer_config.json) are rewritten. The input is never modified.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yarnconv import __version__
from yarnconv.errors import YarnconvError
from yarnconv.hf.sidecar import write_sidecar
from yarnconv.plan import ExtendPlan, ExtendRequest, plan_extend
from yarnconv.storage.atomic import atomic_dir, check_output_location, require_space
from yarnconv.storage.files import (
    CONFIG,
    LINK_THRESHOLD,
    RECORD,
    SIDECAR,
    copy_small,
    is_weight_file,
    place_file,
    read_json,
    walk_files,
    write_json,
)
from yarnconv.storage.progress import progress_bar
from yarnconv.storage.sources import hub_id_of, resolve
from yarnconv.storage.weights import scan_weights

TOKENIZER_CONFIG = "tokenizer_config.json"


def plan_for(
    source: str | os.PathLike[str], request: ExtendRequest, *, revision: str | None = None
) -> tuple[Any, dict[str, Any], ExtendPlan]:
    """Resolve and validate the source, then plan; nothing is written. Returns (source, raw config, plan)."""
    src = resolve(source, revision)
    raw = read_json(src.path / CONFIG, CONFIG)
    weights = scan_weights(src.path)
    if not weights.files and not weights.opaque:
        raise YarnconvError(f"no weight files in {src.path}", "expected model.safetensors or a sharded index")
    return src, raw, plan_extend(raw, request)


def extend(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    request: ExtendRequest,
    **settings: Any,
) -> dict[str, Any]:
    """Write an extended copy of ``source`` to ``output`` and return the run record (settings: as
    :func:`extending`)."""
    with extending(source, output, request, **settings) as (_, record):
        pass
    return record


@contextlib.contextmanager
def extending(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    request: ExtendRequest,
    *,
    link: str = "auto",
    force: bool = False,
    precompute_inv_freq: bool = False,
    revision: str | None = None,
    progress: bool = True,
    base_model: str | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The extended copy, staged: yields (the scratch directory, the run record) before the output takes
    its name, so what the caller writes there (the model card) is committed with it and a failure leaves
    no output. ``base_model`` is the source's Hub id for the card (default: detected, see
    :func:`yarnconv.storage.sources.hub_id_of`)."""
    src, raw, plan = plan_for(source, request, revision=revision)
    hub_id = hub_id_of(src, base_model)
    out = Path(output)
    check_output_location(src.path, out, force=force)
    if precompute_inv_freq and plan.after.rope_type == "dynamic":
        raise YarnconvError(
            "dynamic NTK frequencies depend on the sequence length; there is nothing fixed to precompute",
            "drop --precompute-inv-freq or use --method yarn",
        )
    files: list[dict[str, Any]] = []
    rel_paths = [p for p in walk_files(src.path) if p.as_posix() not in (CONFIG, RECORD, SIDECAR)]
    sizes = {p: (src.path / p).stat().st_size for p in rel_paths}
    total = sum(sizes.values())
    linked = sum(n for p, n in sizes.items() if is_weight_file(p) or n >= LINK_THRESHOLD)
    # links need no room; copies (--link copy, or another filesystem) need it all
    cross_device = out.absolute().parent.exists() and os.stat(out.absolute().parent).st_dev != os.stat(src.path).st_dev
    require_space(out.absolute().parent, total if link == "copy" or cross_device else total - linked, "the extended checkpoint")
    with atomic_dir(out, force=force) as tmp:
        write_json(tmp / CONFIG, plan.config)
        files.append({"path": CONFIG, "action": "rewritten"})
        with progress_bar(total, progress, "extend") as bar:
            for rel in rel_paths:
                src_file, dst_file = src.path / rel, tmp / rel
                size = src_file.stat().st_size
                if rel.as_posix() == TOKENIZER_CONFIG and _retarget_tokenizer(src_file, dst_file, plan):
                    action = "rewritten"
                elif is_weight_file(rel) or size >= LINK_THRESHOLD:
                    action = place_file(src_file, dst_file, link)
                else:
                    copy_small(src_file, dst_file)
                    action = "copy"
                files.append({"path": rel.as_posix(), "action": action, "bytes": size})
                bar.update(size)
        if precompute_inv_freq:
            write_sidecar(tmp / SIDECAR, plan)
            files.append({"path": SIDECAR, "action": "written"})
        record = _record(src, raw, plan, request, files, link)
        record["base_model"] = hub_id
        previous = src.path / RECORD
        if previous.is_file():
            record["previous"] = read_json(previous, RECORD)
        write_json(tmp / RECORD, record)
        record["output"] = str(out)
        yield tmp, record


def _retarget_tokenizer(src: Path, dst: Path, plan: ExtendPlan) -> bool:
    """Raise tokenizer_config.json's model_max_length when it mirrored the old context."""
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("model_max_length") != plan.max_position_before:
        return False
    data["model_max_length"] = plan.max_position_after
    plan.notes.append(f"tokenizer_config.json model_max_length {plan.max_position_before} -> {plan.max_position_after}")
    write_json(dst, data)
    return True


def _record(
    src: Any, raw: dict[str, Any], plan: ExtendPlan, request: ExtendRequest, files: list[dict[str, Any]], link: str
) -> dict[str, Any]:
    request_dict = {k: v for k, v in {**request.__dict__, "schema": request.schema or "portable"}.items() if v is not None}
    return {
        "yarnconv_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "extend",
        "source": {**src.describe(), "config_sha256": _sha256(json.dumps(raw, sort_keys=True).encode())},
        "request": request_dict,
        "link_mode": link,
        **plan.summary(),
        "files": files,
    }


def _sha256(data: bytes) -> str:
    try:  # CPython's built-in module: no OpenSSL to load for one small digest (start-up cost)
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:
        from hashlib import sha256
    return str(sha256(data).hexdigest())
