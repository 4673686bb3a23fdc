"""``yarnconv export MODEL --gguf``: options come from :class:`yarnconv.api.ExportJob`."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.api import ExportJob
from yarnconv.cli.options import quiet_and_json, request_from, request_options
from yarnconv.cli.output import emit, print_export


@click.command()
@click.argument("model")
@request_options(ExportJob)
@quiet_and_json
def export(model: str, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Convert the HF checkpoint MODEL (e.g. one made by extend) to GGUF with YaRN metadata llama.cpp honours.

    \b
    Examples:
      yarnconv export llama-2-7b-yarn-64k --gguf --outtype q8_0 -o Llama-2-7B-YaRN-64k-Q8_0.gguf
      yarnconv export ./qwen-128k --gguf -o out/ --split-max-size 2G
    """
    from yarnconv import api

    result = api.export(model, request_from(ExportJob, settings), progress=not (quiet or as_json))
    emit(result.to_dict(), as_json, print_export)
