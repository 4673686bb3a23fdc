"""`yarnconv extend` / `inspect` end to end: real files, real transformers loads, bad inputs."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_config, tree_hashes, write_checkpoint

from yarnconv import rope
from yarnconv.cli import main
from yarnconv.config import read_config


def run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def hf_rotary(model_dir: Path) -> tuple[list[float], float, int]:
    """Load the checkpoint with transformers and read the rotary buffers it actually uses."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rotary = model.model.rotary_emb
    return rotary.inv_freq.tolist(), float(rotary.attention_scaling), model.config.max_position_embeddings


@pytest.mark.parametrize(
    ("family", "args", "expect"),
    [
        ("llama", ["--scale", "16"], (16.0, 4096, 65536)),
        ("mistral", ["--target-context", "131072"], (4.0, 32768, 131072)),
        ("qwen2", ["--scale", "4", "--beta-fast", "64", "--attention-factor", "1.1"], (4.0, 32768, 131072)),
        ("qwen3", ["--target-context", "131072", "--original-context", "32768"], (4.0, 32768, 131072)),
    ],
)
def test_extend_loads_in_transformers_with_yarnconvs_numbers(tmp_path: Path, family: str, args: list[str], expect: tuple) -> None:
    src = write_checkpoint(tmp_path / family, tiny_config(family))
    before = tree_hashes(src)
    out = tmp_path / "out"
    result = run("extend", src, "-o", out, "--json", "--precompute-inv-freq", *args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["factor"], record["original_context"], record["max_position_embeddings"]["after"]) == expect
    assert tree_hashes(src) == before  # input untouched

    # Weights byte-identical; only config.json (+ tokenizer max length) rewritten.
    after = tree_hashes(out)
    for name, digest in before.items():
        if name.endswith(".safetensors") or name.endswith(".index.json") or name == "generation_config.json":
            assert after[name] == digest, name
    assert (out / "yarnconv.json").is_file() and json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == expect[2]
    actions = {f["path"]: f["action"] for f in record["files"]}
    for shard in src.glob("*.safetensors"):
        # linked, not copied: a reflink where the filesystem has them (XFS, btrfs), else a hardlink
        assert actions[shard.name] in ("reflink", "hardlink"), actions
        if actions[shard.name] == "hardlink":
            assert os.stat(shard).st_ino == os.stat(out / shard.name).st_ino

    inv, scaling, max_pos = hf_rotary(out)
    view = read_config(json.loads((out / "config.json").read_text()))
    spec = view.rope.spec(view.head_dim, view.max_position)
    assert rope.compute(spec, precision="float32").inv_freq == inv
    assert scaling == pytest.approx(rope.compute(spec).attention_factor, abs=1e-12)
    assert max_pos == expect[2]

    from safetensors.torch import load_file

    sidecar = load_file(out / "yarnconv_rope.safetensors")
    assert sidecar["inv_freq"].tolist() == inv
    assert sidecar["model.layers.1.self_attn.rotary_emb.inv_freq"].tolist() == inv
    assert sidecar["attention_scaling"].item() == pytest.approx(scaling, rel=1e-7)


