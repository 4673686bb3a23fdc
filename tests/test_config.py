"""Reading every config layout, linting, planning and writing (pure functions, no files)."""

from __future__ import annotations

import copy

import pytest
from helpers import tiny_config

from yarnconv import runtimes
from yarnconv.config import read_config, write_rope
from yarnconv.errors import YarnconvError
from yarnconv.plan import ExtendRequest, plan_extend


def codes(raw: dict) -> set[str]:
    return {f.code for f in read_config(raw).findings}


YARN = {"factor": 4.0, "original_max_position_embeddings": 32768}


@pytest.mark.parametrize(
    "layout",
    [
        {"rope_theta": 1e6, "rope_scaling": {"type": "yarn", **YARN}},
        {"rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn", **YARN}},
        {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, **YARN}},
        {"text_config": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, **YARN}}},
    ],
    ids=["v4-type", "v4-rope_type", "v5", "v5-text_config"],
)
def test_every_layout_reads_to_the_same_block(layout: dict) -> None:
    base = tiny_config("qwen2", max_position_embeddings=131072)
    base.pop("rope_theta")
    if "text_config" in layout:
        raw = {"model_type": "qwen2_vl", "text_config": {**base, **layout["text_config"]}}
    else:
        raw = {**base, **layout}
    view = read_config(raw)
    assert (view.rope.rope_type, view.rope.theta, view.rope.factor, view.rope.original_context) == ("yarn", 1e6, 4.0, 32768)
    assert view.max_position == 131072 and view.head_dim == 16


def test_lint_catches_the_known_traps() -> None:
    raw = tiny_config("llama", max_position_embeddings=32768, original_max_position_embeddings=8192)
    raw["rope_scaling"] = {"type": "yarn", "rope_type": "linear", "factor": 4, "attn_factor": 1.1, "beta_fast": 0}
    raw["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    found = codes(raw)
    assert {"type-conflict", "integer-factor", "legacy-keys", "custom-code"} <= found
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "beta_fast": 0}
    found = codes(raw)
    assert {"missing-original", "rope-type-only", "zero-beta", "top-level-original"} <= found
    raw["rope_scaling"] = {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}
    assert "max-position-mismatch" in codes(raw)  # 32768 != 4096 x 16


