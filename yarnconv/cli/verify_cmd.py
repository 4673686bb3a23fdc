"""``yarnconv verify MODEL``: options come from :class:`yarnconv.api.VerifyJob`."""

from __future__ import annotations

import sys
from typing import Any

import click

from yarnconv.api import VerifyJob
from yarnconv.cli.options import request_from, request_options
from yarnconv.cli.output import emit
from yarnconv.errors import EXIT_CHECK_FAILED

SHOWN = ("inv_freq_max_rel_diff", "attention_factor_diff", "magnitude_diff", "max_model_len", "kl_max", "kl_mean", "max_abs_dlogprob", "top1_agreement", "kl_mean_to_plan", "kl_mean_to_plain_rope", "mean_abs_dlogprob_to_plan", "mean_abs_dlogprob_to_plain_rope")


@click.command()
@click.argument("model")
@request_options(VerifyJob)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(model: str, as_json: bool, **settings: Any) -> None:
    """Prove that MODEL runs as planned: an HF checkpoint in transformers (or vLLM with --engine vllm),
    a GGUF file in llama.cpp, each against yarnconv's reference forward (exit 3 if a check fails).

    \b
    Examples:
      yarnconv verify out/ --base ./llama-2-7b
      yarnconv verify out/Model-YaRN-64k-F16.gguf --base out/
      yarnconv verify qwen-128k-Q4_K_M.gguf
      yarnconv verify ./out --tokens 512 --text notes.txt --report verify.json
      yarnconv verify out/ --engine vllm --engine-python .venvs/vllm/bin/python
    """
    from yarnconv import api

    result = api.verify(model, request_from(VerifyJob, settings), progress=not as_json)
    emit(result.to_dict(), as_json, _print)
    if not result.ok:
        sys.exit(EXIT_CHECK_FAILED)


def _print(r: dict[str, Any]) -> None:
    plan = r["plan"]
    p = r["probe"]
    click.echo(f"{r['model']} in {r['engine']}: plan from {plan['from']}")
    click.echo(f"  reference weights {r['reference']['weights']}" + (f"; the file's main type {r['reference']['weight_type']}" if r['kind'] == 'gguf' else ''))
    click.echo(f"  probe {p['tokens']} tokens of {p['source']} at positions {p['positions'][0]}..{p['positions'][1]} and {p['positions'][2]}..{p['positions'][3]}")
    for c in r["checks"]:
        numbers = ", ".join(f"{k} {c['measured'][k]:.3g}" for k in SHOWN if isinstance(c["measured"].get(k), (int, float)))
        line = f"  {c['status'].upper():<8} {c['name']}"
        click.echo(line + (f"  ({numbers})" if numbers else ""))
        if c.get("reason"):
            click.echo(f"           {c['reason']}")
    pk = r.get("passkey")
    if pk:
        click.echo(f"  passkey retrieval in {pk['engine']} (filler: {pk['filler']}; depths {', '.join(f'{d:g}' for d in pk['depths'])}):")
        for row in pk["per_length"]:
            depths = " ".join(f"{x['correct']}/{x['trials']}" for x in pk["rows"] if x["model"] == row["model"] and x["length"] == row["length"])
            low, high = row["ci95"]
            click.echo(f"    {row['model']:<9} {row['length']:>7} tokens: {row['accuracy']:.0%} [95% CI {low:.0%}-{high:.0%}]  by depth {depths}")
    d = r["drift"]
    low, high = d.get("nll_delta_ci95", (0.0, 0.0))
    if "skipped" in d:
        click.echo(f"  drift not measured: {d['skipped']}")
    else:
        click.echo(f"  drift below the original length (reported, not gated): NLL {d['nll_delta']:+.4f} nats/token [95% CI {low:+.4f}, {high:+.4f}], top-1 flips {d['top1_flips']:.1%}")
    click.echo(("OK: every check passed" if r["ok"] else "FAILED: see the checks above") + f"; report saved to {r['saved']}")
