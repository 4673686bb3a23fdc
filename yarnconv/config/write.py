"""Write a rope block back into a config in one of the per-runtime schemas; every other key is kept."""

from __future__ import annotations

import copy
from typing import Any

from yarnconv import families
from yarnconv.config.block import SCHEMAS, ConfigView, RopeBlock, Schema
from yarnconv.errors import YarnconvError


def block_to_dict(block: RopeBlock, schema: Schema) -> dict[str, Any]:
    """The rope block as a JSON object for ``schema``; floats where runtimes require floats."""
    out: dict[str, Any] = {}
    if schema in ("portable", "exllamav2"):
        out["type"] = block.rope_type
    if schema in ("portable", "v5"):
        out["rope_type"] = block.rope_type
    if schema == "v5":
        out["rope_theta"] = float(block.theta)
        if block.partial_rotary_factor is not None:
            out["partial_rotary_factor"] = block.partial_rotary_factor
    if block.factor is not None:
        out["factor"] = float(block.factor)
    if block.original_context is not None:
        out["original_max_position_embeddings"] = int(block.original_context)
    for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"):
        value = getattr(block, key)
        if value is not None:
            out[key] = float(value)
    if block.truncate is not None:
        out["truncate"] = block.truncate
    out.update(copy.deepcopy(block.extra))
    return out


def write_rope(
    raw: dict[str, Any],
    section: tuple[str, ...],
    block: RopeBlock,
    max_position: int,
    schema: Schema,
    *,
    view: ConfigView | None = None,
) -> dict[str, Any]:
    """A copy of ``raw`` whose rope block and max length say ``block``; every other key is kept.

    With ``view``, family quirks are written too: the sliding layers' own base stays explicit
    (Gemma 3; nested per layer type in the v5 schema), and a head_dim that a 4.x config class
    would leave None is made explicit (hidden_size / heads, what every other reader assumes).
    """
    if schema not in SCHEMAS:
        raise YarnconvError(f"unknown schema {schema!r}", f"choose one of {', '.join(SCHEMAS)}")
    out = copy.deepcopy(raw)
    text = out[section[0]] if section else out
    text["max_position_embeddings"] = int(max_position)
    if "original_max_position_embeddings" in text and block.original_context is not None:
        text["original_max_position_embeddings"] = int(block.original_context)
    local = view.layer_ropes.get("sliding_attention") if view else None
    local_key = families.LOCAL_BASE_KEY.get(view.model_type or "") if view else None
    if view and view.model_type in families.HEAD_DIM_NONE_IN_V4 and text.get("head_dim") is None and view.head_dim:
        text["head_dim"] = int(view.head_dim)
    if schema == "v5":
        # The form transformers 5 saves: everything inside rope_parameters, nothing at top level.
        text.pop("rope_scaling", None)
        for key in ("rope_theta", "partial_rotary_factor", *([local_key] if local_key else [])):
            text.pop(key, None)
        full = block_to_dict(block, schema)
        if local is not None:
            sliding = {"rope_type": "default", "rope_theta": float(local.theta)}
            if local.partial_rotary_factor is not None:
                sliding["partial_rotary_factor"] = local.partial_rotary_factor
            text["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
        else:
            text["rope_parameters"] = full
        return out
    text["rope_theta"] = float(block.theta)  # v4 readers fall back to a class default without it
    text.pop("rope_parameters", None)
    text["rope_scaling"] = block_to_dict(block, schema)
    if block.partial_rotary_factor is not None and "rotary_pct" not in text:
        text["partial_rotary_factor"] = block.partial_rotary_factor
    if local is not None and local_key:
        text[local_key] = float(local.theta)
    return out
