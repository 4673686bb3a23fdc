"""HF export variants: a cast and resharded checkpoint directory, and one safetensors file.

Oracles are outside yarnconv: safetensors' own loader, torch's ``.to(dtype)``, and transformers
loading the result the way a user does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from yarnconv.cli import main


def _state(root: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variant")
    src = write_checkpoint(root / "src", tiny_config("qwen2", vocab_size=512), shards=2)
    (src / "tokenizer.json").write_text("{}")  # a small file that must come along
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(root / "ext"), "-q"]).exit_code == 0
    return root / "ext"


def test_hf_variant_casts_bit_for_bit_and_reshards(extended: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    result = CliRunner().invoke(main, ["export", str(extended), "--hf", "--dtype", "bf16", "--max-shard-size", "100KB", "-o", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    src, got = _state(extended), _state(out)
    assert set(src) == set(got)
    for name, t in src.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name].view(torch.int16), t.to(torch.bfloat16).view(torch.int16)), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(src) and set(index["weight_map"].values()) == {s["file"] for s in record["shards"]}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in src.values())
    for s in record["shards"]:
        size = sum(t.numel() * 2 for t in load_file(out / s["file"]).values())
        assert size == s["bytes"] and (size <= 100_000 or s["tensors"] == 1), s
    assert len(record["shards"]) > 1
    cfg, before = json.loads((out / "config.json").read_text()), json.loads((extended / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16" and cfg["rope_scaling"] == before["rope_scaling"]
    assert (out / "tokenizer.json").read_text() == "{}" and (out / "yarnconv.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16 and model.config.rope_scaling["rope_type"] == "yarn"


def test_single_file_safetensors_carries_the_config(extended: Path, tmp_path: Path) -> None:
    out = tmp_path / "model-yarn.safetensors"
    result = CliRunner().invoke(main, ["export", str(extended), "--safetensors", "--dtype", "f16", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    src, got = _state(extended), load_file(out)
    assert set(src) == set(got) and all(torch.equal(got[k], v.to(torch.float16)) for k, v in src.items())
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    assert config["rope_scaling"]["rope_type"] == "yarn" and config["dtype"] == "float16" and json.loads(meta["yarnconv"])["factor"] == 4.0
    placed = tmp_path / "placed"  # transformers loads it once placed in a directory with its config
    placed.mkdir()
    shutil.copy(out, placed / "model.safetensors")
    (placed / "config.json").write_text(meta["config"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(placed).config.max_position_embeddings == 4 * 32768
    report = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)  # inspect reads the file alone
    assert report["weight_dtypes"].keys() == {"F16"} and report["max_position_embeddings"] == 4 * 32768 and report["tensors"] == len(src)
    assert report["rope"]["rope_type"] == "yarn" and report["yarnconv"]["factor"] == 4.0
    plain = tmp_path / "plain.safetensors"  # a file without a config: its tensors, and a plain word about runtimes
    save_file({"w": torch.zeros(3, 4)}, plain)
    result = CliRunner().invoke(main, ["inspect", str(plain)])
    assert result.exit_code == 0 and "12 parameters in 1 tensors, F32" in result.output and "runtimes cannot be predicted" in result.output


def test_integer_tensors_pass_through_and_quantized_checkpoints_are_refused(extended: Path, tmp_path: Path) -> None:
    model = tmp_path / "with-ints"
    shutil.copytree(extended, model)
    shard = model / "model-00001-of-00002.safetensors"
    save_file({**load_file(shard), "extra.position_ids": torch.arange(8)}, str(shard), metadata={"format": "pt"})
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra.position_ids"] = shard.name
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    result = CliRunner().invoke(main, ["export", str(model), "--safetensors", "--dtype", "bf16", "-o", str(tmp_path / "x.safetensors"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert any("extra.position_ids (I64) is not a float tensor" in n for n in json.loads(result.stdout)["notes"])
    assert torch.equal(load_file(tmp_path / "x.safetensors")["extra.position_ids"], torch.arange(8))
    quantized = tmp_path / "gptq"
    shutil.copytree(extended, quantized)
    cfg = json.loads((quantized / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (quantized / "config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["export", str(quantized), "--hf", "--dtype", "f16", "-o", str(tmp_path / "q")])
    assert result.exit_code == 1 and "quantized checkpoint (gptq)" in result.stderr and not (tmp_path / "q").exists()


def test_variant_bad_input_is_one_line(extended: Path, tmp_path: Path) -> None:
    for args, code, message in (
        (["--hf", "--gguf"], 2, "different formats"),
        (["--gguf", "--dtype", "bf16"], 2, "--dtype does not apply to GGUF export"),
        (["--safetensors", "--max-shard-size", "1GB"], 2, "--max-shard-size does not apply to one safetensors file"),
        (["--hf", "--max-shard-size", "lots"], 1, "is not a size"),
        (["--hf", "--outtype", "q8_0"], 2, "--outtype does not apply"),
    ):
        out = tmp_path / "out.safetensors" if "--safetensors" in args else tmp_path / "out"
        result = CliRunner().invoke(main, ["export", str(extended), *args, "-o", str(out)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == code and len(lines) == 1 and message in lines[0], (args, result.output)
        assert not out.exists()
    dry = CliRunner().invoke(main, ["export", str(extended), "--hf", "--dtype", "f16", "-o", str(tmp_path / "dry"), "--dry-run"])
    assert dry.exit_code == 0 and "would write" in dry.stdout and not (tmp_path / "dry").exists()


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_chunked_cast_pipeline_matches_tensor_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Many small chunks through both buffers, special values, a growing cast and a pass-through int tensor."""
    from yarnconv.hf.variant import export_safetensors
    from yarnconv.storage import safetensors_out

    monkeypatch.setattr(safetensors_out, "CHUNK_BYTES", 1024)
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 6e-8, 65504.0, 70000.0, 1 / 3])
    src = {
        "a.f32": torch.cat([torch.randn(3001, generator=g) * 100, special]),
        "b.bf16": (torch.randn(40, 77, generator=g) * 1e3).to(torch.bfloat16),
        "c.f16": torch.cat([torch.randn(999, generator=g), special.to(torch.float16)]),
        "d.f64": torch.randn(300, generator=g, dtype=torch.float64),
        "e.i64": torch.arange(700, dtype=torch.int64),
        "f.empty": torch.zeros(0),
    }
    (tmp_path / "m").mkdir()
    save_file(src, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text("{}")
    export_safetensors(tmp_path / "m", tmp_path / "out.safetensors", dtype=dtype, progress=False)
    want = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    got = load_file(tmp_path / "out.safetensors")
    for name, t in src.items():
        expect = t if not t.is_floating_point() else t.to(want)
        assert got[name].dtype == expect.dtype and got[name].shape == expect.shape, name
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[expect.element_size()]
        assert torch.equal(got[name].view(bits), expect.view(bits)), name


def test_full_disk_mid_write_is_one_line_and_leaves_nothing(extended: Path) -> None:
    from helpers import run_on_small_disk

    size = sum(p.stat().st_size for p in extended.glob("*.safetensors"))
    for fmt, out in (("--hf", "/mnt/small/out"), ("--safetensors", "/mnt/small/one.safetensors")):
        code, err, left = run_on_small_disk(size // 3, ["export", str(extended), fmt, "--dtype", "f32", "-q", "-o", out], precheck=False)
        assert code == 1 and err.strip().count("\n") == 0 and "no space left on device while writing" in err and left == [], err
        code, err, left = run_on_small_disk(size // 3, ["export", str(extended), fmt, "--dtype", "f32", "-q", "-o", out])
        assert code == 1 and err.strip().count("\n") == 0 and "not enough space" in err and left == [], err


def test_export_leaves_no_file_open(extended: Path, tmp_path: Path) -> None:
    from yarnconv.hf.variant import export_hf

    before = set(Path("/proc/self/fd").iterdir())  # Linux, where yarnconv runs its tests
    export_hf(extended, tmp_path / "out", dtype="bf16", max_shard_size=100_000, progress=False)
    after = {p for p in Path("/proc/self/fd").iterdir() if p.exists()}
    assert {str(p.resolve()) for p in after - before if p.exists()} == set()


def test_export_hf_of_a_checkpoint_yarnconv_did_not_write_has_no_card_and_succeeds(tmp_path: Path) -> None:
    """The card is written inside the export's commit only for a yarnconv output (it describes the
    extension); a plain checkpoint is cast and resharded without one, and the command succeeds."""
    src = write_checkpoint(tmp_path / "plain", tiny_config("llama"), shards=1)
    done = CliRunner().invoke(main, ["export", str(src), "--hf", "--dtype", "bf16", "-o", str(tmp_path / "out"), "--json"])
    assert done.exit_code == 0, done.output
    assert "card" not in json.loads(done.stdout) and not (tmp_path / "out" / "README.md").exists()
    ext = tmp_path / "ext"
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "2", "-o", str(ext), "-q"]).exit_code == 0
    carded = CliRunner().invoke(main, ["export", str(ext), "--hf", "--dtype", "bf16", "-o", str(tmp_path / "ext-bf16"), "--json"])
    assert carded.exit_code == 0 and json.loads(carded.stdout)["card"] == str(tmp_path / "ext-bf16" / "README.md")
    assert "cast to bfloat16" in (tmp_path / "ext-bf16" / "README.md").read_text() and (tmp_path / "ext-bf16" / "yarnconv-rope.png").is_file()
