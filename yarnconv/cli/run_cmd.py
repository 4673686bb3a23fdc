"""``yarnconv run RECIPE``."""

from __future__ import annotations

import json
from typing import Any

import click

from yarnconv.api import RunJob
from yarnconv.cli.options import quiet_and_json, request_from, request_options
from yarnconv.cli.output import emit, print_export, print_verified


@click.command()
@click.argument("recipe")
@request_options(RunJob)
@quiet_and_json
def run(recipe: str, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Extend, export and verify as the TOML RECIPE says (a file, or a shipped recipe by name, e.g.
    smollm2-135m-32k).

    \b
      yarnconv run smollm2-135m-32k -o smollm2-32k/
      yarnconv run recipes/qwen2.5-7b-instruct-128k.toml --model ./Qwen2.5-7B-Instruct -o out/
      yarnconv run llama-2-7b-64k --model ./llama-2-7b --dry-run
    """
    from yarnconv import api

    result = api.run(recipe, request_from(RunJob, settings), progress=not quiet and not as_json)
    emit(result.to_dict(), as_json, print_run)


def print_run(r: dict[str, Any]) -> None:
    click.echo(f"recipe {r['name']} ({r['recipe']}): {r['description']}")
    for step in r["steps"]:
        click.echo(f"  {'would ' if r['dry_run'] else ''}{step}")
    if r["dry_run"]:
        plan = r["plan"]
        click.echo(f"  new rope block: {json.dumps(plan['config'].get('rope_scaling') or plan['config'].get('rope_parameters'))}")
        click.echo(f"  max_position_embeddings {plan['max_position_embeddings']['before']} -> {plan['max_position_embeddings']['after']}")
        return
    written = r.get("hf") or r["extend"]
    click.echo(f"wrote {written['output']}")
    print_verified(written)
    if "gguf" in r:
        print_export(r["gguf"])
    if "passkey" in r:
        click.echo(f"passkey: {r['passkey'].get('saved')}")
    click.echo("model cards: " + ", ".join(r["cards"]))
    for pushed in r.get("push", []):
        click.echo(f"pushed {pushed['folder']} -> {pushed['pr_url'] or pushed['commit_url']}")
