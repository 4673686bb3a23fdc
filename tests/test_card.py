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
    assert "](yarnconv-rope.png)" in (tmp_path / "ext" / "README.md").read_text()  # extend's own card has its figure (issue 21)
    assert (tmp_path / "ext" / "yarnconv-rope.png").is_file()
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


def test_base_model_given_detected_from_the_hub_cache_and_set_at_push(tmp_path: Path, smollm2_dir: Path) -> None:
    """A local copy of a Hub model names nothing; --base-model says which model it is; a Hub cache path
    (models--ORG--NAME/snapshots/REV) says it by itself; push --base-model fixes an output afterwards."""
    import shutil

    copy = tmp_path / "my-copy"
    shutil.copytree(smollm2_dir, copy, ignore=shutil.ignore_patterns("SOURCE.json"))
    run_cli("extend", str(copy), "--scale", "4", "-o", str(tmp_path / "plain"), "-q")
    assert ModelCard.load(tmp_path / "plain" / "README.md").data.base_model is None
    out = tmp_path / "named"
    run_cli("extend", str(copy), "--scale", "4", "-o", str(out), "--base-model", "HuggingFaceTB/SmolLM2-135M-Instruct", "-q")
    assert json.loads((out / "yarnconv.json").read_text())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "# named" in card.text and ".yarnconv-" not in card.text  # written in scratch, named as the output
    assert "](yarnconv-rope.png)" in card.text  # with its figure, drawn inside the commit (issue 21)
    with Image.open(out / "yarnconv-rope.png") as image:
        assert image.format == "PNG"

    cached = write_checkpoint(tmp_path / "hub" / "models--SomeOrg--Tiny-Llama" / "snapshots" / "0123abc", tiny_config("llama"))
    run_cli("extend", str(cached), "--scale", "2", "-o", str(tmp_path / "from-cache"), "-q")
    assert ModelCard.load(tmp_path / "from-cache" / "README.md").data.base_model == "SomeOrg/Tiny-Llama"

    refused = CliRunner().invoke(main, ["extend", str(copy), "--scale", "4", "-o", str(tmp_path / "bad"), "--base-model", "not a repo"])
    assert refused.exit_code == 1 and "is not a Hub id" in refused.stderr and not (tmp_path / "bad").exists()

    plain = tmp_path / "plain"
    shown = CliRunner().invoke(main, ["push", str(plain), "me/x", "--dry-run", "--json", "--base-model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    assert shown.exit_code == 0, shown.output
    shown_card = ModelCard(json.loads(shown.stdout)["card"])
    assert shown_card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "(yarnconv-rope.png)" in shown_card.text  # push draws the figure
    assert json.loads((plain / "yarnconv.json").read_text())["base_model"] is None  # a dry run writes nothing


def test_a_card_that_cannot_be_written_leaves_no_output(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The card is written inside extend's atomic commit: when it fails, the command says why in one line
    and no output appears. The failure is simulated at the card's boundary (a disk that fills exactly
    there cannot be arranged), the way a full disk raises it."""
    import errno

    from yarnconv.publish import card

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "README.md"))

    monkeypatch.setattr(card, "build_card", full)
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"))
    result = CliRunner().invoke(main, ["extend", str(src), "--scale", "2", "-o", str(tmp_path / "out"), "-q"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "no space left on device" in lines[0], result.output
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
