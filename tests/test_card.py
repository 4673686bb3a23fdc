"""The model card: parsed back with huggingface_hub's ModelCard, metadata as the Hub reads it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint
from huggingface_hub import ModelCard
from PIL import Image
from test_gguf import run_cli

from yarnconv.cli import main
from yarnconv.publish.card import write_card


def test_card_of_a_local_extension_inherits_the_license_and_claims_no_relation(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    (src / "README.md").write_text("---\nlicense: llama2\nlicense_name: custom\ntags:\n- base\n---\n# The base model\n")
    run_cli("extend", str(src), "--scale", "4", "-o", str(tmp_path / "ext"), "-q")
    before = (src / "README.md").read_text()
    assert "yarnconv-rope.png" not in (tmp_path / "ext" / "README.md").read_text()  # extend's own card: text only, fast
    card = ModelCard.load(write_card(tmp_path / "ext"))
    data = card.data.to_dict()
    assert data["license"] == "llama2" and data["license_name"] == "custom" and data["library_name"] == "transformers"
    assert "base_model" not in data and "base_model_relation" not in data  # a local source: no Hub id to name, no relation claimed
    assert {"yarn", "long-context"} <= set(data["tags"]) and "base" not in data["tags"]
    text = card.text
    assert "| factor s | 4.0 |" in text and "| original context L | 4096 |" in text and "| new context | 16384 |" in text
    assert "static YaRN" in text and "vllm serve ext --max-model-len 16384" in text
    assert "Not run for this output" in text
    with Image.open(tmp_path / "ext" / "yarnconv-rope.png") as image:  # no verify report: the dimensions panel alone
        assert image.format == "PNG" and image.size[1] < image.size[0]
    assert (src / "README.md").read_text() == before  # the source's card is never touched
    assert ModelCard.load(write_card(tmp_path / "ext")).data.to_dict()["license"] == "llama2"  # a refresh keeps it


def test_an_overridden_refusal_is_in_the_dry_run_the_record_and_the_card(tmp_path: Path) -> None:
    cfg = tiny_config("llama", max_position_embeddings=131072)
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    src = write_checkpoint(tmp_path / "src", cfg)
    refused = CliRunner().invoke(main, ["extend", str(src), "--scale", "32", "-o", str(tmp_path / "out"), "--force"])
    assert refused.exit_code == 1 and "--replace-scaling" in refused.stderr and not (tmp_path / "out").exists()  # --force replaces outputs only
    dry = CliRunner().invoke(main, ["extend", str(src), "--scale", "32", "--replace-scaling", "--dry-run"])
    assert dry.exit_code == 0 and "OVERRIDDEN: the model already uses 'llama3' RoPE scaling" in dry.stdout
    assert CliRunner().invoke(main, ["extend", str(src), "--scale", "32", "--replace-scaling", "-o", str(tmp_path / "out"), "-q"]).exit_code == 0
    record = json.loads((tmp_path / "out" / "yarnconv.json").read_text())
    assert record["overrides"] == ["the model already uses 'llama3' RoPE scaling, a different method from yarn (--replace-scaling)"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Refusals overridden" in card and "(--replace-scaling)" in card
