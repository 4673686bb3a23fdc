"""``yarnconv hints``: launch commands per runtime and the KV cache of the extended context.

The KV-cache figures are checked against llama.cpp's own report when it allocates that cache."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main


def hints(path: Path) -> dict:
    result = CliRunner().invoke(main, ["hints", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _by_runtime(record: dict) -> dict[str, dict]:
    return {r["runtime"]: r for r in record["runtimes"]}


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hints")
    src = write_checkpoint(root / "src", tiny_config("qwen2", num_key_value_heads=2), shards=1)
    run_cli("extend", str(src), "--scale", "4", "-o", str(root / "ext"), "-q")
    return root / "ext"


def test_hf_hints_size_every_runtime_to_the_extended_context(extended: Path) -> None:
    r = hints(extended)
    config = json.loads((extended / "config.json").read_text())
    assert r["context"] == config["max_position_embeddings"] == 4 * 32768
    rows = _by_runtime(r)
    assert shlex.split(rows["vLLM"]["command"])[-2:] == ["--max-model-len", "131072"]  # the config alone carries the rope
    assert shlex.split(rows["SGLang"]["command"])[-2:] == ["--context-length", "131072"]
    assert "-c 131072" in rows["llama.cpp"]["command"] and "PARAMETER num_ctx 131072" in rows["ollama"]["modelfile"]
    heads = config["num_key_value_heads"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * heads * head_dim
    assert r["kv_cache_bytes"]["f16"] == per_token * 2 * 131072 and r["kv_cache_bytes"]["fp8"] == per_token * 131072
    printed = CliRunner().invoke(main, ["hints", str(extended)]).output
    assert "vllm serve" in printed and "KV cache at 131072 tokens" in printed and "Modelfile:" in printed


def test_v5_only_config_gets_the_override_flags_runtimes_need(extended: Path, tmp_path: Path) -> None:
    """SGLang reads rope_scaling only: a rope_parameters-only config needs the block passed in, with
    its theta (the config has no top-level rope_theta to fall back on). vLLM 0.32 reads the config as
    written (tests/test_vllm.py runs the line), so its command has no override; older vLLM gets one in a note."""
    run_cli("extend", str(extended.parent / "src"), "--scale", "4", "--schema", "v5", "-o", str(tmp_path / "v5"), "-q")
    rows = _by_runtime(hints(tmp_path / "v5"))
    args = shlex.split(rows["SGLang"]["command"])
    override = json.loads(args[args.index("--json-model-override-args") + 1])
    block = override["rope_scaling"]
    assert block["rope_type"] == "yarn" and block["factor"] == 4.0 and block["original_max_position_embeddings"] == 32768
    assert override["rope_theta"] == json.loads((tmp_path / "v5" / "config.json").read_text())["rope_parameters"]["rope_theta"]
    assert "--hf-overrides" not in rows["vLLM"]["command"]
    assert any("older vLLM" in n and "rope_theta" in n for n in rows["vLLM"]["notes"])
    assert any("not run" in n for n in rows["SGLang"]["notes"])


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["hints", str(tmp_path)])
    assert result.exit_code == 1 and "neither a checkpoint directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1


LLAMA_KV = "import sys, llama_cpp as l\nm = l.llama_model_load_from_file(sys.argv[1].encode(), l.llama_model_default_params())\ncp = l.llama_context_default_params(); cp.n_ctx = int(sys.argv[2]); cp.n_seq_max = 1; cp.flash_attn_type = 1\nfor t in (l.GGML_TYPE_F16, l.GGML_TYPE_Q8_0, l.GGML_TYPE_Q4_0):\n    cp.type_k = cp.type_v = t\n    l.llama_free(l.llama_init_from_model(m, cp))\n"


@pytest.mark.needs("llama_cpp")
def test_gguf_kv_cache_equals_what_llama_cpp_allocates(tmp_path: Path, smollm2_dir: Path) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", "llama", smollm2_dir, hidden_size=128, num_attention_heads=4)  # head size 32
    run_cli("extend", str(src), "--scale", "4", "-o", str(tmp_path / "ext"), "-q")
    gguf = tmp_path / "ext.gguf"
    run_cli("export", str(tmp_path / "ext"), "--gguf", "--outtype", "f16", "-o", str(gguf), "-q")
    r = hints(gguf)
    assert r["context"] == 1024 and r["rope"]["rope_type"] == "yarn"
    rows = _by_runtime(r)
    assert rows["llama.cpp"]["command"].endswith(f"-m {gguf} -c 1024") and "no --rope-scaling flags" in rows["llama.cpp"]["notes"][0]
    assert any("rope_freqs.weight" in n for n in rows["ollama"]["notes"])  # ollama's llama engine ignores the YaRN keys
    done = subprocess.run([sys.executable, "-c", LLAMA_KV, str(gguf), "1024"], capture_output=True, text=True, timeout=300)
    sizes = [float(m) for m in re.findall(r"llama_kv_cache: size = +([\d.]+) MiB", done.stderr)]
    assert len(sizes) == 3, done.stderr[-2000:]
    ours = [r["kv_cache_bytes"][t] / 2**20 for t in ("f16", "q8_0", "q4_0")]
    assert ours == pytest.approx(sizes, abs=0.01)
    small = tmp_path / "small"  # head size 16: llama.cpp refuses q8_0/q4_0 caches ("does not divide n_embd_head_k")
    write_checkpoint(small, tiny_config("llama"), shards=1)
    assert set(hints(small)["kv_cache_bytes"]) == {"f16", "fp8"}
    plain = tmp_path / "plain.gguf"  # no YaRN keys: said, not papered over
    run_cli("export", str(src), "--gguf", "--outtype", "f16", "-o", str(plain), "-q")
    row = _by_runtime(hints(plain))["llama.cpp"]
    assert "no YaRN keys" in row["notes"][0] and row["command"].endswith("-c 256")
