"""``yarnconv push FOLDER REPO_ID``."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.api import PushJob
from yarnconv.cli.options import quiet_and_json, request_from, request_options
from yarnconv.cli.output import emit, fmt_bytes


@click.command()
@click.argument("folder")
@click.argument("repo_id")
@request_options(PushJob)
@quiet_and_json
def push(folder: str, repo_id: str, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Publish FOLDER (an extended checkpoint, or a GGUF folder from run) to the Hub as REPO_ID.

    \b
      yarnconv push out/ me/Qwen2.5-7B-Instruct-YaRN-128k --private
      yarnconv push out-GGUF/ me/Qwen2.5-7B-Instruct-YaRN-128k-GGUF --dry-run
    """
    from yarnconv import api

    emit(api.push(folder, repo_id, request_from(PushJob, settings), progress=not (quiet or as_json)).to_dict(), as_json, print_push)


def print_push(r: dict[str, Any]) -> None:
    for f in r["files"]:
        click.echo(f"  {fmt_bytes(f['bytes']):>10}  {f['path']}")
    if r["left_out"]:
        click.echo(f"  left out (not written by yarnconv): {', '.join(r['left_out'])}")
    if r["dry_run"]:
        click.echo(f"would push {len(r['files'])} files, {fmt_bytes(r['bytes'])}, to {r['repo_id']}" + (" (private)" if r["private"] else ""))
        if r.get("card"):
            click.echo("\n" + r["card"])
        return
    click.echo(f"pushed {len(r['files'])} files, {fmt_bytes(r['bytes'])}: {r['pr_url'] or r['commit_url']}")
