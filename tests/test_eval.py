"""``yarnconv eval``: the protocol recomputed by hand, transformers against llama.cpp on the same model,
the rows (base, linear, dynamic, YaRN) as a user would write their configs, the report, the card and
bad input. Tiny checkpoints carry SmolLM2's real tokenizer; the cross-check runs the real SmolLM2."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main
from yarnconv.errors import UsageError
from yarnconv.evaluation.protocol import Protocol, default_lengths, parse_lengths

STRIDE, WINDOWS = 64, 2


def evaluate(*args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(main, ["eval", *args, "--json"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else {}, result.stderr


def text_file(path: Path, chars: int = 60_000) -> Path:
    """Real text found on this machine: Python's own sources, in a fixed order."""
    parts, size = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        parts.append(p.read_text(encoding="utf-8", errors="replace"))
        size += len(parts[-1])
        if size >= chars:
            break
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def test_lengths_ladder_and_protocol() -> None:
    assert parse_lengths("4k, 2K,32768,2k") == [2048, 4096, 32768]
    with pytest.raises(UsageError):
        parse_lengths("2k,long")
    assert default_lengths(8192, 32768) == [2048, 4096, 8192, 16384, 32768]
    assert default_lengths(4096, 65536) == [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    assert default_lengths(8192, 20000) == [2048, 4096, 8192, 16384, 20000]
    p = Protocol((1024, 4096), stride=256, windows=3)
    assert p.needed == 4096 + 2 * 256
    assert list(p.targets(1024)) == list(range(768, 1024))
    # static rope: one forward per window start serves every length; dynamic: one per length, ascending
    assert p.forwards(False) == [(0, 4096, [1024, 4096]), (256, 4096, [1024, 4096]), (512, 4096, [1024, 4096])]
    assert [(s, n) for s, n, _ in p.forwards(True)] == [(0, 1024), (256, 1024), (512, 1024), (0, 4096), (256, 4096), (512, 4096)]
    with pytest.raises(UsageError):
        Protocol((256, 512), stride=256)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    """A tiny Llama (256 tokens) with SmolLM2's tokenizer, extended x4 to 1024, and a text file."""
    root = tmp_path_factory.mktemp("eval")
    src = tiny_with_tokenizer(root / "src", "llama", smollm2_dir)
    ext = root / "ext"
    run_cli("extend", str(src), "--scale", "4", "-o", str(ext), "-q")
    return {"src": src, "ext": ext, "text": text_file(root / "doc.txt"), "root": root}


def by_hand(model_dir: Path, ids: list[int], length: int) -> float:
    """The protocol as written in the README, with no shortcut: every window run on its own."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total, count = 0.0, 0
    for k in range(WINDOWS):
        window = ids[k * STRIDE : k * STRIDE + length]
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1)
        for t in range(length - STRIDE, length):
            total -= float(logp[t - 1, window[t]])
            count += 1
    return float(np.exp(total / count))


@pytest.mark.needs("transformers")
def test_perplexity_matches_a_hand_computation_for_every_row(tiny: dict[str, Path]) -> None:
    """Each row's number equals the sum of NLL over the scored tokens of separately run windows, in
    configs written by hand the way users write them (linear: factor and s*L; dynamic: factor, L kept)."""
    from transformers import AutoTokenizer

    code, r, err = evaluate(str(tiny["ext"]), "--lengths", "256,512,1024", "--stride", str(STRIDE), "--windows", str(WINDOWS), "--text", str(tiny["text"]))
    assert code == 0, err
    assert r["lengths"] == [256, 512, 1024] and [x["label"] for x in r["rows"]] == ["extended", "base", "linear", "dynamic", "yarn"]
    assert r["rows"][-1]["same_as"] == "extended" and r["rows"][-1]["ppl"] == r["rows"][0]["ppl"]
    assert all(n == STRIDE * WINDOWS for x in r["rows"] for n in x["scored_tokens"])
    ids = list(AutoTokenizer.from_pretrained(tiny["ext"])(tiny["text"].read_text())["input_ids"])
    src_config = json.loads((tiny["src"] / "config.json").read_text())
    configs = {
        "base": src_config,
        "linear": {**src_config, "max_position_embeddings": 1024, "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
        "dynamic": {**src_config, "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}},
    }
    rows = {x["label"]: x for x in r["rows"]}
    for label, cfg in configs.items():
        d = tiny["root"] / f"hand-{label}"
        shutil.copytree(tiny["src"], d, dirs_exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg))
        configs[label] = d
    configs["extended"] = tiny["ext"]
    for label, d in configs.items():
        for i, length in enumerate(r["lengths"]):
            assert rows[label]["ppl"][i] == pytest.approx(by_hand(d, ids, length), rel=2e-5), (label, length)
    # against the base on the same tokens: exp(mean NLL difference) = the ratio of the two perplexities
    for label in ("extended", "linear", "dynamic"):
        for i, v in enumerate(rows[label]["vs_base"]):
            assert v["ppl_ratio"] == pytest.approx(rows[label]["ppl"][i] / rows["base"]["ppl"][i], rel=1e-3)
            assert v["ci95"][0] <= v["ppl_ratio"] <= v["ci95"][1]
    assert rows["dynamic"]["vs_base"][0] == {"ppl_ratio": 1.0, "ci95": [1.0, 1.0]}  # the same rope at the original length
    # the rows differ from each other by far more than that (so a row built wrong would show)
    ppl = {label: rows[label]["ppl"][2] for label in configs}
    assert min(abs(a - b) / a for a in ppl.values() for b in ppl.values() if a != b) > 1e-3, ppl
    assert len(set(ppl.values())) == 4


@pytest.mark.needs("transformers")
def test_the_streaming_reference_gives_transformers_numbers(tiny: dict[str, Path]) -> None:
    """--engine reference (for models transformers cannot hold) runs every row's rope itself, dynamic NTK's
    per-length base included, and lands on transformers' numbers."""
    args = ["--lengths", "256,512,1k", "--stride", "64", "--text", str(tiny["text"])]
    code, hf, err = evaluate(str(tiny["ext"]), *args)
    assert code == 0, err
    code, ref, err = evaluate(str(tiny["ext"]), *args, "--engine", "reference")
    assert code == 0, err
    assert ref["engine"] == "reference"
    for a, b in zip(hf["rows"], ref["rows"], strict=True):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-4), a["label"]
    assert set(ref["rows"][3]["reused"]) == {"256"}  # dynamic NTK at the original length is the base's plain RoPE


