"""Tiny real checkpoints for tests: config.json written by hand (so we control the layout),
random weights in sharded safetensors with an index, as transformers would lay them out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "sliding_window": None,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "sliding_window": 32768,
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "rope_theta": 1000000.0,
        "max_position_embeddings": 40960,
        "head_dim": 16,
    },
}


def tiny_config(family: str = "llama", **overrides: Any) -> dict[str, Any]:
    cfg = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 128,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **FAMILIES[family],
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None or k == "sliding_window"}


def write_checkpoint(root: Path, config: dict[str, Any], *, shards: int = 2, seed: int = 0) -> Path:
    """Materialise ``config`` with random weights (real parameter names from transformers)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    hf_config = AutoConfig.from_pretrained(root)
    model = AutoModelForCausalLM.from_config(hf_config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if hf_config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    names = sorted(state)
    if shards <= 1:
        save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, size = {}, 0
        for i in range(shards):
            part = names[i::shards]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: state[k] for k in part}, str(root / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
            size += sum(state[k].numel() * state[k].element_size() for k in part)
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    (root / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": config.get("max_position_embeddings"), "tokenizer_class": "PreTrainedTokenizerFast"}) + "\n"
    )
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to prove nothing was modified)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def verdict_configs() -> dict[str, dict[str, Any]]:
    """Configs whose runtime verdicts test_config and test_families assert from yarnconv's own
    runtime models; test_corpus loads each in the real transformers 4.57 and 5.x to check them."""
    from yarnconv.plan import ExtendRequest, plan_extend

    corpus = Path(__file__).parent / "corpus"

    def published(name: str) -> dict[str, Any]:
        return json.loads((corpus / f"{name}.json").read_text())["config"]

    v5_only = tiny_config("qwen3", max_position_embeddings=131072)
    v5_only.pop("rope_theta")
    v5_only["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768}
    mistral_saved = {k: v for k, v in published("mistral-7b-v0.1").items() if k != "rope_theta"}
    mistral_saved["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    qwen_saved = {k: v for k, v in published("qwen2.5-3b").items() if k != "rope_theta"}
    qwen_saved["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    return {
        "qwen3-v5-only": v5_only,
        "llama-16x-portable": plan_extend(tiny_config("llama"), ExtendRequest(scale=16)).config,
        "llama-2x-exllamav2": plan_extend(tiny_config("llama"), ExtendRequest(scale=2, schema="exllamav2")).config,
        "llama-2x-v5": plan_extend(tiny_config("llama"), ExtendRequest(scale=2, schema="v5")).config,
        "gemma3-4x-portable": plan_extend(published("gemma-3-1b-it"), ExtendRequest(scale=4.0)).config,
        "gemma3-4x-v5": plan_extend(published("gemma-3-1b-it"), ExtendRequest(scale=4.0, schema="v5")).config,
        # a `type`-only block (exllamav2's layout) on Gemma 3: transformers 5's config class fills
        # rope_type "default" first, so YaRN is off there (extend refuses to write this layout for it)
        "gemma3-type-only": {**published("gemma-3-1b-it"), "max_position_embeddings": 131072, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
        "mistral-saved-by-v5": mistral_saved,
        "qwen2.5-saved-by-v5": qwen_saved,
    }


# Runs yarnconv with its up-front space check switched off, so the disk really fills mid-write.
_NO_PRECHECK = (
    "import sys, yarnconv.gguf.export as g, yarnconv.hf.variant as v\n"
    "g.require_space = v.require_space = lambda *a: None\n"
    "from yarnconv.cli import main\n"
    "sys.argv[0] = 'yarnconv'\n"
    "main()\n"
)


def run_on_small_disk(size: int, args: list[str], *, precheck: bool = True) -> tuple[int, str, list[str]]:
    """``yarnconv ARGS`` with ``/mnt/small`` (in ARGS) a tmpfs of ``size`` bytes, in a private mount
    namespace (``unshare -rm``; no root needed where user namespaces are allowed). Returns the exit
    code, stderr and what is left on the small disk afterwards. Skips where mounting is refused, fails under CI."""
    import os
    import shlex
    import subprocess
    import sys
    import tempfile

    import pytest

    mnt = tempfile.mkdtemp(prefix="yarnconv-small-disk-")
    cmd = [sys.executable, "-m", "yarnconv"] if precheck else [sys.executable, "-c", _NO_PRECHECK]
    quoted = " ".join(shlex.quote(a.replace("/mnt/small", mnt)) for a in [*cmd, *args])
    script = f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 99; {quoted}; rc=$?; echo; echo LEFT:; ls -A {mnt}; umount -l {mnt}; exit $rc"
    # a private mount namespace (as any user where user namespaces are allowed, or as root), else
    # root's plain mount, unmounted by the script itself
    tries = [["unshare", "-rm"], ["unshare", "-m"]] + ([[]] if os.geteuid() == 0 else [])
    try:
        for prefix in tries:
            done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=600)
            if done.returncode != 99:
                left = done.stdout.split("LEFT:", 1)[1].split()
                return done.returncode, done.stderr, left
    finally:
        Path(mnt).rmdir()
    why = "no tmpfs can be mounted here (unshare -rm, unshare -m and mount refused): the full-disk path cannot be exercised"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