def test_extended_model_logits_differ_only_through_rope(tmp_path: Path, llama_dir: Path) -> None:
    """Same weights, same tokens: logits change (YaRN is live), and equal a manual YaRN patch."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    assert run("extend", llama_dir, "-o", out, "--scale", "4", "-q").exit_code == 0
    ids = torch.arange(0, 96).remainder(128).unsqueeze(0)
    base = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    ext = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = base(ids).logits, ext(ids).logits
        assert (a - b).abs().max() > 1e-3
        # Patch the base model's rotary buffers with yarnconv's numbers: logits must match exactly.
        view = read_config(json.loads((out / "config.json").read_text()))
        res = rope.compute(view.rope.spec(view.head_dim), precision="float32")
        base.model.rotary_emb.inv_freq.copy_(torch.tensor(res.inv_freq))
        base.model.rotary_emb.attention_scaling = rope.compute(view.rope.spec(view.head_dim)).attention_factor
        assert torch.equal(base(ids).logits, b)


def test_copy_mode_and_force_and_dry_run(tmp_path: Path, llama_dir: Path) -> None:
    out = tmp_path / "out"
    dry = run("extend", llama_dir, "-o", out, "--scale", "2", "--dry-run")
    assert dry.exit_code == 0 and "dry run" in dry.stdout and not out.exists()
    assert run("extend", llama_dir, "-o", out, "--scale", "2", "--link", "copy", "-q").exit_code == 0
    shard = next(llama_dir.glob("*.safetensors"))
    assert os.stat(shard).st_ino != os.stat(out / shard.name).st_ino
    again = run("extend", llama_dir, "-o", out, "--scale", "4", "-q")
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert run("extend", llama_dir, "-o", out, "--scale", "4", "--force", "-q").exit_code == 0
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["factor"] == 4.0
    # Re-extending the output keeps YaRN relative to the true original length and the history.
    out2 = tmp_path / "out2"
    assert run("extend", out, "-o", out2, "--scale", "8", "-q").exit_code == 0
    record = json.loads((out2 / "yarnconv.json").read_text())
    assert record["original_context"] == 4096 and record["factor"] == 8.0 and record["previous"]["factor"] == 4.0
    assert not list(tmp_path.glob(".yarnconv-*"))


def test_inspect_json_and_human(tmp_path: Path, llama_dir: Path) -> None:
    result = run("inspect", llama_dir, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["model_type"] == "llama" and report["rotary_dim"] == 16 and report["parameters"] > 0
    assert report["max_position_embeddings"] == 4096 and report["rope"]["rope_type"] == "default"
    assert {r["verdict"] for r in report["runtimes"]} == {"same"}
    out = tmp_path / "out"
    run("extend", llama_dir, "-o", out, "--scale", "16", "-q")
    human = run("inspect", out)
    assert human.exit_code == 0 and "yarn" in human.stdout and "attention factor 1.27726" in human.stdout
    assert "transformers 4.44-4.50   DIFFERS" in human.stdout


# ------------------------------------------------------------------------------------ bad input


def _corrupt(kind: str, src: Path) -> list[str]:
    """Damage a fresh checkpoint in one way; return the extra CLI args for that case."""
    shard = src / "model-00001-of-00002.safetensors"
    if kind == "missing-config":
        (src / "config.json").unlink()
    elif kind == "invalid-config":
        (src / "config.json").write_text('{"model_type": "llama", ')
    elif kind == "truncated-shard":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) - 100])
    elif kind == "garbled-header":
        data = shard.read_bytes()
        shard.write_bytes(data[:8] + b"\xff" * 20 + data[28:])
    elif kind == "absurd-header-length":
        data = shard.read_bytes()
        shard.write_bytes(struct.pack("<Q", 1 << 62) + data[8:])
    elif kind == "index-missing-shard":
        (src / "model-00002-of-00002.safetensors").unlink()
    elif kind == "unsupported-model":
        (src / "config.json").write_text(json.dumps({"model_type": "bloom", "n_head": 4, "hidden_size": 64}))
    elif kind == "no-weights":
        for p in src.glob("*.safetensors*"):
            p.unlink()
    elif kind in SAFETENSORS_DAMAGE:
        _rewrite_header(shard, kind)
    elif kind == "nested-json":
        (src / "config.json").write_text("[" * 100000 + "]" * 100000)
    elif kind == "negative-theta":
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "rope_theta": -10000.0}))
    elif kind == "shard-is-a-directory":
        shard.unlink()
        shard.mkdir()
    return {
        "original-far-above": ["--scale", "2", "--original-context", "1000000000"],
        "factor-below-one": ["--scale", "0.5"],
        "factor-nan": ["--scale", "nan"],
        "target-below-current": ["--target-context", "2048"],
        "scale-and-target": ["--scale", "2", "--target-context", "16384"],
    }.get(kind, ["--scale", "2"])


# Headers the safetensors library itself rejects (each checked against safe_open below).
SAFETENSORS_DAMAGE = [
    "overlapping-offsets", "hole-between-tensors", "trailing-bytes", "header-length-minus-one", "header-length-plus-one",
    "unknown-dtype", "string-offsets", "float-offsets", "non-string-metadata", "duplicate-tensor-key",
]  # fmt: skip


def _rewrite_header(shard: Path, kind: str) -> None:
    """Re-encode ``shard``'s header with one defect, keeping its data bytes."""
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    first, second = header[names[0]], header[names[1]]
    raw = None
    if kind == "overlapping-offsets":
        second["data_offsets"] = list(first["data_offsets"])
    elif kind == "hole-between-tensors":
        for entry in header.values():
            if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] > 0:
                entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
        body = body + b"\0" * 4
    elif kind == "trailing-bytes":
        body = body + b"\0" * 16
    elif kind == "unknown-dtype":
        first["dtype"] = "F33"
    elif kind == "string-offsets":
        first["data_offsets"] = [str(o) for o in first["data_offsets"]]
    elif kind == "float-offsets":
        first["data_offsets"] = [float(o) for o in first["data_offsets"]]
    elif kind == "non-string-metadata":
        header["__metadata__"] = {"format": "pt", "step": 3}
    elif kind == "duplicate-tensor-key":
        text = json.dumps(header)
        raw = (text[:-1] + ", " + json.dumps(names[0]) + ": " + json.dumps(first) + "}").encode()
    raw = raw or json.dumps(header).encode()
    length = len(raw) + {"header-length-minus-one": -1, "header-length-plus-one": 1}.get(kind, 0)
    shard.write_bytes(struct.pack("<Q", length) + raw + body)


