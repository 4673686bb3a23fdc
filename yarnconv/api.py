"""One library entry per command. The CLI parses flags into these requests and prints the result;
recipes fill the same requests from TOML.

Each entry picks its route from the input (an HF directory, a Hub id or a .gguf file) and refuses
settings that do not apply to that route, so a library call and the command line accept and
refuse exactly the same things::

    import yarnconv
    from yarnconv.api import ExtendJob
    from yarnconv.plan import ExtendRequest

    result = yarnconv.extend("./llama-2-7b", ExtendJob(output="out/", rope=ExtendRequest(scale=16.0)))
    result.record["max_position_embeddings"]  # {'before': 4096, 'after': 65536}

Heavy modules (torch, numpy, gguf) are imported inside the entries, so a config-only run never
loads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from yarnconv.errors import UsageError, YarnconvError
from yarnconv.options import group, option, reject
from yarnconv.plan import ExtendRequest

OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
ROPE_ROUTES = ("auto", "keys", "freqs")
LINK_MODES = ("auto", "reflink", "hardlink", "copy")
GGUF_SETTINGS = ["outtype", "gguf_rope", "pre_tokenizer", "split_max_size"]


@dataclass(frozen=True)
class GGUFOptions:
    """How an HF checkpoint becomes GGUF (``export --gguf`` and ``extend --gguf``)."""

    outtype: str | None = option(
        help="GGUF type, or several comma-separated (one file each, -o DIR): auto (bf16 for bf16 weights, else f16), f32, f16, bf16, q8_0, "
        "or llama.cpp's quant ladder q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s/m/l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, iq4_xs (needs llama-cpp-python).",
        shown="auto",
    )
    gguf_rope: str | None = option(
        help="keys: llama.cpp's YaRN keys; freqs: an exact rope_freqs.weight tensor (llama family); auto: keys unless they lose settings.",
        choices=ROPE_ROUTES,
        shown="auto",
    )
    pre_tokenizer: str | None = option(help="llama.cpp pre-tokenizer name, when tokenizer.json's is not recognised.")
    split_max_size: str | None = option(help="Split into shards of at most N bytes (e.g. 2G, 500M; decimal units).")

    def split_bytes(self) -> int:
        """``split_max_size`` in bytes (0: one file)."""
        return parse_size(self.split_max_size, "--split-max-size")


def parse_size(text: str | None, flag: str) -> int:
    """``2G``, ``2GB``, ``500M`` or a byte count (decimal units, as transformers and llama.cpp use); 0 when not given."""
    if not text:
        return 0
    units = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    t = text.strip().upper().removesuffix("B")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise YarnconvError(f"{flag} {text!r} is not a size", "write it like 2GB, 500MB or 1000000") from None
    if value <= 0:
        raise YarnconvError(f"{flag} {text!r} is not a positive size", "write it like 2GB, 500MB or 1000000")
    return value


@dataclass(frozen=True)
class ExtendJob:
    """Everything ``yarnconv extend`` takes besides the model."""

    output: str | None = option(
        help="Output directory; with --gguf or a .gguf MODEL, a .gguf file or directory.", short="-o", kind=os.PathLike
    )
    in_place: bool = option(False, "GGUF MODEL: edit its header in place (only when the new keys fit).")
    gguf: bool = option(False, "Write a GGUF file instead of an HF checkpoint (extend and export in one go).")
    export: GGUFOptions = group(GGUFOptions)
    rope: ExtendRequest = group(ExtendRequest)
    link: str | None = option(
        help="How weight files reach the output; auto tries reflink, hardlink, then copy.", choices=LINK_MODES, shown="auto"
    )
    precompute_inv_freq: bool = option(False, "Also write yarnconv_rope.safetensors with the final inverse frequencies.")
    revision: str | None = option(help="Hub revision, when MODEL is a Hub id.")
    dry_run: bool = option(False, "Show the plan and the new rope config; write nothing.")
    verify: bool = option(False, "Run verify's checks on the output right after writing it (transformers for HF, llama.cpp for GGUF); a failure exits 1 and keeps the output.")


@dataclass(frozen=True)
class ExportJob:
    """Everything ``yarnconv export`` takes besides the model."""

    gguf: bool = option(False, "Write GGUF for llama.cpp.")
    hf: bool = option(False, "Write an HF checkpoint directory, cast with --dtype and resharded with --max-shard-size.")
    safetensors: bool = option(False, "Write one .safetensors file holding every tensor, config.json and yarnconv.json in its metadata.")
    output: str | None = option(
        help="Output .gguf file, or a directory for llama.cpp's naming.", short="-o", kind=os.PathLike, required=True
    )
    export: GGUFOptions = group(GGUFOptions)
    name: str | None = option(help="Model name for general.name and the file name (default: the directory or Hub name).")
    dtype: str | None = option(help="--hf / --safetensors: cast float tensors to this dtype (default: unchanged).", choices=("f32", "f16", "bf16"))
    max_shard_size: str | None = option(help="--hf: shards of at most this size, e.g. 2GB (default: one file).")
    force: bool = option(False, "Overwrite existing output files.")
    dry_run: bool = option(False, "Show what would be written; write nothing.")
    verify: bool = option(False, "Run verify's checks on the GGUF in llama.cpp right after writing it (MODEL as --base); a failure exits 1 and keeps the output.")


@dataclass(frozen=True)
class InspectJob:
    """What ``yarnconv inspect`` takes besides the model."""

    revision: str | None = option(help="Hub revision, when MODEL is a Hub id.")


@dataclass(frozen=True)
class DemoJob:
    """What ``yarnconv demo`` takes."""

    output: str = option("demo-out", "Output directory (the GGUF goes beside it as OUTPUT.gguf).", short="-o", kind=os.PathLike)
    scale: float = option(4.0, "YaRN factor for the demo.", kind=float)


@dataclass(frozen=True)
class VerifyJob:
    """What ``yarnconv verify`` takes besides the model."""

    base: str | None = option(
        help="The checkpoint MODEL came from: for a GGUF, the HF directory it was exported from (the reference runs its weights); for an HF output, the model it was extended from.",
        kind=os.PathLike,
    )
    tokens: int = option(256, "Probe length: half below the original context, half ending at the new context's last position.", kind=int)
    seed: int = option(0, "Seed of the probe's token ids and text choice.", kind=int)
    text: str | None = option(help="Probe text file, through the model's own tokenizer (default: Python's standard-library sources on this machine).", kind=os.PathLike)
    seeded: bool = option(False, "Probe with seeded random token ids instead of text.")
    passkey: bool = option(False, "Also run passkey retrieval (a 5-digit key hidden in filler text), beside --base for HF outputs.")
    lengths: str | None = option(help="Passkey prompt lengths, e.g. 8k,16k,32k (default: the original and the new context).")
    passkey_trials: int = option(2, "Passkey trials per length and depth (5 depths).", kind=int)
    passkey_min: float | None = option(help="Fail unless the extended model's passkey accuracy reaches this at every length (0-1).", kind=float)
    dtype: str | None = option(
        help="transformers' load dtype; auto: float32 when the model fits in 60% of free memory, else the checkpoint's half precision (looser bounds).",
        choices=("auto", "float32", "bfloat16", "float16"),
        shown="auto",
    )
    report: str | None = option(help="Also write the report to this JSON file.", kind=os.PathLike)


@dataclass
class Result:
    """What a command did. ``record`` is the JSON the CLI prints with ``--json``; ``route`` says
    which path the command took (hf, gguf, patch, dry-run, ...) so a printer can describe it."""

    command: str
    route: str
    record: dict[str, Any]
    ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)  # for printing only, never in to_dict()

    def to_dict(self) -> dict[str, Any]:
        return self.record


def extend_route(model: str | os.PathLike[str], job: ExtendJob) -> str:
    """patch (a .gguf MODEL), gguf (extend --gguf), dry-run, or hf."""
    if os.fspath(model).endswith(".gguf"):
        return "patch"
    if job.gguf:
        return "gguf"
    return "dry-run" if job.dry_run else "hf"


def extend(model: str | os.PathLike[str], job: ExtendJob, *, progress: bool = True) -> Result:
    """``yarnconv extend``: an extended copy of ``model`` (HF directory, Hub id, builtin:NAME or .gguf file)."""
    route = extend_route(model, job)
    if route == "patch":
        reject(job, ["gguf", *GGUF_SETTINGS, "schema", "precompute_inv_freq", "revision"], "patching a GGUF file (its tensors are kept as they are)")
        if job.dry_run:
            reject(job, ["verify"], "a dry run (nothing is written to verify)")
        from yarnconv.gguf.patch import patch

        record = patch(
            model, job.output, job.rope, in_place=job.in_place, force_output=job.rope.force, link=job.link or "auto", dry_run=job.dry_run, progress=progress
        )
        return _verified(Result("extend", route, record), record.get("output") or model, None, job.verify)
    if route == "gguf":
        reject(job, ["in_place", "schema", "precompute_inv_freq", "link"], "extend --gguf (it writes one GGUF file)")
        if job.dry_run:
            reject(job, ["verify"], "a dry run (nothing is written to verify)")
    else:
        reject(job, [*GGUF_SETTINGS, "in_place"], "an HF checkpoint output (add --gguf to write GGUF)")
    if job.output is None and not (route == "dry-run"):
        raise UsageError("no output given", "pass -o DIR (or -o FILE.gguf with --gguf)")
    from yarnconv.hf.extend import extend as extend_hf
    from yarnconv.hf.extend import plan_for

    if route == "gguf":
        from yarnconv.gguf.export import export_gguf

        src, _, plan = plan_for(model, job.rope, revision=job.revision)
        record = export_gguf(
            src.path,
            job.output,  # type: ignore[arg-type]
            outtype=job.export.outtype or "auto",
            config=plan.config,
            route=job.export.gguf_rope or "auto",
            pre_tokenizer=job.export.pre_tokenizer,
            split_max_size=job.export.split_bytes(),
            force=job.rope.force,
            dry_run=job.dry_run,
            progress=progress,
        )
        record.update(plan.summary())
        return _verified(Result("extend", route, record), record.get("output"), None, job.verify)
    if route == "dry-run":
        reject(job, ["verify"], "a dry run (nothing is written to verify)")
        _, _, plan = plan_for(model, job.rope, revision=job.revision)
        record = {"dry_run": True, **plan.summary(), "config": plan.config}
        return Result("extend", route, record, details={"rope_block": plan.written_block()})
    record = extend_hf(
        model,
        job.output,  # type: ignore[arg-type]
        job.rope,
        link=job.link or "auto",
        force=job.rope.force,
        precompute_inv_freq=job.precompute_inv_freq,
        revision=job.revision,
        progress=progress,
    )
    return _verified(Result("extend", route, record), job.output, None, job.verify)


def _verified(result: Result, target: Any, base: Any, wanted: bool) -> Result:
    """``--verify``: the fast checks on what was just written; a failure raises and keeps the output."""
    if not wanted or result.record.get("dry_run"):
        return result
    checked = verify(target, VerifyJob(base=base))
    result.record["verify"] = checked.record
    result.details["verify"] = checked
    if not checked.ok:
        failed = next(c for c in checked.details["checks"] if c.status == "failed")
        raise YarnconvError(
            f"verification failed: {failed.name}: {failed.reason}; the output is kept at {target}",
            f"read {checked.record['saved']} for every check",
        )
    return result


def export(model: str | os.PathLike[str], job: ExportJob, *, progress: bool = True) -> Result:
    """``yarnconv export``: GGUF with the YaRN keys llama.cpp honours (and its quant ladder), an HF
    checkpoint cast and resharded, or one safetensors file."""
    formats = [f for f in ("gguf", "hf", "safetensors") if getattr(job, f)]
    if len(formats) != 1:
        raise UsageError("choose one export format" if not formats else f"--{' and --'.join(formats)} are different formats", "pass one of --gguf, --hf, --safetensors")
    if job.output is None:
        raise UsageError("no output given", "pass -o FILE.gguf, -o DIR or -o FILE.safetensors")
    if job.verify and job.dry_run:
        raise UsageError("--verify does not apply to a dry run (nothing is written to verify)", "drop --verify or --dry-run")
    if formats[0] != "gguf":
        return _export_hf(model, job, formats[0], progress)
    reject(job, ["dtype", "max_shard_size"], "GGUF export (use --outtype)")
    from yarnconv.gguf.export import export_gguf

    record = export_gguf(
        model,
        job.output,
        outtype=job.export.outtype or "auto",
        route=job.export.gguf_rope or "auto",
        pre_tokenizer=job.export.pre_tokenizer,
        split_max_size=job.export.split_bytes(),
        name=job.name,
        force=job.force,
        dry_run=job.dry_run,
        progress=progress,
    )
    base = model if os.path.isdir(model) else None
    result = Result("export", "gguf", {**record, "dry_run": job.dry_run})
    for v in record.get("variants") or [{"output": record.get("output")}]:
        result = _verified(result, v["output"], base, job.verify)
        if "verify" in result.record:
            v["verify"] = {k: result.record["verify"][k] for k in ("ok", "saved")}
    return result


def _export_hf(model: str | os.PathLike[str], job: ExportJob, fmt: str, progress: bool) -> Result:
    from yarnconv.hf.variant import export_hf, export_safetensors

    reject(job, [*GGUF_SETTINGS, "name"], f"--{fmt} export")
    if fmt == "safetensors":
        reject(job, ["max_shard_size", "verify"], "one safetensors file")
        record = export_safetensors(model, job.output, dtype=job.dtype, force=job.force, dry_run=job.dry_run, progress=progress)  # type: ignore[arg-type]
        return Result("export", fmt, record)
    size = parse_size(job.max_shard_size, "--max-shard-size")
    record = export_hf(model, job.output, dtype=job.dtype, max_shard_size=size, force=job.force, dry_run=job.dry_run, progress=progress)  # type: ignore[arg-type]
    return _verified(Result("export", fmt, record), job.output, None, job.verify)


def inspect(model: str | os.PathLike[str], job: InspectJob = InspectJob()) -> Result:
    """``yarnconv inspect``: describe a checkpoint or GGUF file and what each runtime makes of it."""
    text = os.fspath(model)
    revision = job.revision
    if text.endswith(".gguf") or os.path.isfile(text):
        if revision is not None:
            raise UsageError("--revision does not apply to a GGUF file", "drop it")
        from yarnconv.gguf.report import inspect_gguf

        return Result("inspect", "gguf", inspect_gguf(model))
    from yarnconv.hf.report import inspect_model

    return Result("inspect", "hf", inspect_model(model, revision=revision))


def demo(job: DemoJob = DemoJob(), *, progress: bool = True) -> Result:
    """``yarnconv demo``: extend the built-in SmolLM2, export it, and check both runtimes agree."""
    from yarnconv.verify.demo import run_demo

    data, checks = run_demo(job.output, job.scale, progress=progress)
    return Result("demo", "builtin:smollm2", data, ok=data["ok"], details={"checks": checks})


def verify(model: str | os.PathLike[str], job: VerifyJob = VerifyJob(), *, progress: bool = False) -> Result:
    """``yarnconv verify``: run the artifact in its runtime (transformers for an HF checkpoint,
    llama.cpp for a GGUF) and compare it with the reference forward running the plan; the report
    is also saved beside it (yarnconv-verify.json, or FILE.gguf.verify.json)."""
    from pathlib import Path

    from yarnconv.verify.run import REPORT, save_report, verify_model

    if job.tokens < 4:
        raise UsageError(f"--tokens {job.tokens} is too short a probe", "use at least 4 (default 256)")
    if job.text and job.seeded:
        raise UsageError("--text and --seeded both choose the probe's tokens", "pass one of them")
    root = Path(model)
    if not root.is_dir() and root.suffix != ".gguf":
        raise YarnconvError(f"{model} is neither a checkpoint directory nor a .gguf file", "verify an HF output directory or a GGUF file")
    if not job.passkey:
        reject(job, ["lengths", "passkey_min"], "a run without --passkey")
    from yarnconv.verify.passkey import parse_lengths

    if job.passkey_min is not None and not 0 <= job.passkey_min <= 1:
        raise UsageError(f"--passkey-min {job.passkey_min} is not an accuracy", "give a number from 0 to 1")

    lengths = parse_lengths(job.lengths) if job.lengths else [] if job.passkey else None
    report, checks = verify_model(
        root, base=job.base, tokens=job.tokens, seed=job.seed, text=job.text, seeded=job.seeded, passkey=lengths, passkey_trials=job.passkey_trials, passkey_min=job.passkey_min, dtype=job.dtype or "auto", progress=progress
    )
    beside = root / REPORT if root.is_dir() else root.with_name(root.name + ".verify.json")
    report["saved"] = str(save_report(beside, report))
    if job.report:
        save_report(Path(job.report), report)
    return Result("verify", report["kind"], report, ok=report["ok"], details={"checks": checks})
