"""The ``yarnconv`` command: a thin Click layer that parses, calls the library and prints.

Results go to stdout (``--json`` for machines); errors are one line on stderr with exit 1.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
from typing import Any

import click
from click.core import ParameterSource

from yarnconv import __version__
from yarnconv.config import SCHEMA_HELP, SCHEMAS, read_config
from yarnconv.errors import UsageError, YarnconvError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Terminated(BaseException):
    """SIGTERM (timeout, docker stop, a cancelled CI job): unwinds like Ctrl-C so scratch is removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def os_error_line(exc: OSError) -> str:
    """An environment error (disk full, permissions, paths) as one line naming the path and the fix."""
    where = exc.filename or "the output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        import shutil

        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(str(where))) or ".").free
            room = f", {free / 1e6:.1f} MB free there"
        except OSError:
            room = ""
        return f"no space left on device while writing {where}{room} (free some space or choose another -o; nothing was kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where} (check its permissions, or choose another path)"
    if exc.errno == errno.EROFS:
        return f"read-only file system: {where} (choose a writable -o)"
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {where} (choose a shorter -o)"
    return f"{exc.strerror or exc}: {where} (check the path)"


class _Group(click.Group):
    """Turns library errors into one line, and unexpected ones into one line plus a debug hint."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(exc.one_line()) from None
        except YarnconvError as exc:
            raise click.ClickException(exc.one_line()) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Terminated:
            click.echo("Error: terminated by SIGTERM; partial output was removed", err=True)
            sys.exit(143)
        except BrokenPipeError:
            # the reader went away (`| head`): nothing left to say, and no traceback at exit
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), sys.stdout.fileno())
            sys.exit(1)
        except RecursionError:
            raise click.ClickException("input nested too deeply to read (is it a real config file?)") from None
        except OSError as exc:
            if os.environ.get("YARNCONV_DEBUG"):
                raise
            raise click.ClickException(os_error_line(exc)) from None
        except Exception as exc:  # a bug: keep the one-line promise, offer the traceback
            if os.environ.get("YARNCONV_DEBUG"):
                raise
            raise click.ClickException(f"internal error: {type(exc).__name__}: {exc} (set YARNCONV_DEBUG=1 for the traceback)") from None


def _explicit(ctx: click.Context, names: list[str]) -> list[str]:
    """The options among ``names`` the user actually typed (as --flag-names)."""
    return [
        "--" + n.replace("_", "-")
        for n in names
        if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]


def _reject(ctx: click.Context, names: list[str], route: str) -> None:
    given = _explicit(ctx, names)
    if given:
        raise UsageError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {route}", "drop it")


def _emit(data: Any, as_json: bool, human: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="yarnconv")
def main() -> None:
    """Extend a RoPE model's context with YaRN, in a checkpoint every runtime reads the same way.

    \b
    Examples:
      yarnconv inspect ./llama-2-7b
      yarnconv extend ./llama-2-7b --scale 16 -o llama-2-7b-yarn-64k
      yarnconv extend Qwen/Qwen2.5-7B-Instruct --target-context 131072 -o qwen-128k
      yarnconv demo
    """
    if hasattr(signal, "SIGTERM"):
        with contextlib.suppress(ValueError):  # not the main thread (embedded use): leave signals alone
            signal.signal(signal.SIGTERM, _on_sigterm)


# --------------------------------------------------------------------------------------- inspect


@main.command()
@click.argument("model")
@click.option("--revision", help="Hub revision, when MODEL is a Hub id.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model: str, revision: str | None, as_json: bool) -> None:
    """Describe MODEL and lint its RoPE config: what each runtime will effectively use."""
    if model.endswith(".gguf") or os.path.isfile(model):
        from yarnconv.inspect import inspect_gguf

        _emit(inspect_gguf(model), as_json, _print_inspect_gguf)
        return
    from yarnconv.inspect import inspect_model

    _emit(inspect_model(model, revision=revision), as_json, _print_inspect)


def _print_inspect_gguf(r: dict[str, Any]) -> None:
    line = click.echo
    line(r["path"])
    split = f", shard {r['split']['no']} of {r['split']['count']}" if r["split"] else ""
    line(f"  model        {r['architecture']} GGUF v{r['gguf_version']}, {r['name'] or 'unnamed'} {r['size_label'] or ''}{split}")
    line(
        f"  tensors      {r['tensors']} ({', '.join(f'{n} {t}' for t, n in sorted(r['tensor_types'].items()))}), {_fmt_bytes(r['size_on_disk'])}"
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


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _print_inspect(r: dict[str, Any]) -> None:
    line = click.echo
    line(f"{r['path']}")
    line(f"  model        {r['model_type']} ({', '.join(r['architectures']) or 'no architectures'})")
    line(
        f"  shape        {r['layers']} layers, {r['attention_heads']} heads ({r['kv_heads']} kv), head_dim {r['head_dim']}, rotary_dim {r['rotary_dim']}"
    )
    params = f"{r['parameters']:,}" if r["parameters"] else "unknown (no safetensors)"
    dtypes = ", ".join(f"{k}" for k in r["weight_dtypes"]) or r["dtype"] or "?"
    line(f"  weights      {params} parameters, {dtypes}, {_fmt_bytes(r['size_on_disk'])} on disk")
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
            if row["verdict"] in ("fails", "unsupported"):
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


# ---------------------------------------------------------------------------------------- extend


def _extend_options(func: Any) -> Any:
    options = [
        click.option("--scale", type=float, help="YaRN factor s; the new context is original x s."),
        click.option("--target-context", type=int, help="New context length; the factor is target / original."),
        click.option("--original-context", type=int, help="Pretraining context length L (default: read from the config)."),
        click.option(
            "--method",
            type=click.Choice(["yarn", "linear", "dynamic"]),
            default="yarn",
            show_default=True,
            help="Scaling method; linear (PI) and dynamic (NTK) are for ablations.",
        ),
        click.option("--beta-fast", type=float, help="YaRN beta_fast (default 32, or the source's)."),
        click.option("--beta-slow", type=float, help="YaRN beta_slow (default 1, or the source's)."),
        click.option("--attention-factor", type=float, help="Explicit cos/sin magnitude a (default 0.1 ln s + 1)."),
        click.option("--temperature", type=float, help="The paper's softmax temperature t; sets a = sqrt(1/t)."),
        click.option(
            "--schema",
            type=click.Choice(SCHEMAS),
            default="portable",
            show_default=True,
            help="Config layout to write: " + "; ".join(f"{k}: {v}" for k, v in SCHEMA_HELP.items()),
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _gguf_options(func: Any) -> Any:
    options = [
        click.option(
            "--outtype",
            type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0"]),
            default="auto",
            show_default=True,
            help="GGUF tensor type; auto is bf16 for bf16 weights, else f16.",
        ),
        click.option(
            "--gguf-rope",
            type=click.Choice(["auto", "keys", "freqs"]),
            default="auto",
            show_default=True,
            help="keys: llama.cpp's YaRN keys; freqs: an exact rope_freqs.weight tensor (llama family); auto: keys unless they lose settings.",
        ),
        click.option("--pre-tokenizer", help="llama.cpp pre-tokenizer name, when tokenizer.json's is not recognised."),
        click.option("--split-max-size", help="Split into shards of at most N bytes (e.g. 2G, 500M; decimal units)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _size(text: str | None) -> int:
    if not text:
        return 0
    units = {"K": 1000, "M": 1000**2, "G": 1000**3}
    t = text.strip().upper()
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)
    except ValueError:
        raise YarnconvError(f"--split-max-size {text!r} is not a size", "write it like 2G, 500M or 1000000") from None


@main.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(), help="Output directory; with --gguf or a .gguf MODEL, a .gguf file or directory.")
@click.option("--in-place", is_flag=True, help="GGUF MODEL: edit its header in place (only when the new keys fit).")
@click.option("--gguf", "to_gguf", is_flag=True, help="Write a GGUF file instead of an HF checkpoint (extend and export in one go).")
@_gguf_options
@_extend_options
@click.option(
    "--link",
    type=click.Choice(["auto", "reflink", "hardlink", "copy"]),
    default="auto",
    show_default=True,
    help="How weight files reach the output; auto tries reflink, hardlink, then copy.",
)
@click.option("--precompute-inv-freq", is_flag=True, help="Also write yarnconv_rope.safetensors with the final inverse frequencies.")
@click.option("--revision", help="Hub revision, when MODEL is a Hub id.")
@click.option("--force", is_flag=True, help="Replace an existing output; replace a non-YaRN scaling.")
@click.option("--dry-run", is_flag=True, help="Show the plan and the new rope config; write nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON.")
def extend(
    model: str,
    output: str,
    link: str,
    precompute_inv_freq: bool,
    revision: str | None,
    force: bool,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
    in_place: bool,
    to_gguf: bool,
    outtype: str,
    gguf_rope: str,
    pre_tokenizer: str | None,
    split_max_size: str | None,
    **opts: Any,
) -> None:
    """Write a copy of MODEL with a YaRN-extended context to OUTPUT; weights are linked, never rewritten.

    MODEL is a local directory, a Hub id (org/name), builtin:smollm2, or a .gguf file (patched:
    only rope and context keys change, tensor bytes are copied verbatim or not at all with --in-place).

    \b
    Examples:
      yarnconv extend ./llama-2-7b --scale 16 -o llama-2-7b-yarn-64k
      yarnconv extend ./llama-2-7b --scale 16 --gguf --outtype q8_0 -o out/
      yarnconv extend qwen2.5-7b-instruct-q4_k_m.gguf --scale 4 -o qwen-128k-q4_k_m.gguf
    """
    from yarnconv.extend import extend as run_extend
    from yarnconv.extend import plan_for
    from yarnconv.plan import ExtendRequest

    ctx = click.get_current_context()
    gguf_flags = ["outtype", "gguf_rope", "pre_tokenizer", "split_max_size"]
    if model.endswith(".gguf"):
        _reject(ctx, ["to_gguf", *gguf_flags, "schema", "precompute_inv_freq", "revision"], "patching a GGUF file (its tensors are kept as they are)")
    elif to_gguf:
        _reject(ctx, ["in_place", "schema", "precompute_inv_freq", "link"], "extend --gguf (it writes one GGUF file)")
    else:
        _reject(ctx, [*gguf_flags, "in_place"], "an HF checkpoint output (add --gguf to write GGUF)")
    request = ExtendRequest(**opts, force=force)
    progress = not (quiet or as_json)
    if model.endswith(".gguf"):
        from yarnconv.gguf_patch import patch

        record = patch(model, output, request, in_place=in_place, force_output=force, link=link, dry_run=dry_run, progress=progress)
        _emit(record, as_json, _print_patch)
        return
    if output is None:
        raise UsageError("no output given", "pass -o DIR (or -o FILE.gguf with --gguf)")
    if to_gguf:
        from yarnconv.gguf_export import export_gguf

        src, _, plan = plan_for(model, request, revision=revision)
        record = export_gguf(
            src.path,
            output,
            outtype=outtype,
            config=plan.config,
            route=gguf_rope,
            pre_tokenizer=pre_tokenizer,
            split_max_size=_size(split_max_size),
            force=force,
            dry_run=dry_run,
            progress=progress,
        )
        record.update(plan.summary())
        _emit(record, as_json, _print_export)
        return
    if dry_run:
        _, _, plan = plan_for(model, request, revision=revision)
        summary = {"dry_run": True, **plan.summary(), "config": plan.config}
        _emit(summary, as_json, _print_plan)
        return
    record = run_extend(
        model,
        output,
        request,
        link=link,
        force=force,
        precompute_inv_freq=precompute_inv_freq,
        revision=revision,
        progress=not (quiet or as_json),
    )
    _emit(record, as_json, _print_record)


def _print_plan(p: dict[str, Any]) -> None:
    _print_change(p)
    text = read_config(p["config"]).text
    block = text.get("rope_scaling") or text.get("rope_parameters")
    click.echo("  new rope block " + json.dumps(block))
    click.echo("  (dry run: nothing written)")


def _print_change(p: dict[str, Any]) -> None:
    mpe = p["max_position_embeddings"]
    factor = f"factor {p['factor']:g}, " if p.get("factor") else ""
    click.echo(
        f"{p['method']}: {factor}original {p['original_context']} (from {p['original_context_source']}), context {mpe['before']} -> {mpe['after']}"
    )
    for note in p["notes"]:
        click.echo(f"  note: {note}")
    for f in p["findings"]:
        if f["level"] != "info":
            click.echo(f"  {f['level']}: {f['code']}: {f['message']}")


def _print_record(r: dict[str, Any]) -> None:
    _print_change(r)
    counts: dict[str, int] = {}
    for f in r["files"]:
        counts[f["action"]] = counts.get(f["action"], 0) + 1
    click.echo("  files: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))
    click.echo(f"wrote {r['output']}")


def _print_patch(r: dict[str, Any]) -> None:
    _print_change({**r, "findings": []})
    for k, v in r["gguf_keys"]["set"].items():
        click.echo(f"  set {k} = {v}")
    for k in r["gguf_keys"]["remove"]:
        click.echo(f"  removed {k}")
    for w in r["gguf_keys"]["warnings"]:
        click.echo(f"  WARNING: {w}", err=True)
    click.echo(f"  same as running the original with: {r['llama_cpp_equivalent_flags']}")
    verb = "would write" if r.get("dry_run") else "wrote"
    how = "header edited in place" if r["mode"] == "in-place" else "new header, tensor data copied verbatim"
    click.echo(f"{verb} {r['output']} ({how})")


def _print_export(r: dict[str, Any]) -> None:
    if "method" in r:
        _print_change(r)
    types = ", ".join(f"{n} {t}" for t, n in sorted(r["tensor_types"].items()))
    click.echo(f"  {r['architecture']} {r['size_label']}, {r['tensors']} tensors ({types}), {_fmt_bytes(r['bytes'])}")
    v = r.get("vocab")
    if v:
        click.echo(f"  tokenizer {v['model']}, pre {v['pre']} ({v['pre_source']}), {v['tokens']} tokens")
    for k, val in r["gguf_keys"]["set"].items():
        click.echo(f"  {k} = {val}")
    for w in r["warnings"]:
        click.echo(f"  WARNING: {w}", err=True)
    click.echo(("would write " if r.get("dry_run") else "wrote ") + ", ".join(r["outputs"]))


# ---------------------------------------------------------------------------------------- export


@main.command()
@click.argument("model")
@click.option("--gguf", "to_gguf", is_flag=True, help="Write GGUF (the only export format so far).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .gguf file, or a directory for llama.cpp's naming.")
@_gguf_options
@click.option("--name", help="Model name for general.name and the file name (default: the directory or Hub name).")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def export(
    model: str,
    to_gguf: bool,
    output: str,
    outtype: str,
    gguf_rope: str,
    pre_tokenizer: str | None,
    split_max_size: str | None,
    name: str | None,
    force: bool,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Convert the HF checkpoint MODEL (e.g. one made by extend) to GGUF with YaRN metadata llama.cpp honours.

    \b
    Examples:
      yarnconv export llama-2-7b-yarn-64k --gguf --outtype q8_0 -o Llama-2-7B-YaRN-64k-Q8_0.gguf
      yarnconv export ./qwen-128k --gguf -o out/ --split-max-size 2G
    """
    from yarnconv.gguf_export import export_gguf

    if not to_gguf:
        raise UsageError("choose an export format", "pass --gguf")
    record = export_gguf(
        model,
        output,
        outtype=outtype,
        route=gguf_rope,
        pre_tokenizer=pre_tokenizer,
        split_max_size=_size(split_max_size),
        name=name,
        force=force,
        dry_run=dry_run,
        progress=not (quiet or as_json),
    )
    _emit({**record, "dry_run": dry_run}, as_json, _print_export)