USAGE = {"scale-and-target"}
BAD = [
    "missing-config", "invalid-config", "truncated-shard", "garbled-header", "absurd-header-length",
    "index-missing-shard", "unsupported-model", "no-weights", "factor-below-one", "factor-nan",
    "target-below-current", "scale-and-target", "nested-json", "negative-theta",
    "original-far-above", "shard-is-a-directory", *SAFETENSORS_DAMAGE,
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_line_error_no_output(tmp_path: Path, kind: str) -> None:
    src = write_checkpoint(tmp_path / "model", tiny_config("llama"))
    args = _corrupt(kind, src)
    before = tree_hashes(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extend", str(src), "-o", str(out), *args])
    assert result.exit_code == (2 if kind in USAGE else 1), (kind, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    if kind in SAFETENSORS_DAMAGE and kind != "duplicate-tensor-key":  # safetensors silently keeps the last duplicate
        from safetensors import SafetensorError, safe_open

        with pytest.raises(SafetensorError), safe_open(src / "model-00001-of-00002.safetensors", "numpy") as f:  # the reference refuses it too
            list(f.keys())
        inspected = CliRunner().invoke(main, ["inspect", str(src)])
        assert inspected.exit_code == 1 and inspected.stderr.startswith("Error: "), inspected.output
    assert not out.exists() and not list(tmp_path.glob(".yarnconv-*"))
    assert tree_hashes(src) == before


def test_output_inside_input_and_missing_source(tmp_path: Path, llama_dir: Path) -> None:
    inside = run("extend", llama_dir, "-o", llama_dir / "sub", "--scale", "2")
    assert inside.exit_code == 1 and "inside the input" in inside.stderr
    same = run("extend", llama_dir, "-o", llama_dir, "--scale", "2", "--force")
    assert same.exit_code == 1 and "is the input" in same.stderr
    parent = run("extend", llama_dir, "-o", llama_dir.parent, "--scale", "2", "--force")
    assert parent.exit_code == 1 and "contains the input" in parent.stderr
    missing = run("inspect", tmp_path / "nope")
    assert missing.exit_code == 1 and "no such model directory" in missing.stderr
    offline = run("inspect", "some-org/some-model-that-is-not-cached")
    assert offline.exit_code == 1 and "not in the local HF cache" in offline.stderr


def test_python_api_matches_cli(tmp_path: Path, llama_dir: Path) -> None:
    """The library entry and the command write the same files and accept and refuse the same flags."""
    import yarnconv
    from yarnconv.api import ExtendJob, GGUFOptions
    from yarnconv.errors import UsageError
    from yarnconv.plan import ExtendRequest

    job = ExtendJob(output=str(tmp_path / "api"), rope=ExtendRequest(scale=8.0, beta_fast=16.0, schema="v5"), precompute_inv_freq=True)
    result = yarnconv.extend(llama_dir, job, progress=False)
    cli = run("extend", llama_dir, "-o", tmp_path / "cli", "--scale", "8", "--beta-fast", "16", "--schema", "v5", "--precompute-inv-freq", "-q", "--json")
    assert cli.exit_code == 0, cli.output
    assert result.route == "hf" and result.record["max_position_embeddings"]["after"] == 32768
    for name in ("config.json", "tokenizer_config.json", "yarnconv_rope.safetensors"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    drop = ("created", "output", "card")
    api_record, cli_record = ({k: v for k, v in r.items() if k not in drop} for r in (result.record, json.loads(cli.stdout)))
    assert api_record == cli_record
    assert yarnconv.inspect(tmp_path / "api").record["rope"]["factor"] == 8.0
    # the same refusal on both sides: a GGUF setting on an HF output is a usage error (exit 2)
    with pytest.raises(UsageError, match="--outtype does not apply to an HF checkpoint output"):
        yarnconv.extend(llama_dir, ExtendJob(output=str(tmp_path / "x"), export=GGUFOptions(outtype="f16"), rope=ExtendRequest(scale=2.0)))
    refused = run("extend", llama_dir, "-o", tmp_path / "x", "--scale", "2", "--outtype", "f16")
    assert refused.exit_code == 2 and "--outtype does not apply to an HF checkpoint output" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_fuzzed_safetensors_headers_are_never_accepted_when_safetensors_refuses(tmp_path: Path) -> None:
    """Random edits of a real header: whenever the safetensors library refuses the file, so does
    yarnconv (with a one-line YarnconvError, never another exception)."""
    import random

    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from yarnconv.errors import YarnconvError
    from yarnconv.storage.weights import read_safetensors_header

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.bfloat16), "c": torch.zeros(2, dtype=torch.int64)}, str(good), metadata={"format": "pt"})
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n]
    rng = random.Random(1234)
    tokens = [b"0", b"1", b"4", b"-1", b"1.0", b'"0"', b"null", b"true", b"[]", b"{}", b'"F33"', b'"F32"', b'"I64"', b",", b":", b"]", b"}"]
    path = tmp_path / "fuzz.safetensors"
    refused_by_reference = 0
    for _ in range(400):
        h, body, length = bytearray(header), bytearray(data[8 + n :]), None
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(5)
            i = rng.randrange(len(h))
            if op == 0:
                h[i : i + rng.randint(1, 3)] = rng.choice(tokens)
            elif op == 1:
                h[i] = rng.randrange(32, 127)
            elif op == 2:
                body += bytes(rng.randint(1, 8))
            elif op == 3 and len(body) > 1:
                del body[-rng.randint(1, min(8, len(body))) :]
            else:
                length = len(h) + rng.choice([-2, -1, 1, 2])
        path.write_bytes(struct.pack("<Q", length if length is not None else len(h)) + bytes(h) + bytes(body))
        try:
            with safe_open(path, "numpy") as f:
                list(f.keys())
            reference_ok = True
        except SafetensorError:
            reference_ok, refused_by_reference = False, refused_by_reference + 1
        try:
            read_safetensors_header(path)
            ours_ok = True
        except YarnconvError:
            ours_ok = False
        assert ours_ok <= reference_ok, bytes(h)
    assert refused_by_reference > 100  # the fuzzing reached real defects


