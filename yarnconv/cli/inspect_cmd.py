"""``yarnconv inspect MODEL``."""

from __future__ import annotations

from typing import Any

import click

from yarnconv.api import InspectJob
from yarnconv.cli.options import request_from, request_options
from yarnconv.cli.output import emit, fmt_bytes


@click.command()
@click.argument("model")
@request_options(InspectJob)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model: str, as_json: bool, **settings: Any) -> None:
    """Describe MODEL and lint its RoPE config: what each runtime will effectively use."""
    from yarnconv import api

    result = api.inspect(model, request_from(InspectJob, settings))
    printer = print_inspect_gguf if result.route == "gguf" else print_inspect
    if result.route == "safetensors" and result.record.get("config", {}) is None:
        printer = print_inspect_safetensors_only
    emit(result.to_dict(), as_json, printer)


def print_inspect_safetensors_only(r: dict[str, Any]) -> None:
    dtypes = ", ".join(r["weight_dtypes"])
    click.echo(f"{r['path']}\n  weights      {r['parameters']:,} parameters in {r['tensors']} tensors, {dtypes}, {fmt_bytes(r['size_on_disk'])}")
    click.echo("  config       none in its metadata: runtimes cannot be predicted (inspect the checkpoint directory it came from)")


def print_inspect_gguf(r: dict[str, Any]) -> None:
    line = click.echo
    line(r["path"])
    split = f", shard {r['split']['no']} of {r['split']['count']}" if r["split"] else ""
    line(f"  model        {r['architecture']} GGUF v{r['gguf_version']}, {r['name'] or 'unnamed'} {r['size_label'] or ''}{split}")
    line(
        f"  tensors      {r['tensors']} ({', '.join(f'{n} {t}' for t, n in sorted(r['tensor_types'].items()))}), {fmt_bytes(r['size_on_disk'])}"
    )
    line(f"  tokenizer    {r['tokenizer']['model']} (pre {r['tokenizer']['pre']})")
    line(f"  context      {r['context_length']}")
    for k, v in r["rope_keys"].items():
        line(f"    {k} = {v}")
    eff = r["llama_cpp"]
    desc = f"{eff['scaling']}"
    if "freq_scale" in eff:
        desc += f", freq_scale {eff['freq_scale']:.6g}"
    if "n_ctx_orig_yarn" in eff:
        desc += f", original {eff['n_ctx_orig_yarn']}, betas {eff['beta_fast']:g}/{eff['beta_slow']:g}"
    if "attention_magnitude" in eff:
        desc += f", attention magnitude {eff['attention_magnitude']:.6g}"
    line(f"  llama.cpp    {desc}")
    for k in ("rope_freqs", "warning"):
        if k in eff:
            line(f"    {eff[k]}")
    spare = r["spare_header_bytes"]
    line(
        f"  header       {r['header_bytes']} bytes, {spare} spare ({'in-place edits fit' if spare >= 256 else 'rope edits need a rewrite'})"
    )


def print_inspect(r: dict[str, Any]) -> None:
    line = click.echo
    line(f"{r['path']}")
    line(f"  model        {r['model_type']} ({', '.join(r['architectures']) or 'no architectures'})")
    line(
        f"  shape        {r['layers']} layers, {r['attention_heads']} heads ({r['kv_heads']} kv), head_dim {r['head_dim']}, rotary_dim {r['rotary_dim']}"
    )
    params = f"{r['parameters']:,}" if r["parameters"] else "unknown (no safetensors)"
    dtypes = ", ".join(f"{k}" for k in r["weight_dtypes"]) or r["dtype"] or "?"
    line(f"  weights      {params} parameters, {dtypes}, {fmt_bytes(r['size_on_disk'])} on disk")
    line(f"  positions    {r['positional_encoding']}, theta {r['rope_theta']:g}, layout {r['rope_layout']}")
    rope = r["rope"]
    scaling = rope.get("rope_type", "default")
    if scaling != "default":
        extras = ", ".join(f"{k}={v}" for k, v in rope.items() if k not in ("rope_type", "theta", "extra"))
        scaling = f"{scaling} ({extras})"
    line(f"  context      max_position_embeddings {r['max_position_embeddings']}, scaling {scaling}")
    eff = r.get("effective") or {}
    if "attention_factor" in eff and eff.get("method") == "yarn":
        line(
            f"  yarn         attention factor {eff['attention_factor']:.6g} (logits x{eff['logit_multiplier']:.6g}), ramp pairs {eff['correction_range'][0]:g}..{eff['correction_range'][1]:g}"
        )
    if r.get("yarnconv"):
        y = r["yarnconv"]
        line(f"  made by      yarnconv {y.get('yarnconv_version')} on {y.get('created')}")
    if r.get("runtimes"):
        line("  runtimes")
        for row in r["runtimes"]:
            if row["verdict"] in ("fails", "unsupported", "unknown"):
                line(f"    {row['runtime']:<24} {row['verdict'].upper() if row['verdict'] == 'fails' else 'n/a':<8} {row.get('error')}")
                continue
            ctx = row.get("max_context")
            info = f"{row['method']}"
            if row["method"] == "yarn":
                info += f" factor {row['factor']:g} original {row['original_context']} attn {row['attention_factor']:.4g}"
            if ctx:
                info += f", max context {ctx}"
            verdict = "same" if row["verdict"] == "same" else f"DIFFERS (inv_freq max rel {row['inv_freq_max_rel_diff']:.3g})"
            notes = f"  [{'; '.join(dict.fromkeys(row['notes']))}]" if row["notes"] else ""
            layers = row.get("layers") or {}
            if len(layers) > 1:
                info += " | " + ", ".join(f"{lt}: {v['method']} theta {v['theta']:g} {v['verdict']}" for lt, v in layers.items())
            line(f"    {row['runtime']:<24} {verdict:<8} {info}{notes}")
    if r["findings"]:
        line("  findings")
        for f in r["findings"]:
            line(f"    {f['level']:<7} {f['code']}: {f['message']}")
    else:
        line("  findings     none")
