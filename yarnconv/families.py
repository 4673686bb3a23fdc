"""What transformers' config classes assume for each model family, so a config.json that omits a
key reads the way the real class would read it.

Facts were read from transformers 4.57.1 and 5.23 (``CONFIG_MAPPING[model_type]()`` defaults and
the families' rotary code); ``tests/test_families.py`` checks this table against both installed
versions, so a new transformers release that changes a default fails a test rather than a user.
"""

from __future__ import annotations

from typing import Any

# Class defaults of keys a published config.json may omit (transformers 4.57.1). A head_dim listed
# here is a fixed class default; families that derive it from hidden_size / heads have none.
# ``rope_theta_v5`` is 5.x's default_theta where it differs from 4.57's.
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "mistral": {"max_position_embeddings": 131072, "num_attention_heads": 32, "hidden_size": 4096, "num_key_value_heads": 8, "rope_theta": 10000.0},
    "mixtral": {"max_position_embeddings": 131072, "num_attention_heads": 32, "hidden_size": 4096, "num_key_value_heads": 8, "rope_theta": 1000000.0},
    "ministral": {"max_position_embeddings": 131072, "num_attention_heads": 32, "hidden_size": 4096, "num_key_value_heads": 8, "rope_theta": 10000.0},
    "qwen2": {"max_position_embeddings": 32768, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "qwen2_moe": {"max_position_embeddings": 32768, "num_attention_heads": 16, "hidden_size": 2048, "rope_theta": 10000.0},
    "qwen3": {"head_dim": 128, "max_position_embeddings": 32768, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "qwen3_moe": {"max_position_embeddings": 32768, "num_attention_heads": 32, "hidden_size": 2048, "num_key_value_heads": 4, "rope_theta": 10000.0},
    "gemma": {"head_dim": 256, "max_position_embeddings": 8192, "num_attention_heads": 16, "hidden_size": 3072, "rope_theta": 10000.0},
    "gemma2": {"head_dim": 256, "max_position_embeddings": 8192, "num_attention_heads": 8, "hidden_size": 2304, "num_key_value_heads": 4, "rope_theta": 10000.0},
    "gemma3_text": {"head_dim": 256, "max_position_embeddings": 131072, "num_attention_heads": 8, "hidden_size": 2304, "num_key_value_heads": 4, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "num_hidden_layers": 26},
    "phi": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 2048, "partial_rotary_factor": 0.5, "rope_theta": 10000.0},
    "phi3": {"max_position_embeddings": 4096, "num_attention_heads": 32, "hidden_size": 3072, "partial_rotary_factor": 1.0, "rope_theta": 10000.0},
    "gpt_neox": {"max_position_embeddings": 2048, "num_attention_heads": 64, "hidden_size": 6144, "partial_rotary_factor": 0.25, "rope_theta": 10000.0},
    "deepseek_v2": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 4096, "qk_rope_head_dim": 64, "rope_theta": 10000.0},
    "deepseek_v3": {"max_position_embeddings": 4096, "num_attention_heads": 128, "hidden_size": 7168, "qk_rope_head_dim": 64, "rope_theta": 10000.0},
    "qwen2_5_vl_text": {"max_position_embeddings": 32768, "num_attention_heads": 64, "hidden_size": 8192, "num_key_value_heads": 8, "rope_theta": 1000000.0},
    "qwen2_vl_text": {"max_position_embeddings": 32768, "num_attention_heads": 64, "hidden_size": 8192, "num_key_value_heads": 8, "rope_theta": 1000000.0},
    "falcon": {"max_position_embeddings": 2048, "num_attention_heads": 71, "hidden_size": 4544, "rope_theta": 10000.0},
    "stablelm": {"max_position_embeddings": 4096, "num_attention_heads": 32, "hidden_size": 2560, "partial_rotary_factor": 0.25, "rope_theta": 10000.0},
    "olmo": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "olmo2": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "gpt_oss": {"head_dim": 64, "max_position_embeddings": 131072, "num_attention_heads": 64, "hidden_size": 2880, "num_key_value_heads": 8, "rope_theta": 150000.0},
    "starcoder2": {"max_position_embeddings": 4096, "num_attention_heads": 24, "hidden_size": 3072, "num_key_value_heads": 2, "rope_theta": 10000.0},
    "cohere": {"max_position_embeddings": 8192, "num_attention_heads": 64, "hidden_size": 8192, "rope_theta": 10000.0, "rope_theta_v5": 500000.0},
    "granite": {"max_position_embeddings": 2048, "num_attention_heads": 32, "hidden_size": 4096, "rope_theta": 10000.0},
    "smollm3": {"max_position_embeddings": 32768, "num_attention_heads": 16, "hidden_size": 2048, "num_key_value_heads": 4, "rope_theta": 2000000.0},
    "glm4": {"head_dim": 128, "max_position_embeddings": 131072, "num_attention_heads": 32, "hidden_size": 4096, "num_key_value_heads": 2, "partial_rotary_factor": 0.5, "rope_theta": 10000.0},
    "persimmon": {"max_position_embeddings": 16384, "num_attention_heads": 64, "hidden_size": 4096, "partial_rotary_factor": 0.5, "rope_theta": 25000.0, "rope_theta_v5": 10000.0},
}  # fmt: skip
# Renamed keys some families still publish: GPT-NeoX/Pythia name theta and the rotary fraction differently.
KEY_ALIASES: dict[str, dict[str, str]] = {
    "gpt_neox": {"rotary_emb_base": "rope_theta", "rotary_pct": "partial_rotary_factor"},
    "gpt_neox_japanese": {"rotary_emb_base": "rope_theta", "rotary_pct": "partial_rotary_factor"},
}
# Classes whose 4.x config keeps head_dim = None when config.json omits it; transformers
# 4.56-4.57 then crash building a YaRN rotary embedding (int(None * rho)). Measured on 4.57.1.
HEAD_DIM_NONE_IN_V4 = {"mistral", "mixtral", "ministral", "minimax", "hunyuan_v1_dense", "hunyuan_v1_moe"}
# Multi-head latent attention: only qk_rope_head_dim channels rotate, and YaRN's mscale_all_dim
# also rescales the softmax (yarn-math F9).
MLA_MODEL_TYPES = {"deepseek_v2", "deepseek_v3", "kimi_k2", "longcat_flash"}
# Families whose sliding-window layers use their own unscaled base (transformers: rope_local_base_freq).
LOCAL_BASE_KEY = {"gemma3_text": "rope_local_base_freq", "gemma3": "rope_local_base_freq"}
# Model types that exist only as custom modeling code on the Hub (auto_map), not in transformers:
# their rotary code is whatever the repo ships, so a YaRN block may be silently ignored.
CUSTOM_CODE_ONLY = {"internlm", "internlm2", "internlm3", "minicpm", "minicpm3", "baichuan", "chatglm", "qwen", "RefinedWeb", "RefinedWebModel"}
# Families no YaRN layout loads in: measured with transformers 4.57.1 and 5.23.
REFUSED_MODEL_TYPES = {
    "phi3": "transformers' Phi-3 config class rewrites a yarn block as longrope and then refuses it "
    "(4.57: ValueError, 5.x: KeyError short_factor/long_factor), so no YaRN layout loads",
    "phimoe": "transformers' PhiMoE config class validates every rope block as LongRoPE "
    "(4.57: TypeError short_mscale, 5.x: validation error), so no YaRN layout loads",
}


