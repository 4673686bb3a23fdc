"""What ``verify`` checks and against what plan: an HF checkpoint, or a GGUF file (alone or with the
HF checkpoint it came from as ``--base``).

The plan is what extend recorded in ``yarnconv.json`` (``rope_after``), or without a record the
config's own rope as yarnconv reads it; for a GGUF on its own, its rope keys as llama.cpp reads
them. The base rope (drift, no-op detector) is the record's ``rope_before``, else plain RoPE with
the same theta: extend never changes weights, so the base model is the same weights with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarnconv import rope
from yarnconv.config import ConfigView, RopeBlock, read_config
from yarnconv.errors import YarnconvError
from yarnconv.gguf.keys import RECORD_KEY
from yarnconv.storage.files import CONFIG, RECORD, read_json


@dataclass
class Subject:
    path: Path
    kind: str  # "hf" or "gguf"
    view: ConfigView  # the config the reference runs (the base's for a GGUF with --base)
    block: RopeBlock  # the plan
    base_block: RopeBlock
    intent: str
    reference: Path  # where the reference reads weights: an HF directory or the GGUF itself
    weight_type: str = "F32"  # the GGUF's dominant matrix type (tolerances)
    layer_blocks: dict[str, RopeBlock] = field(default_factory=dict)  # the plan per layer type (Gemma 3)
    gguf: dict[str, Any] = field(default_factory=dict)  # header facts for the GGUF checks
    engine_dtype: str = "float32"  # transformers' load dtype
    why_tables_only: str = ""  # why transformers runs no forward (the model fits in no precision)
    base: Path | None = None  # a GGUF's --base checkpoint: the plan, and layer 0's Q/K for the layout check

    @property
    def dim(self) -> int:
        return self.view.rope_head_dim or self.view.head_dim or 0

    @property
    def max_position(self) -> int:
        return self.view.max_position or self.original

    @property
    def original(self) -> int:
        """The pretraining length: the plan's, else one a GGUF's keys imply (rope_freqs), else the context."""
        return self.block.original_context or self.gguf.get("original") or self.view.max_position or 0

    def spec(self, block: RopeBlock | None = None) -> rope.RopeSpec:
        return (block or self.block).spec(self.dim, self.view.max_position)


def _record(root: Path) -> dict[str, Any]:
    path = root / RECORD
    data = read_json(path, RECORD) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _block(data: Any, what: str) -> RopeBlock | None:
    if not isinstance(data, dict):
        return None
    try:
        return RopeBlock(**data)
    except TypeError:
        where = what if what.startswith(RECORD_KEY) else f"{RECORD} has an unreadable {what}"
        raise YarnconvError(f"{where} cannot be read as a rope plan", "re-run extend, or remove the record to verify the rope as it is") from None


def intended_rope(root: Path, view: ConfigView) -> tuple[RopeBlock, str]:
    """The rope the checkpoint is meant to run: extend's recorded plan, else the config's own block."""
    after = _block(_record(root).get("rope_after"), "rope_after")
    if after is not None:
        return after, f"{RECORD} (the plan extend wrote)"
    return view.rope, f"{CONFIG} (no {RECORD}: the config's own rope, as yarnconv reads it)"


def intended_layer_ropes(root: Path, view: ConfigView) -> dict[str, RopeBlock]:
    """The plan per layer type: extend's record, else the config's own (empty: one rope for all)."""
    recorded = _record(root).get("layer_ropes_after")
    if isinstance(recorded, dict):
        return {lt: b for lt, data in recorded.items() if (b := _block(data, "layer_ropes_after")) is not None}
    return dict(view.layer_ropes)


def base_rope(root: Path, block: RopeBlock) -> RopeBlock:
    before = _block(_record(root).get("rope_before"), "rope_before")
    return before if before is not None else RopeBlock(theta=block.theta, partial_rotary_factor=block.partial_rotary_factor)


def hf_subject(root: Path) -> Subject:
    if not (root / CONFIG).is_file():
        raise YarnconvError(f"no {CONFIG} in {root}", "verify an HF checkpoint directory or a .gguf file")
    view = read_config(read_json(root / CONFIG, CONFIG))
    block, intent = intended_rope(root, view)
    return Subject(root, "hf", view, block, base_rope(root, block), intent, root, layer_blocks=intended_layer_ropes(root, view))


def gguf_subject(path: Path, base: Path | None) -> Subject:
    from yarnconv.gguf.llama_rope import read_rope
    from yarnconv.verify.weights import gguf_source

    config, _, headers = gguf_source(path)
    header = headers[0]
    arch = header.arch or "?"
    keys = read_rope(headers)
    sizes: dict[str, int] = {}
    for t in (t for h in headers for t in h.tensors):
        if len(t.dims) > 1:
            sizes[t.type_name] = sizes.get(t.type_name, 0) + t.nbytes
    facts = {"arch": arch, "keys": keys, "context_length": keys.context_length, "file_type": header.get("general.file_type")}
    weight_type = max(sizes, key=lambda k: sizes[k]) if sizes else "F32"
    if base is not None:
        hf = hf_subject(base)
        # a quantized file runs against the reference on its own dequantized weights, with the base's
        # plan: quantization loss is export --verify's separate measure, not a rope fault
        reference = base if weight_type in ("F32", "F16", "BF16") else path
        return Subject(path, "gguf", hf.view, hf.block, hf.base_block, f"--base {base}: {hf.intent}", reference, weight_type=weight_type, gguf=facts, base=base)
    view = read_config(config)
    recorded = keys.recorded
    if recorded is not None:  # the plan yarnconv wrote into the file: the keys are checked against it
        block = _block(recorded["rope"], f"{RECORD_KEY} key")
        assert block is not None
        context = recorded.get("context_length")
        facts["planned_context"] = context
        intent = f"{RECORD_KEY} in the file (the plan yarnconv wrote)"
    else:
        block, context = keys.block(config.get("head_dim")), keys.context_length
        intent = "the file's own rope keys and rope_freqs.weight, as llama.cpp reads them"
    original, source = keys.original()
    if recorded is None and block.original_context is None and original and original != context:
        facts["original"] = original
        intent += f"; original length {original} ({source})"
    plain = RopeBlock(theta=block.theta, partial_rotary_factor=block.partial_rotary_factor)
    return Subject(path, "gguf", view, block, plain, intent, path, weight_type=weight_type, gguf=facts)