def test_mistral_consolidated_file_beside_the_shards_is_not_read(tmp_path: Path) -> None:
    """A local Mistral download: consolidated.safetensors repeats the weights under other names."""
    import torch
    from safetensors.torch import save_file

    src = write_checkpoint(tmp_path / "model", tiny_config("mistral"), shards=2)
    before = json.loads(run("inspect", src, "--json").stdout)["parameters"]
    save_file({"tok_embeddings.weight": torch.zeros(128, 64), "layers.0.attention.wq.weight": torch.zeros(64, 64)}, str(src / "consolidated.safetensors"))
    report = json.loads(run("inspect", src, "--json").stdout)
    assert report["parameters"] == before
    assert "consolidated.safetensors" not in report["weight_files"]
    out = tmp_path / "out"
    assert run("extend", src, "-o", out, "--scale", "2", "-q").exit_code == 0
    single = write_checkpoint(tmp_path / "single", tiny_config("mistral"), shards=1)
    save_file({"tok_embeddings.weight": torch.zeros(128, 64)}, str(single / "consolidated.safetensors"))
    assert json.loads(run("inspect", single, "--json").stdout)["parameters"] == before


def test_odd_but_harmless_config_values_are_not_errors(tmp_path: Path) -> None:
    """A list-valued dtype or architectures entry is carried through, never an internal error."""
    src = write_checkpoint(tmp_path / "model", tiny_config("llama"), shards=1)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "torch_dtype": ["float32"], "architectures": "LlamaForCausalLM"}))
    assert run("inspect", src).exit_code == 0
    assert run("extend", src, "-o", tmp_path / "out", "--scale", "2", "-q").exit_code == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == ["float32"]


HEAVY = ("huggingface_hub", "httpx", "requests", "torch", "transformers", "numpy", "safetensors", "gguf", "tqdm")


@pytest.mark.parametrize("args", [[], ["--dry-run"], ["--json"]])
def test_extend_process_imports_nothing_heavy(tmp_path: Path, llama_dir: Path, args: list[str]) -> None:
    """extend is a config edit: its start-up must not pay for the Hub client (the card is a template),
    torch or the runtimes; a dry run not even numpy. Writing one draws the card's figure inside the
    commit (issue 21), which needs matplotlib and so numpy. Checked by module names, not by a clock."""
    import subprocess
    import sys

    out = [] if "--dry-run" in args else ["-o", str(tmp_path / "out")]
    code = "import sys\nfrom yarnconv.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    code += "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", code, "extend", str(llama_dir), "--scale", "4", "-q", *out, *args], capture_output=True, text=True, timeout=120)
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    loaded = set(line.split()[1:])
    heavy = set(HEAVY) - ({"numpy"} if out else set())
    assert "yarnconv" in loaded and not loaded & heavy, sorted(loaded & heavy)
    if out:
        assert (tmp_path / "out" / "yarnconv-rope.png").is_file() == ("matplotlib" in loaded)
        assert (tmp_path / "out" / "README.md").read_text().startswith("---\ntags:\n- yarn\n")