# ------------------------------------------------------------------------------------------ demo


def demo_passed(check: dict[str, Any], llama: dict[str, Any]) -> bool:
    """The demo's verdict: transformers builds yarnconv's buffers exactly and llama.cpp's logits
    match; a check that did not run (llama-cpp-python missing) is never a pass."""
    if "kl_max" not in llama:
        return False
    rope_ok = check["lengths_match"] and check["max_rel_diff_float32"] == 0 and check["attention_factor_diff"] <= 1e-7
    return bool(rope_ok and llama["kl_max"] <= 1e-4 and llama["top1_agreement"] >= 0.999)


@main.command()
@click.option("-o", "--output", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--scale", default=4.0, show_default=True, help="YaRN factor for the demo.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo(output: str, scale: float, as_json: bool) -> None:
    """Extend the built-in SmolLM2-135M (8k) with YaRN, export it to GGUF, and prove transformers and llama.cpp agree."""
    from yarnconv.crosscheck import compare_with_transformers
    from yarnconv.extend import extend as run_extend
    from yarnconv.inspect import inspect_model
    from yarnconv.plan import ExtendRequest
    from yarnconv.sources import materialize_builtin

    if not as_json:
        click.echo("materialising builtin:smollm2 (first run dequantises the shipped GGUF, ~30 s)...", err=True)
    src = materialize_builtin("smollm2")
    record = run_extend(src, output, ExtendRequest(scale=scale), force=True, precompute_inv_freq=True, progress=not as_json)
    report = inspect_model(output)
    check = compare_with_transformers(output)
    from yarnconv.gguf_export import export_gguf

    gguf_path = f"{output.rstrip(os.sep)}.gguf"
    gguf = export_gguf(output, gguf_path, outtype="f32", force=True, progress=not as_json)
    try:
        from yarnconv.crosscheck import gguf_logits_vs_transformers

        llama = gguf_logits_vs_transformers(output, gguf_path)
    except ImportError:
        llama = {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    ok = demo_passed(check, llama)
    result = {"extend": record, "inspect": report, "transformers_check": check, "gguf": gguf, "llama_cpp_check": llama, "ok": ok}
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        _print_record(record)
        _print_inspect(report)
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
        if ok:
            click.echo("OK: transformers and llama.cpp read the extended model exactly as planned")
        elif "skipped" not in llama:
            click.echo("MISMATCH: see the numbers above")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
