"""The rows of the eval table: the extended model, its base, and the other scalings at the same factor
built from the same base on the fly, as the YaRN paper compares them (PI = linear, dynamic NTK, YaRN).

HF: every row but ``extended`` is a config-only variant, written by yarnconv's own planner
(:func:`yarnconv.plan.plan_extend`, so ``--method linear`` / ``dynamic`` are exactly what ``extend``
would write) into a scratch directory whose other files are links to the model's. GGUF: the rows are
llama.cpp's own rope flags on the same file (docs/gguf.md §7); llama.cpp has no dynamic NTK.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarnconv.config import RopeBlock, read_config
from yarnconv.config.block import differences
from yarnconv.config.write import write_rope
from yarnconv.errors import UsageError, YarnconvError
from yarnconv.plan import METHODS, ExtendRequest, plan_extend
from yarnconv.storage.files import CONFIG, RECORD, read_json
from yarnconv.verify.subject import Subject

NAMES = {"yarn": "YaRN", "linear": "PI (linear)", "dynamic": "dynamic NTK"}


@dataclass
class Row:
    label: str  # extended, base, or a method's name
    describe: str
    block: RopeBlock
    max_position: int
    config: dict[str, Any] | None = None  # HF: the config.json this row runs (None: the model's own)
    path: Path | None = None  # another file or directory to run (a --base)
    flags: dict[str, Any] = field(default_factory=dict)  # GGUF: llama.cpp context parameters
    same_as: str | None = None  # an identical row already in the table
    not_run: str | None = None  # why this engine cannot run it

    @property
    def per_length(self) -> bool:
        from yarnconv.evaluation.protocol import LENGTH_DEPENDENT

        return self.block.rope_type in LENGTH_DEPENDENT


def parse_methods(text: str | None) -> list[str]:
    names = [m.strip() for m in (text if text is not None else "linear,dynamic,yarn").split(",") if m.strip()]
    for m in names:
        if m not in METHODS:
            raise UsageError(f"--methods: unknown method {m!r}", f"choose among {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def _describe(block: RopeBlock, context: int) -> str:
    if block.rope_type == "default":
        return f"plain RoPE (theta {block.theta:g}), context {context}"
    return f"{NAMES.get(block.rope_type, block.rope_type)} x{block.factor:g}, context {context}"


def _scaled(block: RopeBlock, what: str) -> tuple[float, int]:
    if block.rope_type == "default" or not block.factor:
        raise YarnconvError(f"{what} has no rope scaling: eval compares an extended model with its base", "evaluate what yarnconv extend wrote")
    if not block.original_context:
        raise YarnconvError(f"{what}'s rope block names no original length", "evaluate what yarnconv extend wrote (its record names it)")
    return float(block.factor), int(block.original_context)


def hf_rows(s: Subject, base: Path | None, methods: list[str]) -> list[Row]:
    """Rows for an HF checkpoint: its own config, the base's, and each method's variant of the base."""
    root, view, block = s.path, s.view, s.block
    factor, original = _scaled(block, str(root))
    context = view.max_position or int(original * factor)
    rows = [Row("extended", f"{_describe(block, context)} (this model)", block, context)]
    if base is not None:
        base_view = read_config(read_json(base / CONFIG, CONFIG))
        base_raw, base_block = base_view.raw, base_view.rope
        rows.append(Row("base", f"{_describe(base_block, base_view.max_position or original)} ({base.name})", base_block, base_view.max_position or original, path=base))
    else:
        record = read_json(root / RECORD, RECORD) if (root / RECORD).is_file() else {}
        before = (record.get("max_position_embeddings") or {}).get("before") or original
        base_block = s.base_block
        base_raw = write_rope(view.raw, view.section, base_block, before, "portable", view=view)
        rows.append(Row("base", f"{_describe(base_block, before)} (this model's weights, its rope before extend)", base_block, before, config=base_raw))
    if methods and base_block.rope_type != "default":
        raise YarnconvError(f"the base model already scales its rope ({base_block.rope_type}); the methods are built over plain RoPE", "pass --methods '' to compare with the base only")
    for m in methods:
        plan = plan_extend(base_raw, ExtendRequest(scale=factor, original_context=original, method=m))
        row = Row(m, _describe(plan.after, plan.max_position_after), plan.after, plan.max_position_after, config=plan.config)
        if not differences(plan.after, block) and plan.max_position_after == context:
            row.same_as = "extended"
        rows.append(row)
    return rows


def gguf_rows(s: Subject, base: Path | None, methods: list[str]) -> list[Row]:
    """Rows for a GGUF file: the file as it is, then the same file under llama.cpp's rope flags."""
    path = s.path
    factor, original = _scaled(s.block, path.name)
    context = int(s.gguf.get("planned_context") or s.gguf.get("context_length") or original * factor)
    rows = [Row("extended", f"{_describe(s.block, context)} (this file)", s.block, context)]
    freqs = s.gguf["keys"].has_rope_freqs and s.gguf["keys"].applies_freqs
    plain = RopeBlock(theta=s.block.theta, partial_rotary_factor=s.block.partial_rotary_factor)
    if base is not None:
        rows.append(Row("base", f"{base.name} as it is", plain, original, path=base))
    else:
        rows.append(Row("base", f"{_describe(plain, original)} (this file with --rope-scaling none)", plain, original, flags={"rope_scaling_type": 0, "yarn_attn_factor": 1.0}))
    for m in methods:
        if m == "yarn":
            block = RopeBlock("yarn", s.block.theta, s.block.partial_rotary_factor, factor, original, 32.0, 1.0)
            flags = {"rope_scaling_type": 2, "rope_freq_scale": 1 / factor, "yarn_orig_ctx": original, "yarn_ext_factor": 1.0, "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0, "yarn_beta_slow": 1.0}
        else:
            block = RopeBlock(m, s.block.theta, s.block.partial_rotary_factor, factor)
            flags = {"rope_scaling_type": 1, "rope_freq_scale": 1 / factor, "yarn_attn_factor": 1.0}
        row = Row(m, _describe(block, int(original * factor)), block, int(original * factor), flags=flags)
        if m == "dynamic":
            row.not_run = "llama.cpp has no dynamic NTK scaling (its types are none, linear and yarn); evaluate the HF checkpoint for this row"
        elif m == "yarn" and not differences(block, s.block):
            row.same_as = "extended"
        rows.append(row)
    if freqs:
        for row in rows[1:]:
            if row.path is None:
                row.not_run = "the file's rope is in rope_freqs.weight, which llama.cpp applies under every flag; pass --base BASE.gguf, or evaluate the HF checkpoint"
    return rows


def variant_dir(root: Path, config: dict[str, Any], scratch: Path) -> Path:
    """A directory that is ``root`` with another config.json: every other entry is a link to the model's."""
    scratch.mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name not in (CONFIG, RECORD) and not entry.name.startswith("."):
            os.symlink(entry.resolve(), scratch / entry.name)
    (scratch / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return scratch


def check_lengths(lengths: list[int], rows: list[Row]) -> None:
    """A length past the extended model's own context is refused: that is not the model being evaluated."""
    context = rows[0].max_position
    if lengths[-1] > context:
        k = f"{context // 1024}k" if context % 1024 == 0 else str(context)
        raise YarnconvError(f"length {lengths[-1]} is past the model's context {context}", f"use --lengths up to {k}")
