"""Printing results: JSON for machines, short lines for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def print_change(p: dict[str, Any]) -> None:
    """The rope change of an extend/patch/export record, and its non-info findings."""
    mpe = p["max_position_embeddings"]
    factor = f"factor {p['factor']:g}, " if p.get("factor") else ""
    click.echo(
        f"{p['method']}: {factor}original {p['original_context']} (from {p['original_context_source']}), context {mpe['before']} -> {mpe['after']}"
    )
    for note in p["notes"]:
        click.echo(f"  note: {note}")
    for o in p.get("overrides") or []:
        click.echo(f"  OVERRIDDEN: {o}")
    for f in p["findings"]:
        if f["level"] != "info":
            click.echo(f"  {f['level']}: {f['code']}: {f['message']}")


def print_record(r: dict[str, Any]) -> None:
    """An HF extend record."""
    print_change(r)
    counts: dict[str, int] = {}
    for f in r["files"]:
        counts[f["action"]] = counts.get(f["action"], 0) + 1
    click.echo("  files: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    click.echo(f"wrote {r['output']}")
    print_verified(r)


def print_verified(r: dict[str, Any]) -> None:
    """The one-line verify summary of extend --verify and export --verify."""
    v = r.get("verify")
    if v and any("verify" in x for x in r.get("variants") or []):
        n = len(r["variants"])
        click.echo(f"verified in {v['engine']}: {n} file{'s' if n != 1 else ''}, each report beside its file (*.verify.json)")
    elif v:
        passed = sum(c["status"] == "passed" for c in v["checks"])
        click.echo(f"verified in {v['engine']}: {passed} of {len(v['checks'])} checks passed ({v['saved']})")


def print_export(r: dict[str, Any]) -> None:
    """A GGUF export record (from export, or extend --gguf)."""
    if "method" in r:
        print_change(r)
    types = ", ".join(f"{n} {t}" for t, n in sorted(r["tensor_types"].items()))
    click.echo(f"  {r['architecture']} {r['size_label']}, {r['tensors']} tensors ({types}), {fmt_bytes(r['bytes'])}")
    v = r.get("vocab")
    if v:
        click.echo(f"  tokenizer {v['model']}, pre {v['pre']} ({v['pre_source']}), {v['tokens']} tokens")
    for k, val in r["gguf_keys"]["set"].items():
        click.echo(f"  {k} = {val}")
    for w in r["warnings"]:
        click.echo(f"  WARNING: {w}", err=True)
    variants = r.get("variants")
    if variants:
        for v in variants:
            size = f"{fmt_bytes(v['bytes'])}, " if "bytes" in v else ""
            types = ", ".join(f"{n} {t}" for t, n in sorted(v.get("tensor_types", {}).items()))
            click.echo(f"  {v['outtype'].upper():<7} {v['output']}" + (f" ({size}{types})" if size else ""))
            if r.get("dry_run") and v.get("split_max_size"):
                click.echo(f"          then split into -0000i-of-0000N.gguf shards of at most {fmt_bytes(v['split_max_size'])}")
            if "verify" in v:
                click.echo(f"          verify {'passed' if v['verify']['ok'] else 'FAILED'}")
            if "vs_float" in v:
                q = v["vs_float"]
                click.echo(f"          against {q['against']}: KL mean {q['kl_mean']:.4f}, 99% {q['kl_p99']:.3f}, same top-1 {q['same_top1']:.1%} ({q['tokens']} tokens)")
    im = r.get("imatrix")
    if im:
        click.echo(f"  imatrix {im['path']}: {im['entries']} entries, {im['matrices_covered']} matrices of this model covered")
    click.echo(("would write " if r.get("dry_run") else "wrote ") + ", ".join(r["outputs"]))
    print_verified(r)
