"""The verdict machinery itself: the logit comparison on hand-computed cases, and checks that
never pass what did not run."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from yarnconv.cli import main
from yarnconv.verify.check import Bound, demo_ok, judge, skipped
from yarnconv.verify.logits import LOGIT_BOUNDS, compare_logits
from yarnconv.verify.rotary import ROTARY_BOUNDS


def test_compare_logits_on_hand_computed_cases() -> None:
    same = compare_logits(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert same.kl_max == 0 and same.top1_agreement == 1
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2
    c = compare_logits(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))
    assert c.kl_max == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), rel=1e-12)
    assert c.top1_agreement == 1  # a tie in the reference: either pick agrees
    flipped = compare_logits(np.array([[0.0, 5.0], [5.0, 0.0]]), np.array([[0.0, 5.0], [0.0, 5.0]]))
    assert flipped.top1_agreement == 0.5 and flipped.kl[0] == 0 and flipped.kl[1] > 4
    assert compare_logits(np.array([[0.0, 1.0]]), np.array([[10.0, 11.0]])).kl_max == pytest.approx(0, abs=1e-12)  # shift-invariant
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(np.zeros((2, 3)), np.zeros((3, 3)))


def test_region_statistics_on_hand_cases() -> None:
    from yarnconv.verify.run import region_stats

    ref = np.array([[0.0, 0.0], [0.0, 0.0]])
    same = region_stats(ref, ref, np.array([1, -1]))
    assert same["nmse"] == 0 and same["ppl_ratio"] == 1 and same["kl_max"] == 0
    # token 1 follows: the candidate gives it p = 1/4 instead of 1/2, so perplexity doubles
    worse = region_stats(ref, np.array([[math.log(3), 0.0], [0.0, 0.0]]), np.array([1, -1]))
    assert worse["ppl_ratio"] == pytest.approx(2.0, rel=1e-12)


def test_checks_pass_only_within_their_bounds_and_never_when_skipped() -> None:
    rope_ok = {"lengths_match": True, "max_rel_diff_float32": 0.0, "attention_factor_diff": 0.0}
    logits_ok = {"kl_max": 1e-6, "top1_agreement": 1.0}
    assert judge("rope", rope_ok, ROTARY_BOUNDS).passed and judge("logits", logits_ok, LOGIT_BOUNDS).passed
    assert not judge("rope", {**rope_ok, "max_rel_diff_float32": 1e-3}, ROTARY_BOUNDS).passed
    assert not judge("rope", {**rope_ok, "lengths_match": False}, ROTARY_BOUNDS).passed
    bad = judge("logits", {"kl_max": 0.5, "top1_agreement": 1.0}, LOGIT_BOUNDS)
    assert bad.status == "failed" and "kl_max <= 0.0001" in bad.reason
    assert not judge("logits", {}, LOGIT_BOUNDS).passed  # nothing measured is not a pass
    missing = skipped("logits", "llama-cpp-python is not installed", LOGIT_BOUNDS)
    assert not demo_ok([judge("rope", rope_ok, ROTARY_BOUNDS), missing])
    assert demo_ok([judge("rope", rope_ok, ROTARY_BOUNDS), judge("logits", logits_ok, LOGIT_BOUNDS)])
    assert not demo_ok([])
    assert str(Bound("top1_agreement", ">=", 0.999)) == "top1_agreement >= 0.999"


# ------------------------------------------------------------------------------ yarnconv verify


@pytest.fixture(scope="module")
def extended_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import tiny_config, write_checkpoint

    root = tmp_path_factory.mktemp("verify")
    src = write_checkpoint(root / "src", tiny_config("llama", max_position_embeddings=256, initializer_range=0.1, vocab_size=512), shards=2)
    out = root / "ext"
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(out), "-q"]).exit_code == 0
    return out


def _verify(model: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["verify", str(model), "--json"])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def test_verify_passes_a_correct_conversion_and_saves_the_report(extended_llama: Path) -> None:
    code, report = _verify(extended_llama)
    assert code == 0 and report["ok"], report
    assert [c["status"] for c in report["checks"]] == ["passed"] * 4
    assert report["probe"]["positions"][-1] == 1023  # the rope is exercised up to the new context's last position
    for c in report["checks"][1:3]:  # the two logit regions carry llama-perplexity's statistics
        m = c["measured"]
        assert m["nmse"] < 1e-9 and m["ppl_ratio"] == pytest.approx(1, abs=1e-4) and m["kl_p999"] <= m["kl_max"]
    assert json.loads((extended_llama / "yarnconv-verify.json").read_text())["checks"] == report["checks"]


def _broken(extended_llama: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    model = tmp_path / "broken"
    shutil.copytree(extended_llama, model)
    cfg = json.loads((model / "config.json").read_text())
    edit(cfg)
    (model / "config.json").write_text(json.dumps(cfg))
    return model


BROKEN = {
    "wrong original length": (lambda c: c["rope_scaling"].update(original_max_position_embeddings=128), "transformers rope table", "inv_freq_max_rel_diff"),
    "rope block dropped": (lambda c: c.pop("rope_scaling"), "transformers applies the planned scaling", "ignores the rope block"),
    "rope_type missing": (lambda c: [c["rope_scaling"].pop(k) for k in ("type", "rope_type")], "transformers applies the planned scaling", "ignores the rope block"),
    "attention factor dropped": (lambda c: c["rope_scaling"].update(attention_factor=1.0), "transformers rope table", "attention_factor_diff"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_verify_names_the_cause_of_a_broken_conversion(extended_llama: Path, tmp_path: Path, case: str) -> None:
    edit, check, cause = BROKEN[case]
    code, report = _verify(_broken(extended_llama, tmp_path, edit))
    assert code == 3 and not report["ok"]
    failed = {c["name"]: c for c in report["checks"] if c["status"] == "failed"}
    assert check in failed and cause in failed[check]["reason"], failed
    assert any(name.startswith("transformers logits beyond") for name in failed)


def test_verify_bad_input_is_one_line(tmp_path: Path, extended_llama: Path) -> None:
    for args, message in (
        ([str(tmp_path / "missing")], "is neither a checkpoint directory nor a .gguf file"),
        ([str(extended_llama), "--tokens", "2"], "too short a probe"),
    ):
        result = CliRunner().invoke(main, ["verify", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code in (1, 2) and len(lines) == 1 and message in lines[0], result.output


def test_extend_verify_passes_and_records_the_report(extended_llama: Path, tmp_path: Path) -> None:
    src = extended_llama.parent / "src"
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(out), "--verify", "-q", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["verify"]["ok"] and (out / "yarnconv-verify.json").is_file()
    refused = CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(tmp_path / "d"), "--verify", "--dry-run"])
    assert refused.exit_code == 2 and "--verify does not apply to a dry run" in refused.stderr


def test_extend_verify_failure_exits_1_and_keeps_the_output(extended_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure path: verify is handed a plan that the written config does not follow (a wrong
    original length), standing in for a runtime that misreads the output."""
    from yarnconv.config import RopeBlock
    from yarnconv.verify import subject

    wrong = RopeBlock("yarn", theta=10000.0, factor=4.0, original_context=128, beta_fast=32.0, beta_slow=1.0)
    monkeypatch.setattr(subject, "intended_rope", lambda root, view: (wrong, "test"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extend", str(extended_llama.parent / "src"), "--scale", "4", "-o", str(out), "--verify", "-q"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 3 and len(lines) == 1, result.output
    assert "verification failed: transformers rope table" in lines[0] and f"the output is kept at {out}" in lines[0]
    assert (out / "config.json").is_file() and (out / "yarnconv-verify.json").is_file()


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma 3 (published gemma-3-1b-it config, shrunk: 6 layers, every 6th full attention)."""
    from helpers import write_checkpoint

    raw = json.loads((Path(__file__).parent / "corpus" / "gemma-3-1b-it.json").read_text())["config"]
    raw.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=16, num_hidden_layers=6)
    raw.update(vocab_size=128, max_position_embeddings=256, sliding_window=64, query_pre_attn_scalar=16)
    root = tmp_path_factory.mktemp("gemma3")
    src = write_checkpoint(root / "src", raw, shards=1)
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "--schema", "v5", "-o", str(root / "ext"), "-q"]).exit_code == 0
    return root / "ext"


def test_gemma3_rope_tables_are_checked_per_layer_type(gemma3: Path, tmp_path: Path) -> None:
    code, report = _verify(gemma3)
    assert code == 0 and report["checks"][0]["name"] == "transformers rope table per layer type", report
    assert report["checks"][0]["status"] == "passed" and "sliding_attention_inv_freq_max_rel_diff" in report["checks"][0]["measured"]
    assert "does not run gemma3_text" in report["drift"]["skipped"]

    def swap(cfg: dict) -> None:  # YaRN on the sliding-window layers, plain RoPE on the full-attention ones
        full, sliding = cfg["rope_parameters"]["full_attention"], cfg["rope_parameters"]["sliding_attention"]
        cfg["rope_parameters"] = {"full_attention": {**sliding, "rope_theta": full["rope_theta"]}, "sliding_attention": {**full, "rope_theta": sliding["rope_theta"]}}

    code, report = _verify(_broken(gemma3, tmp_path, swap))
    failed = _failed_checks(report)
    assert code == 3 and "the scaling sits on the wrong layer type" in failed["transformers rope table per layer type"]["reason"], failed


def _failed_checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"] if c["status"] == "failed"}


def test_half_precision_load_keeps_the_rope_gates(extended_llama: Path, tmp_path: Path) -> None:
    """--dtype bfloat16 (what auto picks when float32 does not fit in memory, e.g. a 7B on 24 GB):
    tables and the no-op detector still gate; beyond the original length logits are reported."""
    result = CliRunner().invoke(main, ["verify", str(extended_llama), "--dtype", "bfloat16", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["transformers_dtype"] == "bfloat16", report
    assert [c["status"] for c in report["checks"]] == ["passed", "passed", "info", "passed"]
    broken = _broken(extended_llama, tmp_path, lambda c: c.pop("rope_scaling"))
    result = CliRunner().invoke(main, ["verify", str(broken), "--dtype", "bfloat16", "--json"])
    failed = _failed_checks(json.loads(result.stdout))
    assert result.exit_code == 3 and "ignores the rope block" in failed["transformers applies the planned scaling"]["reason"], failed
    auto = json.loads(CliRunner().invoke(main, ["verify", str(extended_llama), "--json"]).stdout)
    assert auto["transformers_dtype"] == "float32"  # a tiny model always fits


def test_half_precision_bounds_follow_the_noise_measured_on_the_model(extended_llama: Path) -> None:
    """The reference rounding its activations to bfloat16 is as far from the float32 reference as
    transformers in bfloat16 is (within 3x; on a 7B 1.14e-2 against 1.24e-2), so the noise it
    measures is the engine's; the below bounds are the floors or 3x that noise."""
    import torch

    from yarnconv.verify.reference import ReferenceModel
    from yarnconv.verify.transformers_engine import HALF_BOUNDS, half_bounds, transformers_logits

    tokens, positions = list(range(3, 67)), list(range(64))
    ref = ReferenceModel(extended_llama)
    exact = ref.logits(tokens, positions).double().numpy()
    rounded = ref.logits(tokens, positions, round_to=torch.bfloat16).double().numpy()
    got, _ = transformers_logits(extended_llama, tokens, positions, "bfloat16")
    noise, engine = compare_logits(exact, rounded).kl_mean, compare_logits(exact, got).kl_mean
    assert engine / 3 < noise < engine * 3, (noise, engine)
    assert half_bounds({"kl_mean": 1e-6, "kl_max": 1e-5, "top1_agreement": 1.0}) == HALF_BOUNDS
    loose = {b.key: b.limit for b in half_bounds({"kl_mean": 0.0114, "kl_max": 0.0189, "top1_agreement": 0.72})}
    assert loose == pytest.approx({"kl_mean": 0.0342, "kl_max": 0.0567, "top1_agreement": 0.62})
    result = CliRunner().invoke(main, ["verify", str(extended_llama), "--dtype", "bfloat16", "--json"])
    below = json.loads(result.stdout)["checks"][1]
    assert below["status"] == "passed" and below["measured"]["noise_kl_mean"] > 0, below


def test_a_model_too_large_for_memory_gets_its_rope_tables_checked_without_weights(extended_llama: Path, gemma3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 70B on a 24 GB machine: no precision fits, so transformers' rotary module is built from
    config.json alone (the same tables a full load builds) and the logit checks say why they did not
    run. The free memory is the one thing faked: no 70B fits on this machine."""
    from yarnconv.verify import transformers_engine as te

    for model in (extended_llama, gemma3):
        assert te.transformers_tables(model) == te.transformers_logits(model, [1, 2], [0, 1])[1]
    monkeypatch.setattr(te, "_available_memory", lambda: 10_000)
    code, report = _verify(extended_llama)
    assert code == 0 and report["transformers_dtype"] == "none", report
    status = {c["name"]: (c["status"], c.get("reason", "")) for c in report["checks"]}
    assert status["transformers rope table"][0] == "passed"
    assert status["transformers logits"][0] == "skipped" and "GB to load this model in" in status["transformers logits"][1]
    assert "--dtype" in report["drift"]["skipped"] and "by_position" not in report
    edit, check, cause = BROKEN["wrong original length"]
    code, report = _verify(_broken(extended_llama, tmp_path, edit))
    assert code == 3 and cause in str(_failed_checks(report)[check]), report
