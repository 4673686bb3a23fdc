"""``yarnconv demo``: the built-in model through extend, inspect, export and both runtimes."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from yarnconv.api import DemoJob
from yarnconv.cli.inspect_cmd import print_inspect
from yarnconv.cli.options import request_from, request_options
from yarnconv.cli.output import print_record
from yarnconv.errors import EXIT_CHECK_FAILED


@click.command()
@request_options(DemoJob)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo(as_json: bool, **settings: Any) -> None:
    """Extend the built-in SmolLM2-135M (8k) with YaRN, export it to GGUF, and prove transformers and llama.cpp agree."""
    from yarnconv import api

    if not as_json:
        click.echo("materialising builtin:smollm2 (first run dequantises the shipped GGUF, ~30 s)...", err=True)
    result = api.demo(request_from(DemoJob, settings), progress=not as_json)
    r = result.to_dict()
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
    else:
        print_record(r["extend"])
        print_inspect(r["inspect"])
        check, llama, gguf = r["transformers_check"], r["llama_cpp_check"], r["gguf"]
        click.echo(
            f"transformers {check['transformers_version']} builds {check['rotary_class']}: inv_freq max rel diff "
            f"{check['max_rel_diff_float32']:.3g} (float32) / {check['max_rel_diff_float64']:.3g} (float64), "
            f"attention scaling {check['attention_scaling']:.7g} vs yarnconv {check['attention_factor_yarnconv']:.7g}"
        )
        click.echo(f"wrote {gguf['output']} ({gguf['tensors']} tensors, context {gguf['context_length']})")
        if "kl_max" in llama:
            click.echo(
                f"llama.cpp vs transformers on {llama['tokens']} tokens: KL max {llama['kl_max']:.3g}, "
                f"top-1 agreement {llama['top1_agreement']:.1%}"
            )
        else:
            click.echo(f"NOT VERIFIED: the llama.cpp check did not run: {llama['skipped']}")
        for kind, v in r["verify"].items():
            engine = "transformers" if kind == "hf" else "llama.cpp"
            click.echo(f"verify in {engine} against the reference forward (probes to position 32767): {'OK' if v['ok'] else 'FAILED'}, {v['checks']} checks ({v['saved']})")
        p = r["push_dry_run"]
        click.echo(f"model card: {r['card']} (with its figure and the verify results)")
        click.echo(f"push (dry run): would send {len(p['files'])} files, {p['bytes'] / 1e6:.1f} MB to {p['repo_id']}: yarnconv push {r['extend']['output']} YOU/NAME")
        for c in result.details["checks"]:
            if c.status == "failed":
                click.echo(f"MISMATCH: {c.name}: {c.reason}")
        if result.ok:
            click.echo("OK: transformers and llama.cpp read the extended model exactly as planned")
    if not result.ok:
        sys.exit(EXIT_CHECK_FAILED)