@pytest.mark.needs("transformers")
def test_report_figure_card_and_table(tiny: dict[str, Path]) -> None:
    out = tiny["root"] / "carded"
    run_cli("extend", str(tiny["src"]), "--scale", "4", "-o", str(out), "-q")
    card_before = (out / "README.md").read_text()
    assert "Long-context evaluation" not in card_before
    result = CliRunner().invoke(main, ["eval", str(out), "--lengths", "512,1k", "--stride", "128", "--methods", "linear", "--text", str(tiny["text"]), "--report", str(tiny["root"] / "copy.json")])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "extended" in result.output and "linear" in result.output
    saved = json.loads((out / "yarnconv-eval.json").read_text())
    assert saved == json.loads((tiny["root"] / "copy.json").read_text())
    assert [x["label"] for x in saved["rows"]] == ["extended", "base", "linear"] and len(saved["rows"][0]["ppl"]) == 2
    assert (out / "yarnconv-eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "## Long-context evaluation" in card and "(yarnconv-eval.png)" in card
    assert f"{saved['rows'][0]['ppl'][1]:.3f}" in card
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.tags  # still a card the Hub parses
    from yarnconv.publish.hub import publishable

    assert {"yarnconv-eval.json", "yarnconv-eval.png"} <= set(publishable(out)[0])


@pytest.mark.needs("transformers")
def test_passkey_runs_on_the_same_ladder_for_every_row(tiny: dict[str, Path]) -> None:
    code, r, err = evaluate(str(tiny["ext"]), "--lengths", "256,512", "--stride", "64", "--methods", "linear", "--passkey", "--passkey-trials", "1", "--text", str(tiny["text"]))
    assert code == 0, err
    pk = r["passkey"]
    assert {(p["model"], p["length"]) for p in pk["per_length"]} == {(m, n) for m in ("extended", "base", "linear") for n in (256, 512)}
    assert all(p["trials"] == 5 and 0 <= p["ci95"][0] <= p["accuracy"] <= p["ci95"][1] <= 1 for p in pk["per_length"])


@pytest.mark.needs("transformers")
def test_bad_input_is_one_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("def f():\n    return 1\n" * 20)
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny["ext"], no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json", "yarnconv-eval.json", "yarnconv-eval.png"):
        (no_tok / name).unlink(missing_ok=True)
    cases = {
        "the text is": [str(tiny["ext"]), "--lengths", "512,1k", "--text", str(short)],
        "length 2048 is past the model's context 1024": [str(tiny["ext"]), "--lengths", "1k,2k"],
        "has no tokenizer": [str(no_tok), "--lengths", "512"],
        "is not below the shortest length": [str(tiny["ext"]), "--lengths", "256,512", "--stride", "256"],
        "unknown method 'ntk'": [str(tiny["ext"]), "--methods", "linear,ntk"],
        "has no rope scaling": [str(tiny["src"]), "--lengths", "256"],
        "--engine llama.cpp runs GGUF files": [str(tiny["ext"]), "--engine", "llama.cpp"],
        "--passkey-trials does not apply": [str(tiny["ext"]), "--passkey-trials", "3"],
        "is neither an HF checkpoint directory nor a .gguf file": [str(tmp_path / "nothing")],
    }
    for expected, args in cases.items():
        code, _, err = evaluate(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and expected in lines[0], (expected, err)
    assert not (no_tok / "yarnconv-eval.json").exists()


@pytest.mark.needs("transformers")
def test_a_recipe_asks_for_eval(tiny: dict[str, Path]) -> None:
    recipe = tiny["root"] / "eval.toml"
    recipe.write_text(f'[source]\nmodel = "{tiny["src"]}"\n[extend]\nscale = 4.0\n[eval]\nlengths = "512,1k"\nstride = 128\nmethods = "linear"\ntext = ["{tiny["text"]}"]\n')
    out = tiny["root"] / "from-recipe"
    result = CliRunner().invoke(main, ["run", str(recipe), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert any(step.startswith("eval OUTPUT: perplexity at 512,1k") and "linear" in step for step in json.loads(result.stdout)["steps"])
    result = CliRunner().invoke(main, ["run", str(recipe), "-o", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert [x["label"] for x in r["eval"]["rows"]] == ["extended", "base", "linear"] and r["eval"]["lengths"] == [512, 1024]
    assert "## Long-context evaluation" in (out / "README.md").read_text()


@pytest.mark.needs("transformers", "llama_cpp")
def test_llama_cpp_rows_agree_with_transformers_rows(tiny: dict[str, Path]) -> None:
    """The F32 GGUF of the same model in llama.cpp, its base and linear rows made with llama.cpp's own rope
    flags, against the HF rows made as configs: the same perplexity at every length, within 0.5%."""
    gguf = tiny["root"] / "ext-F32.gguf"
    run_cli("export", str(tiny["ext"]), "--gguf", "--outtype", "f32", "-o", str(gguf), "-q")
    args = ["--lengths", "256,512,1k", "--stride", "64", "--methods", "linear,dynamic,yarn", "--text", str(tiny["text"])]
    code, hf, err = evaluate(str(tiny["ext"]), *args)
    assert code == 0, err
    code, gg, err = evaluate(str(gguf), *args)
    assert code == 0, err
    assert gg["engine"] == "llama.cpp" and gg["saved"].endswith("ext-F32.gguf.eval.json")
    g = {x["label"]: x for x in gg["rows"]}
    assert "dynamic NTK" in g["dynamic"]["not_run"] and g["dynamic"]["ppl"] == [None, None, None]
    assert g["yarn"]["same_as"] == "extended"
    for row in hf["rows"]:
        if row["label"] != "dynamic":
            assert g[row["label"]]["ppl"] == pytest.approx(row["ppl"], rel=5e-3), row["label"]
    # and the rows are told apart at that tolerance
    assert abs(g["linear"]["ppl"][2] / g["extended"]["ppl"][2] - 1) > 5e-3 or abs(g["base"]["ppl"][2] / g["extended"]["ppl"][2] - 1) > 5e-3


@pytest.mark.slow
@pytest.mark.needs("transformers", "llama_cpp")
def test_smollm2_transformers_and_llama_cpp_agree(smollm2_dir: Path, tmp_path: Path) -> None:
    """The real SmolLM2 x4: its F32 GGUF in llama.cpp and the checkpoint in transformers give the same
    perplexity at 2k (within 0.5%, the issue's bar), on real text, extended and base rows."""
    ext, gguf = tmp_path / "ext", tmp_path / "smol-F32.gguf"
    run_cli("extend", str(smollm2_dir), "--scale", "4", "-o", str(ext), "-q")
    run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(gguf), "-q")
    args = ["--lengths", "1k,2k", "--methods", "", "--text", str(text_file(tmp_path / "doc.txt", 40_000))]
    code, hf, err = evaluate(str(ext), *args)
    assert code == 0, err
    code, gg, err = evaluate(str(gguf), *args)
    assert code == 0, err
    assert gg["text"]["documents"][0]["tokens"] == hf["text"]["documents"][0]["tokens"]
    for a, b in zip(hf["rows"], gg["rows"], strict=True):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=5e-3), (a["label"], a["ppl"], b["ppl"])
    assert 1 < hf["rows"][0]["ppl"][1] < 30  # a real model reading real text


@pytest.mark.needs("transformers")
def test_sigterm_leaves_no_scratch_and_no_report(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Killed mid-run, eval removes its scratch variants and writes no report (the CLI in a subprocess)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model, scratch = tmp_path / "model", tmp_path / "tmp"
    shutil.copytree(tiny["ext"], model)
    for leftover in model.glob("yarnconv-eval.*"):
        leftover.unlink()
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1"}
    args = ["eval", str(model), "--lengths", "256,512", "--stride", "64", "--windows", "120", "--text", str(tiny["text"])]
    proc = subprocess.Popen([sys.executable, "-m", "yarnconv", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(scratch.glob("yarnconv-eval-*/base/config.json")):
        time.sleep(0.05)  # the base row's variant is written: scoring is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated by SIGTERM" in err and "Traceback" not in err, err
    assert list(scratch.iterdir()) == [] and not list(model.glob("yarnconv-eval.*"))
