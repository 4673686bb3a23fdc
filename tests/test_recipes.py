"""TOML recipes and ``yarnconv run``: every shipped recipe parses and dry-runs against the real config
of its model (tests/corpus, as the Hub publishes it), bad recipes are one line naming the line and
key, the SmolLM2 recipe runs end to end, and shipped recipes are found by name after pip install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from yarnconv.cli import main
from yarnconv.publish.recipe import load_recipe, shipped

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "corpus"  # {"config": config.json as the Hub publishes it, "origin": where}
# shipped recipe -> (its model's config in tests/corpus, original, new context)
SHIPPED = {
    "llama-2-7b-64k": ("llama-2-7b.json", 4096, 65536),
    "llama-2-7b-128k": ("llama-2-7b.json", 4096, 131072),
    "mistral-7b-128k": ("mistral-7b-v0.1.json", 8192, 131072),
    "qwen2.5-7b-instruct-128k": ("qwen2.5-7b-instruct.json", 32768, 131072),
    "qwen3-8b-128k": ("qwen3-8b.json", 32768, 131072),
    "smollm2-135m-32k": ("smollm2-135m-instruct.json", 8192, 32768),
}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def test_the_shipped_set_is_the_issue_list_and_recipes_dir_is_it() -> None:
    assert sorted(shipped()) == sorted(SHIPPED)
    assert sorted(p.name for p in (ROOT / "recipes").glob("*.toml")) == sorted(f"{n}.toml" for n in SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_recipe_dry_runs_on_its_models_real_config(name: str, tmp_path: Path) -> None:
    config, original, context = SHIPPED[name]
    model = tmp_path / "model"  # the Hub config beside a placeholder weight file: planning reads only the config
    model.mkdir()
    (model / "config.json").write_text(json.dumps(json.loads((CORPUS / config).read_text())["config"]))
    save_file({"placeholder": torch.zeros(1)}, model / "model.safetensors")
    code, out, err = run(name, "--model", str(model), "--dry-run", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["dry_run"] and r["plan"]["max_position_embeddings"]["after"] == context
    block = r["plan"]["config"]["rope_scaling"]
    assert block["rope_type"] == "yarn" and block["original_max_position_embeddings"] == original and block["factor"] == context / original
    assert r["steps"][0].startswith(f"extend {model}") and any("GGUF" in s for s in r["steps"])
    assert not (tmp_path / "OUTPUT").exists() and sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


BAD = [
    ("[extend]\nscale = 4.0\n[exend]\nx = 1\n", 3, "unknown table [exend]"),
    ("[extend]\nscale = 4.0\nbeta_fats = 32.0\n", 3, "unknown key 'beta_fats' in [extend]"),
    ("[extend]\nscale = \"16\"\n", 2, "[extend] scale must be a number"),
    ("[extend]\nscale = 4.0\ntarget_context = 131072\n", 2, "exactly one of scale and target_context"),
    ("[extend]\nscale = -2.0\n", 2, "must be positive"),
    ("[extend]\nscale = 4.0\nschema = \"v6\"\n", 3, "is not one of portable, v5, exllamav2"),
    ("[extend]\nscale = 4.0\n[gguf]\nouttype = [\"q4_k_m\", 8]\n", 4, "must be a string or a list of strings"),
    ("[extend]\nscale = 4.0\n[gguf]\nouttype = \"iq2_xs\"\n", 4, "needs an importance matrix"),
    ("[extend]\nscale = 4.0\n[verify]\nlengths = \"8k\"\n", 4, "need passkey = true"),
    ("[extend]\nscale = 4.0\n[verify]\npasskey = \"yes\"\n", 4, "must be true or false"),
    ("[extend]\nscale = 4.0\nscale = 2.0\n", None, "not valid TOML"),
    ("[extend]\nscale = 4.0\n[hf]\ndtype = \"fp8\"\n", 4, "is not one of f32, f16, bf16"),
    ("[extend]\nscale = 4.0\n[hf]\nmax_shard_size = \"big\"\n", 4, "is not a size"),
    ("[extend]\nscale = 4.0\n[push]\nprivate = true\n", 3, "[push] needs repo"),
    ("[extend]\nscale = 4.0\n[eval]\nstrid = 256\n", 4, "unknown key 'strid' in [eval]"),
    ("[extend]\nscale = 4.0\n[eval]\npasskey_trials = 3\n", 4, "passkey_trials needs passkey = true"),
    ("[extend]\nscale = 4.0\n[eval]\nmethods = 3\n", 4, "[eval] methods must be a string"),
    ("[extend]\nscale = 4.0\n[eval]\nengine = \"vllm\"\n", 4, "is not one of transformers, llama.cpp, reference"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_bad_recipes_are_one_line_naming_the_line(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[source]\nmodel = \"x\"\n" + text)
    code, _, err = run(str(recipe), "--dry-run")
    assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err
    if line is not None:
        assert f"bad.toml:{line + 2}:" in err, err
    code, _, err = run("no-such-recipe", "--dry-run")
    assert code == 1 and "smollm2-135m-32k" in err  # the error lists the shipped names


def test_an_unknown_top_level_key_names_its_line(tmp_path: Path) -> None:
    recipe = tmp_path / "top.toml"
    recipe.write_text('[recipe]\nname = "x"\n'.replace("[recipe]", "frobnicate_level = 3\n[recipe]") + '[source]\nmodel = "x"\n[extend]\nscale = 4.0\n')
    code, _, err = run(str(recipe), "--dry-run")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "top.toml:1: unknown key 'frobnicate_level' outside any table" in err, err


def test_smollm2_recipe_runs_end_to_end(smollm2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "smollm2-32k"
    code, stdout, err = run("smollm2-135m-32k", "--model", str(smollm2_dir), "-o", str(out), "--json", "-q")
    assert code == 0, err
    r = json.loads(stdout)
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768 and config["rope_scaling"]["factor"] == 4.0
    assert r["extend"]["verify"]["ok"] and all(v["verify"]["ok"] for v in r["gguf"]["variants"])
    assert (out / "yarnconv-recipe.toml").read_text() == load_recipe("smollm2-135m-32k").text
    names = sorted(p.name for p in (tmp_path / "smollm2-32k-GGUF").glob("*.gguf"))
    assert names == ["SmolLM2-135M-Instruct-YaRN-32k-Q4_K_M.gguf", "SmolLM2-135M-Instruct-YaRN-32k-Q8_0.gguf"]
    assert {v["outtype"]: v["vs_float"]["kl_mean"] < 0.25 for v in r["gguf"]["variants"]} == {"q8_0": True, "q4_k_m": True}
    from huggingface_hub import ModelCard

    hf_card, gguf_card = (ModelCard.load(Path(c)) for c in r["cards"])
    assert hf_card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and hf_card.data.to_dict().get("base_model_relation") is None
    assert gguf_card.data.base_model_relation == "quantized" and "gguf" in gguf_card.data.tags
    assert "passed" in hf_card.text and "llama.cpp, 6 of 6 checks passed" in gguf_card.text and "[extend]" in gguf_card.text
    for v in r["gguf"]["variants"]:  # what each quantized type cost, as the export measured it
        assert f"| {Path(v['output']).name} | " in gguf_card.text and f"| {v['vs_float']['kl_mean']:.4f} |" in gguf_card.text
    for folder in (out, tmp_path / "smollm2-32k-GGUF"):  # the figure: a real PNG the card embeds
        png = folder / "yarnconv-rope.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(yarnconv-rope.png)" in (folder / "README.md").read_text()
    from PIL import Image

    with Image.open(out / "yarnconv-rope.png") as image:  # two panels: dimensions, and verify by position
        assert image.format == "PNG" and image.size[1] > image.size[0] * 0.6


def test_shipped_recipes_are_found_after_pip_install(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so the build leaves the checkout untouched
    shutil.copytree(ROOT / "yarnconv", src / "yarnconv", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(tmp_path / "site"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = "from yarnconv.publish.recipe import load_recipe, shipped; print(len(shipped()), load_recipe('qwen3-8b-128k').extend.scale)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, timeout=120)
    assert done.stdout.split() == ["6", "4.0"], done.stderr[-2000:]
