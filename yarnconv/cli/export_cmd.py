"""``yarnconv export MODEL --gguf|--hf|--safetensors``: options come from :class:`yarnconv.api.ExportJob`."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.api import ExportJob
from yarnconv.cli.options import quiet_and_json, request_from, request_options
from yarnconv.cli.output import emit, fmt_bytes, print_export, print_verified


@click.command()
@click.argument("model")
@request_options(ExportJob)
@quiet_and_json
def export(model: str, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Convert the HF checkpoint MODEL (e.g. one made by extend): to GGUF with YaRN metadata llama.cpp
    honours (and llama.cpp's quant ladder), to an HF copy in another dtype or shard size, or to one
    safetensors file.

    \b
    Examples:
      yarnconv export llama-2-7b-yarn-64k --gguf --outtype q8_0 -o Llama-2-7B-YaRN-64k-Q8_0.gguf
      yarnconv export ./qwen-128k --gguf --outtype q4_k_m,q5_k_m,q8_0 -o gguf/
      yarnconv export ./qwen-128k --hf --dtype bf16 --max-shard-size 2GB -o qwen-128k-bf16/
      yarnconv export ./qwen-128k --safetensors -o qwen-128k.safetensors
    """
    from yarnconv import api

    result = api.export(model, request_from(ExportJob, settings), progress=not (quiet or as_json))
    emit(result.to_dict(), as_json, print_export if result.route == "gguf" else _print_hf)


def _print_hf(r: dict[str, Any]) -> None:
    verb = "would write" if r.get("dry_run") else "wrote"
    shards = r.get("shards") or [{"file": r["output"], "tensors": r["tensors"], "bytes": r["bytes"]}]
    for s in shards:
        click.echo(f"  {s['file']}: {s['tensors']} tensors, {fmt_bytes(s['bytes'])}")
    for n in r["notes"]:
        click.echo(f"  note: {n}")
    click.echo(f"{verb} {r['output']} ({r['tensors']} tensors, dtype {r['dtype']}, {fmt_bytes(r['bytes'])})")
    print_verified(r)
