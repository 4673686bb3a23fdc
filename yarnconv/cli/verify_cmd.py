"""``yarnconv verify MODEL``: options come from :class:`yarnconv.api.VerifyJob`."""

from __future__ import annotations

import sys
from typing import Any

import click

from yarnconv.api import VerifyJob
from yarnconv.cli.options import request_from, request_options
from yarnconv.cli.output import emit

SHOWN = ("inv_freq_max_rel_diff", "attention_factor_diff", "kl_max", "kl_mean", "top1_agreement", "kl_mean_to_plan", "kl_mean_to_plain_rope")


@click.command()
@click.argument("model")
@request_options(VerifyJob)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(model: str, as_json: bool, **settings: Any) -> None:
    """Prove that transformers runs the extended checkpoint MODEL as planned (exit 1 if a check fails).

    \b
    Examples:
      yarnconv verify llama-2-7b-yarn-64k
      yarnconv verify ./out --tokens 512 --report verify.json
    """
    from yarnconv import api

    result = api.verify(model, request_from(VerifyJob, settings))
    emit(result.to_dict(), as_json, _print)
    if not result.ok:
        sys.exit(1)


def _print(r: dict[str, Any]) -> None:
    plan = r["plan"]
    click.echo(f"{r['model']}: plan from {plan['from']}")
    click.echo(f"  probe {r['probe']['tokens']} tokens at positions {r['probe']['positions'][0]}..{r['probe']['positions'][1]} and {r['probe']['positions'][2]}..{r['probe']['positions'][3]}")
    for c in r["checks"]:
        numbers = ", ".join(f"{k} {c['measured'][k]:.3g}" for k in SHOWN if isinstance(c["measured"].get(k), (int, float)))
        line = f"  {c['status'].upper():<8} {c['name']}"
        click.echo(line + (f"  ({numbers})" if numbers else ""))
        if c.get("reason"):
            click.echo(f"           {c['reason']}")
    click.echo(("OK: every check passed" if r["ok"] else "FAILED: see the checks above") + f"; report saved to {r['saved']}")