def test_layouts_that_disagree_are_an_error_and_block_extend() -> None:
    raw = tiny_config("llama")
    raw["rope_scaling"] = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048}
    raw["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 10000.0}
    raw["max_position_embeddings"] = 4096
    assert "layouts-disagree" in codes(raw)
    with pytest.raises(YarnconvError, match="ambiguous"):
        plan_extend(raw, ExtendRequest(scale=8.0))
    with pytest.raises(YarnconvError) as refused:
        plan_extend(raw, ExtendRequest(scale=8.0, replace_scaling=True, unverified_family=True))  # each refusal has its own flag
    assert "--accept-ambiguous-config" in refused.value.one_line()
    plan = plan_extend(raw, ExtendRequest(scale=8.0, accept_ambiguous_config=True))
    assert "rope_parameters" not in plan.config and plan.config["rope_scaling"]["factor"] == 8.0
    assert plan.overrides and "(--accept-ambiguous-config)" in plan.overrides[0] and plan.summary()["overrides"] == plan.overrides


def test_v5_only_config_warns_that_v4_loses_yarn() -> None:
    raw = tiny_config("qwen3", max_position_embeddings=131072)
    raw.pop("rope_theta")
    raw["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768}
    assert "v5-only-layout" in codes(raw)
    rows = {r["runtime"]: r for r in runtimes.compare_config(raw)}
    assert rows["transformers 4.56-4.57"]["verdict"] == "differs" and rows["transformers 4.56-4.57"]["method"] == "default"
    assert rows["transformers 5.x"]["verdict"] == "same"


# ------------------------------------------------------------------------------------ planning


def test_plan_llama_scale_16_writes_the_portable_invariants() -> None:
    raw = tiny_config("llama")
    raw["some_future_key"] = {"kept": True}
    before = copy.deepcopy(raw)
    plan = plan_extend(raw, ExtendRequest(scale=16))
    assert raw == before  # input untouched
    new = plan.config
    block = new["rope_scaling"]
    assert block == {
        "type": "yarn",
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    assert isinstance(block["factor"], float) and isinstance(block["original_max_position_embeddings"], int)
    assert new["max_position_embeddings"] == 65536 == 4096 * 16
    assert new["rope_theta"] == 10000.0
    changed = {k for k in set(raw) | set(new) if raw.get(k) != new.get(k)}
    assert changed == {"rope_scaling", "max_position_embeddings"}
    every_runtime = {r["runtime"]: r["verdict"] for r in runtimes.compare_config(new)}
    assert every_runtime.pop("transformers 4.44-4.50") == "differs"  # D1: no layout is exact there
    assert every_runtime.pop("exllamav2") == "fails"  # both keys: needs --schema exllamav2
    assert every_runtime.pop("mistral.rs") == "fails"  # its llama model reads rope_scaling as Llama 3 scaling only
    assert set(every_runtime.values()) == {"same"}


def test_schemas() -> None:
    raw = tiny_config("llama")
    ex = plan_extend(raw, ExtendRequest(scale=2, schema="exllamav2")).config
    assert "rope_type" not in ex["rope_scaling"] and ex["rope_scaling"]["type"] == "yarn"
    rows = {r["runtime"]: r for r in runtimes.compare_config(ex)}
    assert rows["transformers 5.x"]["verdict"] == "same"
    # exllamav2 now applies YaRN, but builds its ramp from max_seq_len (exllamav2/rope.py): never exact.
    assert rows["exllamav2"]["method"] == "yarn" and rows["exllamav2"]["verdict"] == "differs"
    assert rows["exllamav2"]["attention_factor"] == pytest.approx(rows["transformers 5.x"]["attention_factor"])
    v5 = plan_extend(raw, ExtendRequest(scale=2, schema="v5")).config
    assert "rope_scaling" not in v5 and v5["rope_parameters"]["rope_theta"] == 10000.0
    assert "v5-only-layout" in codes(v5)


def test_target_context_and_qwen3_original_length() -> None:
    raw = tiny_config("qwen3")  # max_position_embeddings 40960 = 32768 + generation budget
    with pytest.raises(YarnconvError, match="40960") as err:
        plan_extend(raw, ExtendRequest(target_context=131072))
    assert "--original-context 32768" in err.value.one_line()
    plan = plan_extend(raw, ExtendRequest(target_context=131072, original_context=32768))
    assert plan.config["rope_scaling"]["factor"] == 4.0 and plan.config["max_position_embeddings"] == 131072


def test_existing_yarn_is_refactored_from_the_true_original() -> None:
    raw = tiny_config("qwen2", max_position_embeddings=131072)
    raw["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 16.0, "truncate": False}
    plan = plan_extend(raw, ExtendRequest(scale=8))
    block = plan.config["rope_scaling"]
    assert (block["factor"], block["original_max_position_embeddings"], plan.config["max_position_embeddings"]) == (8.0, 32768, 262144)
    assert block["beta_fast"] == 16.0 and block["truncate"] is False  # non-default keys carried
    with pytest.raises(YarnconvError, match="below the current"):
        plan_extend(raw, ExtendRequest(scale=2))


def test_qwen_style_m_equals_l_config() -> None:
    # Qwen2.5 card recipe: M stays 32768 with factor 4; yarnconv fixes M = s * L.
    raw = tiny_config("qwen2")
    raw["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert "max-position-mismatch" in codes(raw)
    plan = plan_extend(raw, ExtendRequest(scale=4))
    assert plan.config["max_position_embeddings"] == 131072 and "max-position-mismatch" not in {f.code for f in plan.findings}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ExtendRequest(), "exactly one"),
        (ExtendRequest(scale=2, target_context=8192), "exactly one"),
        (ExtendRequest(scale=1.0), "greater than 1"),
        (ExtendRequest(scale=0.5), "greater than 1"),
        (ExtendRequest(scale=float("nan")), "finite"),
        (ExtendRequest(scale=float("inf")), "finite"),
        (ExtendRequest(scale=1.3), "whole number"),
        (ExtendRequest(target_context=2048), "not longer"),
        (ExtendRequest(scale=2, beta_fast=1.0, beta_slow=2.0), "greater than beta_slow"),
        (ExtendRequest(scale=2, attention_factor=1.0, temperature=0.5), "same thing"),
        (ExtendRequest(scale=2, method="linear", beta_fast=8.0), "YaRN only"),
        (ExtendRequest(scale=2, original_context=-1), "positive"),
    ],
)
def test_bad_requests(request_: ExtendRequest, message: str) -> None:
    with pytest.raises(YarnconvError, match=message):
        plan_extend(tiny_config("llama"), request_)


def test_foreign_scaling_needs_replace_scaling() -> None:
    raw = tiny_config("llama", max_position_embeddings=131072)
    raw["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    with pytest.raises(YarnconvError, match="llama3"):
        plan_extend(raw, ExtendRequest(target_context=262144))
    with pytest.raises(YarnconvError) as refused:
        plan_extend(raw, ExtendRequest(target_context=262144, unverified_family=True, accept_ambiguous_config=True))
    assert "--replace-scaling" in refused.value.one_line()
    plan = plan_extend(raw, ExtendRequest(target_context=262144, replace_scaling=True))
    assert plan.overrides == ["the model already uses 'llama3' RoPE scaling, a different method from yarn (--replace-scaling)"]
    block = plan.config["rope_scaling"]
    assert block["original_max_position_embeddings"] == 8192 and block["factor"] == 32.0 and "low_freq_factor" not in block


@pytest.mark.parametrize(
    "raw",
    [
        {"model_type": "gpt2", "n_positions": 1024},
        {"model_type": "bloom", "hidden_size": 64, "n_head": 4},
        {"model_type": "falcon", "alibi": True, "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 2048},
    ],
)
def test_non_rope_models_are_refused(raw: dict) -> None:
    with pytest.raises(YarnconvError, match="not RoPE"):
        plan_extend(raw, ExtendRequest(scale=2))


def test_unknown_position_scheme_needs_unverified_family() -> None:
    raw = {"model_type": "mystery", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 2048}
    with pytest.raises(YarnconvError, match="unknown position scheme"):
        plan_extend(raw, ExtendRequest(scale=2))
    plan = plan_extend(raw, ExtendRequest(scale=2, unverified_family=True))
    assert plan.config["rope_scaling"]["factor"] == 2.0 and any("not known RoPE (--unverified-family)" in o for o in plan.overrides)
    old_llama = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 2048}
    assert plan_extend(old_llama, ExtendRequest(scale=2)).config["rope_theta"] == 10000.0  # theta written explicitly


def test_temperature_and_attention_factor_and_methods() -> None:
    raw = tiny_config("llama")
    plan = plan_extend(raw, ExtendRequest(scale=4, temperature=0.8))
    assert plan.config["rope_scaling"]["attention_factor"] == pytest.approx(0.8**-0.5)
    linear = plan_extend(raw, ExtendRequest(scale=4, method="linear")).config
    assert linear["rope_scaling"] == {"type": "linear", "rope_type": "linear", "factor": 4.0} and linear["max_position_embeddings"] == 16384
    dynamic = plan_extend(raw, ExtendRequest(scale=4, method="dynamic")).config
    assert dynamic["rope_scaling"]["rope_type"] == "dynamic" and dynamic["max_position_embeddings"] == 4096


def test_write_rope_keeps_text_config_wrapper() -> None:
    text = tiny_config("qwen2")
    raw = {"model_type": "qwen2_vl", "architectures": ["X"], "vision_config": {"depth": 2}, "text_config": text}
    plan = plan_extend(raw, ExtendRequest(scale=4))
    assert plan.config["vision_config"] == {"depth": 2}
    assert plan.config["text_config"]["rope_scaling"]["factor"] == 4.0 and "rope_scaling" not in plan.config
    assert write_rope(raw, ("text_config",), plan.after, 131072, "portable")["text_config"]["max_position_embeddings"] == 131072
