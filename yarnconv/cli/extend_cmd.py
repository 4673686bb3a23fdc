"""``yarnconv extend MODEL``: options come from :class:`yarnconv.api.ExtendJob`."""

from __future__ import annotations

import json
from typing import Any

import click

from yarnconv.api import ExtendJob
from yarnconv.cli.options import quiet_and_json, request_from, request_options
from yarnconv.cli.output import emit, print_change, print_export, print_record, print_verified


@click.command()
@click.argument("model")
@request_options(ExtendJob)
@quiet_and_json
def extend(model: str, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Write a copy of MODEL with a YaRN-extended context to OUTPUT; weights are linked, never rewritten.

    MODEL is a local directory, a Hub id (org/name), builtin:smollm2, or a .gguf file (patched:
    only rope and context keys change, tensor bytes are copied verbatim or not at all with --in-place).

    \b
    Examples:
      yarnconv extend ./llama-2-7b --scale 16 -o llama-2-7b-yarn-64k
      yarnconv extend ./llama-2-7b --scale 16 --gguf --outtype q8_0 -o out/
      yarnconv extend qwen2.5-7b-instruct-q4_k_m.gguf --scale 4 -o qwen-128k-q4_k_m.gguf
    """
    from yarnconv import api

    result = api.extend(model, request_from(ExtendJob, settings), progress=not (quiet or as_json))
    if result.route == "dry-run":
        emit(result.to_dict(), as_json, lambda p: _print_plan(p, result.details["rope_block"]))
    else:
        printer = {"patch": _print_patch, "gguf": print_export, "hf": print_record}[result.route]
        emit(result.to_dict(), as_json, printer)


def _print_plan(p: dict[str, Any], block: Any) -> None:
    print_change(p)
    click.echo("  new rope block " + json.dumps(block))
    click.echo("  (dry run: nothing written)")


def _print_patch(r: dict[str, Any]) -> None:
    print_change({**r, "findings": []})
    for k, v in r["gguf_keys"]["set"].items():
        click.echo(f"  set {k} = {v}")
    for k in r["gguf_keys"]["remove"]:
        click.echo(f"  removed {k}")
    for w in r["gguf_keys"]["warnings"]:
        click.echo(f"  WARNING: {w}", err=True)
    click.echo(f"  same as running the original with: {r['llama_cpp_equivalent_flags']}")
    verb = "would write" if r.get("dry_run") else "wrote"
    how = "header edited in place" if r["mode"] == "in-place" else "new header, tensor data copied verbatim"
    click.echo(f"{verb} {r['output']} ({how})")
    print_verified(r)
