"""Passkey retrieval: the prompt, the digit-restricted decoding, the intervals, and the runs in real
runtimes (transformers on a tiny checkpoint with SmolLM2's tokenizer, llama.cpp on the real
SmolLM2 GGUF)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main
from yarnconv.errors import UsageError
from yarnconv.verify.passkey import DEPTHS, PromptBuilder, greedy_digits, parse_lengths
from yarnconv.verify.stats import wilson


def test_lengths_and_wilson_intervals() -> None:
    assert parse_lengths("8k, 16K,4096") == [8192, 16384, 4096]
    with pytest.raises(UsageError):
        parse_lengths("8k,lots")
    # Wilson 95% for 0/10 and 10/10 (closed form: z^2/(n+z^2) = 0.2775) and 5/10 (0.2366, 0.7634)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_greedy_decoding_keeps_to_digit_tokens() -> None:
    """A model whose favourite token is a word still answers with the best digit tokens, multi-digit ones included."""
    digits = {10: "12", 11: "3", 12: "45", 13: "9"}
    script = iter([{99: 9.0, 10: 5.0, 13: 1.0}, {99: 9.0, 11: 3.0}, {12: 2.0, 13: 1.0}])

    def step(tokens: list[int]) -> np.ndarray:
        logits = np.full(100, -1e9)
        for k, v in next(script).items():
            logits[k] = v
        return logits

    assert greedy_digits(step, [1, 2, 3], digits) == "12345"


def test_prompts_have_the_exact_length_and_the_key_at_its_depth(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    builder = PromptBuilder(lambda t: list(tok(t)["input_ids"]), 2048, seed=0)
    for depth in DEPTHS:
        p = builder.build(2048, depth)
        assert len(p.tokens) == 2048 and len(p.key) == 5 and p.key.isdigit()
        text = tok.decode(p.tokens)
        assert text.count(p.key) == 2 and text.rstrip().endswith("The secret number is")
        at = text.index(p.key) / len(text)
        assert abs(at - depth) < 0.1, (depth, at)


@pytest.mark.needs("transformers")
def test_passkey_in_transformers_is_informational_unless_gated(tmp_path: Path, smollm2_dir: Path) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", "llama", smollm2_dir)
    ext = tmp_path / "ext"
    run_cli("extend", str(src), "--scale", "4", "-o", str(ext), "-q")
    args = ["verify", str(ext), "--base", str(src), "--passkey", "--lengths", "256,1k", "--passkey-trials", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    pk = json.loads(result.stdout)["passkey"]
    assert [(r["model"], r["length"]) for r in pk["per_length"]] == [("extended", 256), ("extended", 1024), ("base", 256), ("base", 1024)]
    assert len(pk["rows"]) == 4 * len(DEPTHS) and all(len(r["ci95"]) == 2 for r in pk["rows"])
    # a random tiny model cannot retrieve a key: gated at 0.9 it fails, with the accuracy measured
    result = CliRunner().invoke(main, [*args[:-1], "--passkey-min", "0.9", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 3 and report["checks"][-1]["status"] == "failed" and "min_accuracy" in report["checks"][-1]["reason"]
    refused = CliRunner().invoke(main, ["verify", str(ext), "--passkey-min", "0.5"])
    assert refused.exit_code == 2 and "--passkey-min does not apply to a run without --passkey" in refused.stderr


@pytest.mark.needs("llama_cpp")
def test_passkey_in_llama_cpp_on_the_real_smollm2(tmp_path: Path) -> None:
    """The real instruct model retrieves keys within its trained context."""
    from yarnconv.storage.sources import builtin_gguf

    gguf = tmp_path / "smollm2.gguf"
    shutil.copy(builtin_gguf("smollm2"), gguf)
    result = CliRunner().invoke(main, ["verify", str(gguf), "--tokens", "64", "--passkey", "--lengths", "512", "--passkey-trials", "1", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["passkey"]["per_length"]
    assert row["trials"] == 5 and row["accuracy"] >= 0.6, row
