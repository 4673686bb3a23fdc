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

from yarnconv.errors import CheckFailed, UsageError, YarnconvError
from yarnconv.jobs import (
    GGUF_SETTINGS,
    DemoJob,
    EvalJob,
    ExportJob,
    ExtendJob,
    GGUFOptions,
    InspectJob,
    PushJob,
    RunJob,
    VerifyJob,
    parse_size,
)
from yarnconv.options import reject

__all__ = ["DemoJob", "EvalJob", "ExportJob", "ExtendJob", "GGUFOptions", "InspectJob", "PushJob", "Result", "RunJob", "VerifyJob", "parse_size"]

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
        reject(job, ["gguf", *GGUF_SETTINGS, "schema", "precompute_inv_freq", "revision", "base_model"], "patching a GGUF file (its tensors are kept as they are)")
        if job.dry_run:
            reject(job, ["verify"], "a dry run (nothing is written to verify)")
        from yarnconv.gguf.patch import patch

        record = patch(
            model, job.output, job.rope, in_place=job.in_place, force_output=job.force, link=job.link or "auto", dry_run=job.dry_run, progress=progress
        )
        return _verified(Result("extend", route, record), record.get("output") or model, None, job.verify)
    if route == "gguf":
        reject(job, ["in_place", "schema", "precompute_inv_freq", "link", "base_model"], "extend --gguf (it writes one GGUF file)")
        if job.dry_run:
            reject(job, ["verify"], "a dry run (nothing is written to verify)")
    else:
        reject(job, [*GGUF_SETTINGS, "in_place"], "an HF checkpoint output (add --gguf to write GGUF)")
    if job.output is None and not (route == "dry-run"):
        raise UsageError("no output given", "pass -o DIR (or -o FILE.gguf with --gguf)")
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
            imatrix=job.export.imatrix,
            quant_loss=_quant_loss if job.verify else None,
            force=job.force,
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
    from pathlib import Path

    from yarnconv.hf.extend import extending
    from yarnconv.publish.card import write_card

    out = Path(job.output)  # type: ignore[arg-type]
    settings = {"link": job.link or "auto", "force": job.force, "precompute_inv_freq": job.precompute_inv_freq, "revision": job.revision, "base_model": job.base_model}
    with extending(model, out, job.rope, progress=progress, **settings) as (staged, record):
        write_card(staged, name=out.name, figure=False)  # committed with the output; the figure (matplotlib, numpy) is left to the heavier steps
    record["card"] = str(out / "README.md")
    return _carded(_verified(Result("extend", route, record), out, None, job.verify), out)


def _carded(result: Result, folder: Any) -> Result:
    """The model card refreshed with the verify report and its figure (--verify); extend wrote its first one already."""
    from pathlib import Path

    from yarnconv.publish.card import write_card

    if not result.record.get("dry_run") and ("verify" in result.record or result.command != "extend"):
        result.record["card"] = str(write_card(Path(folder), figure=result.command == "extend"))
    return result


