"""Family quirks one by one, on the published configs in tests/corpus (see test_corpus.py for the
real-runtime checks over all of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from yarnconv import families, rope, runtimes
from yarnconv.cli import main
from yarnconv.config import read_config
from yarnconv.errors import YarnconvError
from yarnconv.plan import ExtendRequest, plan_extend

CORPUS = Path(__file__).parent / "corpus"


def published(name: str) -> dict:
    return json.loads((CORPUS / f"{name}.json").read_text())["config"]


def rows(raw: dict) -> dict[str, dict]:
    return {r["runtime"]: r for r in runtimes.compare_config(raw)}


def test_mistral_without_head_dim_gets_one_and_the_trap_is_predicted() -> None:
    source = published("yarn-mistral-7b-128k")  # YaRN already, no head_dim
    assert rows(source)["transformers 4.56-4.57"]["verdict"] == "fails"
    assert "head-dim-missing" in {f.code for f in read_config(source).findings}
    plan = plan_extend(source, ExtendRequest(scale=32.0))
    assert plan.config["head_dim"] == 128
    assert plan.config["rope_scaling"]["finetuned"] is True  # unknown keys of a YaRN block are kept
    assert rows(plan.config)["transformers 4.56-4.57"]["verdict"] == "same"
    llama = plan_extend(published("llama-2-7b"), ExtendRequest(scale=4.0)).config
    assert "head_dim" not in llama  # only families whose 4.x class keeps None get one


def test_deepseek_rotates_qk_rope_head_dim_and_llama_cpp_keeps_mscale(tmp_path: Path) -> None:
    raw = published("deepseek-v3")
    view = read_config(raw)
    assert (view.rope_head_dim, view.rotary_dim, view.head_dim) == (64, 64, 192)
    r = rows(raw)
    assert r["llama.cpp"]["verdict"] == "same" and r["transformers 5.x"]["verdict"] == "same"
    assert r["transformers 5.x"]["softmax_multiplier"] == pytest.approx(rope.mscale(40.0, 1.0) ** 2)
    lite = rows(published("deepseek-v2-lite"))
    assert lite["transformers 4.56-4.57"]["verdict"] == "differs"  # its 4.x attention drops the softmax mscale
    plan = plan_extend(raw, ExtendRequest(scale=64.0))
    assert plan.head_dim == 64 and plan.after.mscale == 1.0 and plan.after.mscale_all_dim == 1.0


def test_precomputed_inv_freq_uses_the_rotary_dim_and_layer_types(tmp_path: Path) -> None:
    from safetensors import safe_open

    from yarnconv.hf.extend import write_sidecar

    plan = plan_extend(published("deepseek-v3"), ExtendRequest(scale=64.0))
    write_sidecar(tmp_path / "ds.safetensors", plan)
    with safe_open(tmp_path / "ds.safetensors", "pt") as f:
        assert f.get_tensor("inv_freq").shape == (32,)
    plan = plan_extend(published("gemma-3-1b-it"), ExtendRequest(scale=4.0))
    write_sidecar(tmp_path / "g.safetensors", plan)
    with safe_open(tmp_path / "g.safetensors", "pt") as f:
        full, sliding = f.get_tensor("full_attention.inv_freq"), f.get_tensor("sliding_attention.inv_freq")
        assert f.get_tensor("sliding_attention.attention_scaling").item() == 1.0
        assert sliding.tolist() == pytest.approx(rope.base_inv_freq(10000.0, 256), rel=1e-6)  # unscaled local base
        assert f.get_tensor("model.layers.5.self_attn.rotary_emb.inv_freq").equal(full)  # every 6th layer is global
        assert f.get_tensor("model.layers.0.self_attn.rotary_emb.inv_freq").equal(sliding)


def test_gpt_neox_reads_rotary_pct_and_rotary_emb_base() -> None:
    raw = published("pythia-410m")
    view = read_config(raw)
    assert (view.rope.theta, view.rope.partial_rotary_factor, view.rotary_dim) == (10000.0, 0.25, 16)
    assert not [f for f in view.findings if f.code == "theta-missing"]
    assert rows(raw)["llama.cpp"]["verdict"] == "same"
    extended = plan_extend(raw, ExtendRequest(scale=4.0)).config
    assert rows(extended)["llama.cpp"]["verdict"] == "differs"  # its converter writes no rope scaling
    assert "rope_scaling" in extended and extended["rotary_pct"] == 0.25


def test_phi3_is_refused_with_the_reason() -> None:
    with pytest.raises(YarnconvError, match="Phi-3 config class rewrites a yarn block as longrope"):
        plan_extend(published("phi-3-mini-4k-instruct"), ExtendRequest(scale=4.0))


def test_gemma3_scales_only_full_attention_layers_in_both_schemas() -> None:
    raw = published("gemma-3-1b-it")
    portable = plan_extend(raw, ExtendRequest(scale=4.0)).config
    assert portable["rope_local_base_freq"] == 10000.0 and portable["rope_scaling"]["rope_type"] == "yarn"
    v5 = plan_extend(raw, ExtendRequest(scale=4.0, schema="v5")).config
    assert "rope_theta" not in v5 and "rope_local_base_freq" not in v5
    assert v5["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert v5["rope_parameters"]["full_attention"]["rope_type"] == "yarn"
    for cfg in (portable, v5):
        view = read_config(cfg)
        assert view.layer_ropes["sliding_attention"].rope_type == "default"
        assert view.layer_ropes["sliding_attention"].theta == 10000.0
        assert rows(cfg)["transformers 5.x"]["verdict"] == "same"
    assert rows(v5)["transformers 4.56-4.57"]["verdict"] == "differs"  # 4.x does not read rope_parameters


def test_vlm_text_config_resolves_class_defaults_and_refuses_for_the_real_reason() -> None:
    raw = published("gemma-3-4b-it")
    view = read_config(raw)
    assert (view.rope.theta, view.num_heads, view.head_dim, view.max_position) == (1000000.0, 8, 256, 131072)
    assert set(view.defaulted) >= {"num_attention_heads", "head_dim", "max_position_embeddings"}
    with pytest.raises(YarnconvError, match="already uses 'linear'"):
        plan_extend(raw, ExtendRequest(scale=2.0))


def test_llama3_and_longrope_are_modelled_with_numbers() -> None:
    raw = published("llama-3.1-8b")
    r = rows(raw)
    assert r["transformers 5.x"]["method"] == "llama3" and r["transformers 5.x"]["verdict"] == "same"
    assert r["exllamav2"]["verdict"] == "same"  # exllamav2 reads rope_type llama3
    spec = runtimes.reference_specs(read_config(raw))["all"]
    inv = rope.compute(spec).inv_freq
    base = rope.base_inv_freq(500000.0, 128)
    assert inv[0] == base[0] and inv[-1] == pytest.approx(base[-1] / 8)  # short wavelengths kept, long divided
    plain = dict(raw, rope_scaling=None)
    assert max(abs(a - b) / b for a, b in zip(rope.compute(runtimes.reference_specs(read_config(plain))["all"]).inv_freq, inv, strict=True)) > 1
    longrope = rope.compute(
        rope.RopeSpec("longrope", base=10000.0, dim=8, factor=32.0, original_context=4096, short_factor=(1, 1, 1, 1), long_factor=(1, 2, 4, 8)),
        seq_len=8192,
    )
    assert longrope.inv_freq[-1] == pytest.approx(rope.base_inv_freq(10000.0, 8)[-1] / 8)
    assert longrope.attention_factor == pytest.approx((1 + __import__("math").log(32) / __import__("math").log(4096)) ** 0.5)


def test_v5_saved_config_predicted_same_on_4x_when_the_class_default_matches() -> None:
    raw = published("mistral-7b-v0.1")
    saved = {k: v for k, v in raw.items() if k != "rope_theta"}
    saved["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}  # the form transformers 5 saves
    assert rows(saved)["transformers 4.56-4.57"]["verdict"] == "same"  # 4.x falls back to MistralConfig's 10000
    qwen = {k: v for k, v in published("qwen2.5-3b").items() if k != "rope_theta"}
    qwen["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    assert rows(qwen)["transformers 4.56-4.57"]["verdict"] == "differs"  # Qwen2Config's default is 10000


def test_no_theta_warning_for_models_without_rope() -> None:
    for name in ("bloom-560m", "gpt2", "mpt-7b"):
        assert "theta-missing" not in {f.code for f in read_config(published(name)).findings}, name


def test_v5_schema_writes_no_top_level_theta() -> None:
    new = plan_extend(published("llama-2-7b"), ExtendRequest(scale=4.0, schema="v5")).config
    assert "rope_theta" not in new and new["rope_parameters"]["rope_theta"] == 10000.0
    assert "v5-only-layout" in {f.code for f in read_config(new).findings}


def test_nonsense_numbers_are_refused_in_one_line(tmp_path: Path) -> None:
    bad = dict(published("llama-2-7b"), rope_theta=-5.0)
    with pytest.raises(YarnconvError, match="RoPE base must be above 1"):
        read_config(bad)
    with pytest.raises(YarnconvError, match="above the model's max_position_embeddings"):
        plan_extend(published("llama-2-7b"), ExtendRequest(scale=4.0, original_context=10**9))
    with pytest.raises(YarnconvError, match="does not fit the 32-bit"):
        plan_extend(published("qwen2.5-3b"), ExtendRequest(target_context=2**33))
    with pytest.raises(YarnconvError, match="not a finite number"):
        read_config(dict(published("llama-2-7b"), rope_scaling={"type": "yarn", "factor": float("nan")}))


def _class_defaults_probe() -> str:
    return (
        "import json, sys\n"
        "from transformers import CONFIG_MAPPING\n"
        "out = {}\n"
        "for mt in json.loads(sys.argv[1]):\n"
        "    c = CONFIG_MAPPING[mt]()\n"
        "    d = c.to_dict()\n"
        "    rp = d.get('rope_parameters') or {}\n"
        "    rp = rp.get('full_attention', rp) if isinstance(rp, dict) else {}\n"
        "    out[mt] = {k: d.get(k) for k in ('max_position_embeddings', 'num_attention_heads', 'hidden_size', 'head_dim', 'qk_rope_head_dim')}\n"
        "    out[mt]['rope_theta'] = rp.get('rope_theta', d.get('rope_theta'))\n"
        "print(json.dumps(out))\n"
    )


@pytest.mark.parametrize("version", ["5.x", "4.57"])
def test_class_defaults_match_transformers(version: str, hf4_python: Path) -> None:
    python = sys.executable if version == "5.x" else str(hf4_python)
    types = sorted(families.CLASS_DEFAULTS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([python, "-c", _class_defaults_probe(), json.dumps(types)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    real = json.loads(done.stdout.strip().splitlines()[-1])
    for mt, want in families.CLASS_DEFAULTS.items():
        got = real[mt]
        for key in ("max_position_embeddings", "num_attention_heads", "hidden_size", "qk_rope_head_dim"):
            if key in want:
                assert got[key] == want[key], (version, mt, key)
        if "head_dim" in want:
            assert got["head_dim"] == want["head_dim"], (version, mt)
        theta = want.get("rope_theta_v5", want["rope_theta"]) if version == "5.x" else want["rope_theta"]
        assert got["rope_theta"] == theta, (version, mt, got["rope_theta"])


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "phi3"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(published("phi-3-mini-4k-instruct")))
    save_file({"x": torch.zeros(1)}, str(src / "model.safetensors"))
    result = CliRunner().invoke(main, ["extend", str(src), "--scale", "4", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "longrope" in result.output
