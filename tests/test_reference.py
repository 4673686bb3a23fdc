"""The reference forward (yarnconv.verify.reference) against transformers' own forward, in f32.

Probes carry gapped position ids, so the rope is exercised at distances far past the original
context without long sequences. A negative control shows the comparison is sensitive to the rope.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint

from yarnconv.cli import main
from yarnconv.errors import YarnconvError
from yarnconv.verify.reference import ReferenceModel


def hf_logits(root: Path, tokens: list[int], positions: list[int], attention: str = "eager") -> torch.Tensor:
    """transformers' logits; its eager attention is the plain formula, which the reference follows
    to the bit (its default SDPA kernel rounds differently: up to 1.6e-3 on SmolLM2 at 32k)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, attn_implementation=attention)
    with torch.inference_mode():
        return model(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0]


def gapped(n: int, far: int) -> list[int]:
    """Half the probe at the start, half ending at ``far``: query-key distances up to ``far``."""
    return list(range(n // 2)) + list(range(far - (n - n // 2) + 1, far + 1))


def extended(tmp_path: Path, family: str, **over: object) -> tuple[Path, Path]:
    cfg = tiny_config(family, max_position_embeddings=256, initializer_range=0.1, vocab_size=512, **over)
    src = write_checkpoint(tmp_path / "src", cfg, shards=2)
    out = tmp_path / "ext"
    result = CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return src, out


@pytest.mark.parametrize(
    ("family", "over"),
    [("llama", {}), ("mistral", {}), ("qwen2", {}), ("qwen3", {"tie_word_embeddings": True})],
    ids=["llama", "mistral", "qwen2-bias", "qwen3-qknorm-tied"],
)
def test_reference_matches_transformers(tmp_path: Path, family: str, over: dict) -> None:
    src, out = extended(tmp_path, family, **over)
    tokens = np.random.default_rng(0).integers(0, 512, 300).tolist()
    ref = ReferenceModel(out)
    for positions in (list(range(300)), gapped(300, 1023)):
        want = hf_logits(out, tokens, positions)
        got = ref.logits(tokens, positions)
        assert (got - want).abs().max() <= 1e-4, float((got - want).abs().max())
    # negative control: the unextended model's reference (plain RoPE) is far from the extended model
    plain = ReferenceModel(src).logits(tokens, gapped(300, 1023))
    assert (plain - want).abs().max() > 1e-2


def test_reference_matches_transformers_on_real_smollm2_at_32k(tmp_path: Path, smollm2_dir: Path) -> None:
    out = tmp_path / "ext"
    assert CliRunner().invoke(main, ["extend", str(smollm2_dir), "--scale", "4", "-o", str(out), "-q"]).exit_code == 0
    tokens = [1, *np.random.default_rng(1).integers(100, 20000, 191).tolist()]
    positions = gapped(192, 32767)
    want = hf_logits(out, tokens, positions)
    got = ReferenceModel(out).logits(tokens, positions)
    assert (got - want).abs().max() <= 1e-4, float((got - want).abs().max())
    sdpa = hf_logits(out, tokens, positions, attention="sdpa")  # what a default load computes
    assert (got - sdpa).abs().max() <= 1e-2 and float((got.argmax(-1) == sdpa.argmax(-1)).float().mean()) >= 0.99


def test_reference_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    cfg = json.loads((src / "config.json").read_text())
    with pytest.raises(YarnconvError, match="not 'gpt_neox'"):
        ReferenceModel(src, {**cfg, "model_type": "gpt_neox"})
    with pytest.raises(YarnconvError, match="positions and tokens differ in length"):
        ReferenceModel(src).logits([1, 2, 3], [0, 1])


@pytest.mark.slow
def test_reference_matches_transformers_over_9k_tokens_of_smollm2(tmp_path: Path, smollm2_dir: Path) -> None:
    """A real 9216-token sequence, 1024 tokens past SmolLM2's 8192 original (x4 YaRN): the last
    1024 positions' logits, reference against transformers' eager forward."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ext"
    assert CliRunner().invoke(main, ["extend", str(smollm2_dir), "--scale", "4", "-o", str(out), "-q"]).exit_code == 0
    tokens = [1, *np.random.default_rng(2).integers(100, 20000, 9215).tolist()]
    got = ReferenceModel(out).logits(tokens, keep=1024)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    with torch.inference_mode():
        want = model(torch.tensor([tokens]), logits_to_keep=1024).logits[0]
    assert (got - want).abs().max() <= 1e-4, float((got - want).abs().max())