# Families whose transformers 4.x config class accepts only {type, factor} linear/dynamic scaling
# (``_rope_scaling_validation``: ValueError on a YaRN block); transformers 5 loads YaRN for them.
V4_LEGACY_SCALING_ONLY = {"olmo": "OLMo", "olmo2": "OLMo 2", "chameleon": "Chameleon", "fuyu": "Fuyu"}


def refusal(model_type: str | None) -> str | None:
    """Why no YaRN output of this family loads everywhere (None when one does)."""
    if model_type in REFUSED_MODEL_TYPES:
        return REFUSED_MODEL_TYPES[model_type]
    if model_type in V4_LEGACY_SCALING_ONLY:
        return (
            f"transformers 4.x's {V4_LEGACY_SCALING_ONLY[model_type]} config class accepts only a linear/dynamic "
            "{type, factor} rope_scaling (ValueError on YaRN), so only transformers >= 5 would load the output"
        )
    return None


def custom_code_only(model_type: str | None, auto_map: object, builtin: set[str]) -> bool:
    """True when only the repo's own modeling code can load this config: a model type transformers
    does not ship, with an ``auto_map`` pointing at the repo's classes (or one known to be such)."""
    if model_type in CUSTOM_CODE_ONLY:
        return True
    ships_code = isinstance(auto_map, dict) and any(k in auto_map for k in ("AutoConfig", "AutoModelForCausalLM"))
    return ships_code and model_type not in CLASS_DEFAULTS and model_type not in builtin


def defaults(model_type: str | None) -> dict[str, Any]:
    """The class defaults for ``model_type`` (empty for families yarnconv does not know)."""
    return CLASS_DEFAULTS.get(model_type or "", {})
