"""``yarnconv eval MODEL``: options come from :class:`yarnconv.api.EvalJob`."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.api import EvalJob
from yarnconv.cli.options import request_from, request_options
from yarnconv.cli.output import emit


@click.command(name="eval")
@click.argument("model")
@request_options(EvalJob)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_(model: str, as_json: bool, **settings: Any) -> None:
    """Perplexity against context length (the YaRN paper's sliding-window protocol) for MODEL, its base
    and the other scalings at the same factor; with --passkey, passkey retrieval on the same lengths.
    Saved beside MODEL (yarnconv-eval.json and .png) and shown in its model card.

    \b
    Examples:
      yarnconv eval out/                               # 2k..32k for SmolLM2 x4: base, linear, dynamic, YaRN
      yarnconv eval out/ --lengths 4k,16k,64k --text book1.txt --text book2.txt
      yarnconv eval out/ --methods '' --passkey        # extended vs base only, with passkey retrieval
      yarnconv eval out/Model-YaRN-32k-F32.gguf        # in llama.cpp
    """
    from yarnconv import api

    result = api.evaluate(model, request_from(EvalJob, settings), progress=not as_json)
    emit(result.to_dict(), as_json, _print)


def _print(r: dict[str, Any]) -> None:
    text = r["text"]
    used = [d for d in text["documents"] if d["used"]]
    click.echo(f"{r['model']} in {r['engine']}: YaRN x{r['factor']:g}, original {r['original_context']}, context {r['context']}")
    click.echo(f"  text: {text['source']}; {len(used)} document(s) of {', '.join(str(d['tokens']) for d in used)} tokens; {text['scored_tokens_per_length']} tokens scored per length")
    click.echo(f"  protocol: {r['protocol']['definition']}")
    rows = _table(r)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo("")
    click.echo("  perplexity")
    for row in rows:
        click.echo("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    paired = [row for row in r["rows"] if row.get("vs_base")]
    if paired:
        click.echo("\n  against the base on the same tokens: perplexity ratio [95% paired CI]")
        for row in paired:
            cells = ["-" if v["ppl_ratio"] is None else f"{v['ppl_ratio']:.3f} [{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}]" for v in row["vs_base"]]
            click.echo(f"  {row['label']:<{widths[0]}}  " + "  ".join(cells))
    click.echo("")
    for row in r["rows"]:
        note = f"  not run: {row['not_run']}" if row.get("not_run") else f"  ({row['seconds']:.0f} s)" if row.get("seconds") is not None else ""
        click.echo(f"  {row['label']}: {row['describe']}{note}")
    pk = r.get("passkey")
    if pk:
        click.echo(f"\n  passkey retrieval in {pk['engine']} (filler: {pk['filler']}), accuracy [95% CI]:")
        for p in pk["per_length"]:
            click.echo(f"    {p['model']:<9} {p['length']:>7} tokens: {p['accuracy']:.0%} [{p['ci95'][0]:.0%}-{p['ci95'][1]:.0%}]")
    click.echo(f"\nreport saved to {r['saved']}" + (f", figure {r['figure']}" if r.get("figure") else "") + (f"; card refreshed ({r['card']})" if r.get("card") else ""))


def _table(report: dict[str, Any]) -> list[list[str]]:
    """The paper's table shape: a row per model or method, a column per length (perplexity)."""
    rows = [["", *(f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in report["lengths"])]]
    for r in report["rows"]:
        label = r["label"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
        rows.append([label, *("-" if v is None else f"{v:.3f}" for v in r["ppl"])])
    return rows
