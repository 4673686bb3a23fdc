"""``yarnconv hints MODEL``."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.cli.output import emit, fmt_bytes


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the hints as JSON.")
def hints(model: str, as_json: bool) -> None:
    """Launch commands for MODEL (an extended checkpoint or GGUF) in transformers, vLLM, SGLang,
    llama.cpp and ollama, sized to its context, with the KV-cache memory of that context."""
    from yarnconv import api

    emit(api.hints(model).to_dict(), as_json, print_hints)


def print_hints(r: dict[str, Any]) -> None:
    line = click.echo
    rope = r["rope"]
    scaling = rope.get("rope_type", "default")
    if scaling == "yarn":
        scaling += f" x{rope.get('factor'):g} from {rope.get('original_context')}"
    line(f"{r['path']}: context {r['context']}, {scaling}")
    for row in r["runtimes"]:
        line(f"\n{row['runtime']}")
        if row.get("command"):
            line(f"  {row['command']}")
        if row.get("modelfile"):
            line("  Modelfile:")
            for text in row["modelfile"].splitlines():
                line(f"    {text}")
        for note in row["notes"]:
            line(f"  # {note}")
    kv = r["kv_cache_bytes"]
    if kv:
        line(f"\nKV cache at {r['context']} tokens, one sequence:")
        for dtype, n in kv.items():
            flag = r["kv_cache_flags"].get(dtype)
            line(f"  {dtype:<5} {fmt_bytes(n):>10}" + (f"  ({flag})" if flag else ""))