def _quant_loss(float_file: Any, quantized: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--verify`` on quantized GGUF types: each one's KL against the float file (verify.quant)."""
    from yarnconv.verify.quant import quant_loss

    return quant_loss(float_file, quantized)


def _verified(result: Result, target: Any, base: Any, wanted: bool) -> Result:
    """``--verify``: the fast checks on what was just written; a failure raises and keeps the output."""
    if not wanted or result.record.get("dry_run"):
        return result
    checked = verify(target, VerifyJob(base=base))
    result.record["verify"] = checked.record
    result.details["verify"] = checked
    if not checked.ok:
        failed = next(c for c in checked.details["checks"] if c.status == "failed")
        raise CheckFailed(
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
        imatrix=job.export.imatrix,
        quant_loss=_quant_loss if job.verify else None,
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
            if "vs_float" in v:  # the report beside the file keeps what quantization cost (the card shows it)
                import json
                from pathlib import Path

                from yarnconv.verify.run import save_report

                saved = Path(v["verify"]["saved"])
                save_report(saved, {**json.loads(saved.read_text()), "vs_float": v["vs_float"]})
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
    return _carded(_verified(Result("export", fmt, record), job.output, None, job.verify), job.output)


def inspect(model: str | os.PathLike[str], job: InspectJob = InspectJob()) -> Result:
    """``yarnconv inspect``: describe a checkpoint or GGUF file and what each runtime makes of it."""
    text = os.fspath(model)
    revision = job.revision
    if text.endswith(".safetensors") and os.path.isfile(text):
        reject(job, ["revision"], "a safetensors file")
        from yarnconv.hf.report import inspect_safetensors

        return Result("inspect", "safetensors", inspect_safetensors(model))
    if text.endswith(".gguf") or os.path.isfile(text):
        if revision is not None:
            raise UsageError("--revision does not apply to a GGUF file", "drop it")
        from yarnconv.gguf.report import inspect_gguf

        return Result("inspect", "gguf", inspect_gguf(model))
    from yarnconv.hf.report import inspect_model

    return Result("inspect", "hf", inspect_model(model, revision=revision))


def hints(model: str | os.PathLike[str]) -> Result:
    """``yarnconv hints``: the launch command for each runtime (transformers, vLLM, SGLang, llama.cpp,
    ollama) sized to the extended context, and the KV cache that context needs per cache dtype."""
    from yarnconv.publish.hints import hints as launch_hints

    return Result("hints", "gguf" if os.fspath(model).endswith(".gguf") else "hf", launch_hints(model))


def push(folder: str | os.PathLike[str], repo_id: str, job: PushJob = PushJob(), *, progress: bool = True) -> Result:
    """``yarnconv push``: publish an output folder (checkpoint or GGUF) to the Hub in one commit, the
    card refreshed first; only files yarnconv wrote or copied go up."""
    from yarnconv.publish.hub import push as publish

    patterns = {k: [p.strip() for p in (getattr(job, k) or "").split(",") if p.strip()] or None for k in ("include", "exclude")}
    record = publish(folder, repo_id, base_model=job.base_model, private=job.private, revision=job.revision, create_pr=job.create_pr, commit_message=job.commit_message, dry_run=job.dry_run, progress=progress, **patterns)
    return Result("push", "dry-run" if job.dry_run else "hub", record)


def demo(job: DemoJob = DemoJob(), *, progress: bool = True) -> Result:
    """``yarnconv demo``: extend the built-in SmolLM2, export it, and check both runtimes agree."""
    from yarnconv.verify.demo import run_demo

    data, checks = run_demo(job.output, job.scale, progress=progress)
    from pathlib import Path

    from yarnconv.publish.card import write_card
    from yarnconv.publish.hub import push as publish

    out = Path(job.output)
    data["card"] = str(write_card(out))  # with verify's report and the figure
    name = f"SmolLM2-135M-Instruct-YaRN-{data['extend']['max_position_embeddings']['after'] // 1024}k"
    planned = publish(out, f"your-name/{name}", dry_run=True)
    data["push_dry_run"] = {k: planned[k] for k in ("repo_id", "bytes", "left_out")} | {"files": [f["path"] for f in planned["files"]]}
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
        root, base=job.base, tokens=job.tokens, seed=job.seed, text=job.text, seeded=job.seeded, passkey=lengths, passkey_trials=job.passkey_trials, passkey_min=job.passkey_min, dtype=job.dtype or "auto", progress=progress,
        engines=list(job.engine) or None, engine_python=job.engine_python,
    )
    beside = root / REPORT if root.is_dir() else root.with_name(root.name + ".verify.json")
    report["saved"] = str(save_report(beside, report))
    if job.report:
        save_report(Path(job.report), report)
    return Result("verify", report["kind"], report, ok=report["ok"], details={"checks": checks})


def evaluate(model: str | os.PathLike[str], job: EvalJob = EvalJob(), *, progress: bool = False) -> Result:
    """``yarnconv eval``: perplexity against context length (and passkey accuracy) for the extended model,
    its base and the other scalings at the same factor; saved beside the model (yarnconv-eval.json and
    its PNG, or FILE.gguf.eval.json) and shown in its model card."""
    from pathlib import Path

    from yarnconv.evaluation.protocol import parse_lengths
    from yarnconv.evaluation.report import save
    from yarnconv.evaluation.rows import parse_methods
    from yarnconv.evaluation.run import evaluate_model

    if not job.passkey:
        reject(job, ["passkey_trials"], "a run without --passkey")
    lengths = parse_lengths(job.lengths) if job.lengths else None
    report = evaluate_model(
        Path(model), base=job.base, lengths=lengths, methods=parse_methods(job.methods), stride=job.stride, windows=job.windows, texts=job.text,
        engine=job.engine, passkey=job.passkey, passkey_trials=job.passkey_trials, seed=job.seed, progress=progress,
    )  # fmt: skip
    save(Path(model), report, Path(job.report) if job.report else None)
    return Result("eval", report["kind"], report)


def run(recipe: str | os.PathLike[str], job: RunJob = RunJob(), *, progress: bool = True) -> Result:
    """``yarnconv run RECIPE``: extend, export and verify as a TOML recipe says (a file, or a shipped
    recipe by name), then write the model cards and, with ``--push``, publish. The checkpoint goes
    to OUTPUT (in the recipe's [hf] dtype and shards), GGUF files to OUTPUT-GGUF/ (a GGUF repo beside
    the model repo, as the Hub names them); the recipe is saved into OUTPUT."""
    import dataclasses
    import shutil
    from pathlib import Path

    from yarnconv.publish.recipe import as_dict, load_recipe, recipe_steps

    r = load_recipe(recipe)
    model = job.model or r.model
    if not model:
        raise UsageError(f"{r.path} names no [source] model", "pass --model DIR (or a Hub id)")
    if job.push and r.push is None:
        raise UsageError(f"{r.path} has no [push] table to push to", 'add [push] repo = "name", or drop --push')
    rope = r.extend
    revision = r.revision if not job.model else None
    record: dict[str, Any] = {"dry_run": job.dry_run, **as_dict(r), "model": str(model), "steps": recipe_steps(r, model, str(job.output or "OUTPUT"), job.push)}
    if job.dry_run:
        record["plan"] = extend(model, ExtendJob(rope=rope, revision=revision, dry_run=True), progress=False).record
        return Result("run", "dry-run", record)
    if job.output is None:
        raise UsageError("no output given", "pass -o DIR, or --dry-run to see the plan")
    out = Path(job.output)
    gguf_dir = out.parent / f"{out.name}-GGUF"
    checks = r.verify is not None
    ext_job = ExtendJob(output=str(out), rope=rope, force=job.force, link=r.link, precompute_inv_freq=r.precompute_inv_freq, revision=revision, verify=checks and r.hf is None, base_model=job.base_model)
    if r.hf is None:
        record["extend"] = extend(model, ext_job, progress=progress).record
    else:  # extend beside the output, then write the checkpoint in the recipe's dtype and shards
        from yarnconv.storage.atomic import scratch_path, sweep_stale

        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out.absolute().parent)  # a run killed with -9 left its scratch here
        scratch = scratch_path(out.absolute().parent, "run") / "extended"
        scratch.parent.mkdir()
        try:
            record["extend"] = extend(model, dataclasses.replace(ext_job, output=str(scratch)), progress=progress).record
            hf_job = ExportJob(hf=True, output=str(out), dtype=r.hf.get("dtype"), max_shard_size=r.hf.get("max_shard_size"), force=job.force, verify=checks)
            record["hf"] = export(scratch, hf_job, progress=progress).record
        finally:
            shutil.rmtree(scratch.parent, ignore_errors=True)
    (out / "yarnconv-recipe.toml").write_text(r.text, encoding="utf-8")
    if r.gguf is not None:
        gguf_job = ExportJob(gguf=True, output=os.path.join(str(gguf_dir), ""), export=r.gguf, force=job.force, verify=checks)
        record["gguf"] = export(out, gguf_job, progress=progress).record
    if r.verify is not None and r.verify.passkey:
        from yarnconv.storage.sources import resolve

        record["passkey"] = verify(out, dataclasses.replace(r.verify, base=str(resolve(model, revision).path)), progress=progress).record
    if r.eval is not None:
        record["eval"] = evaluate(out, r.eval, progress=progress).record
    from yarnconv.publish.card import write_card

    record["cards"] = [str(write_card(out))] + ([str(write_card(gguf_dir, gguf=True, record_dir=out))] if r.gguf is not None else [])
    if job.push and r.push is not None:
        from yarnconv.publish.hub import full_repo_id

        repo, settings = full_repo_id(r.push["repo"]), PushJob(private=bool(r.push.get("private")))
        record["push"] = [push(out, repo, settings, progress=progress).record]
        if r.gguf is not None:
            record["push"].append(push(gguf_dir, f"{repo}-GGUF", settings, progress=progress).record)
    return Result("run", "recipe", record)
