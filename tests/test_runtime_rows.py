"""inspect's rows for SGLang, mlx-lm, exllamav3, ollama and mistral.rs (yarnconv/runtimes/others.py),
each modelled from the project's source (docs/runtimes.md §5 cites file and commit). The configs are
published ones from tests/corpus, extended as yarnconv writes them and as users hand-edit them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from yarnconv import rope, runtimes
from yarnconv.cli import main
from yarnconv.plan import ExtendRequest, plan_extend

CORPUS = Path(__file__).parent / "corpus"
NEW = ("SGLang", "mlx-lm", "exllamav3", "ollama", "mistral.rs")


def published(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{name}.json").read_text())["config"]


def rows(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["runtime"]: r for r in runtimes.compare_config(config)}


def test_every_new_row_says_it_is_modelled_from_source() -> None:
    for name in NEW:
        assert runtimes.BASIS[name] == "modelled from source"
    got = rows(plan_extend(published("llama-2-7b"), ExtendRequest(scale=16)).config)
    assert {name: got[name]["verdict"] for name in NEW} == {"SGLang": "same", "mlx-lm": "same", "exllamav3": "same", "ollama": "same", "mistral.rs": "fails"}
    assert "Llama 3 scaling only" in got["mistral.rs"]["error"]
    assert got["SGLang"]["max_context"] == 65536 and got["exllamav3"]["max_context"] == 65536 and got["ollama"]["max_context"] is None


def test_qwen3_in_ollama_runs_yarn_at_magnitude_1_and_mistral_rs_drops_it() -> None:
    """Qwen3's own card recipe (factor 4 over 32768) as yarnconv writes it."""
    cfg = plan_extend(published("qwen3-8b"), ExtendRequest(scale=4, original_context=32768)).config
    got = rows(cfg)
    assert got["transformers 5.x"]["verdict"] == "same" and got["llama.cpp"]["verdict"] == "same"
    ollama = got["ollama"]
    assert ollama["verdict"] == "differs" and ollama["inv_freq_max_rel_diff"] < 1e-6  # the frequencies are YaRN's...
    assert ollama["attention_factor"] == 1.0 != pytest.approx(rope.mscale(4.0))  # ...the magnitude is not
    assert any("magnitude 1" in n for n in ollama["notes"])
    assert got["mistral.rs"]["verdict"] == "differs" and got["mistral.rs"]["method"] == "default"
    assert any("silently off" in n for n in got["mistral.rs"]["notes"])
    assert got["SGLang"]["verdict"] == got["mlx-lm"]["verdict"] == got["exllamav3"]["verdict"] == "same"


def test_a_hand_edit_each_runtime_reads_its_own_way() -> None:
    """Qwen2.5-7B-Instruct as its card tells users to edit it: factor 4, L 32768, max_position_embeddings
    left at 32768 (so M/L is 1, not the factor), plus keys some runtimes read and others drop."""
    cfg = published("qwen2.5-7b-instruct")
    cfg["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "attention_factor": 1.0, "truncate": False}
    got = rows(cfg)
    exl = got["exllamav3"]
    assert exl["factor"] == 1.0 and any("factor 4 is not read" in n for n in exl["notes"]) and exl["verdict"] == "differs"
    assert got["SGLang"]["verdict"] == "differs" and any("attention_factor" in n for n in got["SGLang"]["notes"])
    assert got["SGLang"]["attention_factor"] == pytest.approx(rope.mscale(4.0))
    mlx = got["mlx-lm"]
    assert mlx["attention_factor"] == 1.0 and any("truncate" in n for n in mlx["notes"]) and mlx["verdict"] == "differs"
    assert got["mistral.rs"]["verdict"] == "unknown" and got["mistral.rs"]["error"].startswith("not modelled")


def test_v5_only_layout_is_dropped_by_the_v4_readers() -> None:
    cfg = plan_extend(published("llama-2-7b"), ExtendRequest(scale=4, schema="v5")).config
    got = rows(cfg)
    for name in ("SGLang", "mlx-lm", "exllamav3"):
        assert got[name]["verdict"] == "differs" and got[name]["method"] == "default", name
        assert any("rope_parameters (v5 form) is not read" in n for n in got[name]["notes"]), name


def test_missing_original_length() -> None:
    cfg = published("llama-2-7b") | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "max_position_embeddings": 16384}
    got = rows(cfg)
    assert got["SGLang"]["verdict"] == "fails" and "original_max_position_embeddings" in got["SGLang"]["error"]
    # transformers 5 (yarnconv's reference for a config it did not write) takes L from max_position_embeddings
    assert got["transformers 5.x"]["original_context"] == 16384
    assert any("4096 is used" in n for n in got["mlx-lm"]["notes"]) and got["mlx-lm"]["verdict"] == "differs"
    assert got["exllamav3"]["factor"] == 4.0 and got["exllamav3"]["original_context"] == 16384 and got["exllamav3"]["verdict"] == "same"


def test_gemma3_in_ollamas_go_engine_has_no_yarn() -> None:
    cfg = plan_extend(published("gemma-3-1b-it"), ExtendRequest(scale=4)).config
    got = rows(cfg)
    assert got["ollama"]["verdict"] == "differs" and any("YaRN off" in n for n in got["ollama"]["notes"])


def test_inspect_prints_the_new_rows_with_their_basis(tmp_path: Path) -> None:
    cfg = plan_extend(published("qwen3-8b"), ExtendRequest(scale=4, original_context=32768)).config
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "config.json"), "--json"])
    if out.exit_code != 0:  # inspect takes a directory
        out = CliRunner().invoke(main, ["inspect", str(tmp_path), "--json"])
    report = json.loads(out.stdout)
    listed = {r["runtime"]: r for r in report["runtimes"]}
    assert set(NEW) <= set(listed) and all(listed[n]["basis"] == "modelled from source" for n in NEW)
    human = CliRunner().invoke(main, ["inspect", str(tmp_path)]).stdout
    for name in NEW:
        assert name in human
