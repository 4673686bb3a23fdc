"""The step lists: one per multi-step command, built from its request (or recipe). The API runs
them with :func:`~yarnconv.pipeline.driver.run_steps`; a dry run prints their descriptions."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from yarnconv.jobs import DemoJob, ExportJob, ExtendJob, PushJob, RunJob, VerifyJob
from yarnconv.pipeline import steps
from yarnconv.pipeline.driver import State, Step

VERIFY_HF = "verify it in transformers against the reference forward; a failure exits 3, the output kept"
VERIFY_GGUF = "verify each GGUF in llama.cpp against the reference forward (and each quantized type's KL against the float file); a failure exits 3"


def for_extend(model: str | os.PathLike[str], job: ExtendJob, route: str) -> list[Step]:
    """``extend``: patch a GGUF, write GGUF (--gguf) or an HF checkpoint; then --verify, and the card refreshed with its report."""
    out = str(job.output)
    if route == "patch":
        target = "in place" if job.in_place else out
        return [steps.patch_gguf(model, job, f"patch {model} -> {target}"), *_verify(job.verify, None, VERIFY_GGUF, fallback=model)]
    if route == "gguf":
        from yarnconv.hf.extend import plan_for

        src, _, plan = plan_for(model, job.rope, revision=job.revision)
        write = steps.export_gguf(src.path, out, job.export, f"extend {model} and write it as GGUF -> {out}", config=plan.config, force=job.force, dry_run=job.dry_run, measure=job.verify)
        summary = Step(None, "record the plan (method, factor, lengths) in the result", lambda s: plan.summary())
        return [write, summary, *_verify(job.verify, None, VERIFY_GGUF)]
    return [steps.extend_hf(model, job, f"extend {model} -> {out}"), *_verify(job.verify, None, VERIFY_HF), *_refresh(job.verify, out)]


def for_export(model: str | os.PathLike[str], job: ExportJob, fmt: str) -> list[Step]:
    """``export``: one format, then --verify on each file written (MODEL as the base of a GGUF)."""
    out = str(job.output)
    if fmt == "gguf":
        base = model if os.path.isdir(model) else None
        write = steps.export_gguf(model, out, job.export, f"export {model} as GGUF -> {out}", name=job.name, force=job.force, dry_run=job.dry_run, measure=job.verify)
        return [write, *_verify(job.verify, base, VERIFY_GGUF)]
    if fmt == "safetensors":
        from yarnconv.hf.variant import export_safetensors

        def one_file(s: State) -> dict[str, Any]:
            return export_safetensors(model, out, dtype=job.dtype, force=job.force, dry_run=job.dry_run, progress=s.progress)

        return [Step(None, f"export {model} as one safetensors file -> {out}", one_file)]
    from yarnconv.jobs import parse_size

    size = parse_size(job.max_shard_size, "--max-shard-size")
    write = steps.export_hf(model, out, f"export {model} as an HF checkpoint -> {out}", dtype=job.dtype, max_shard_size=size, force=job.force, dry_run=job.dry_run)
    return [write, *_verify(job.verify, None, VERIFY_HF), *_refresh(job.verify, out)]


def _refresh(verified: bool, out: str) -> list[Step]:
    """After --verify, the card written with the output is redrawn with the verify report."""
    return [steps.card(out, "refresh its model card with the verify report", key="card", append=False)] if verified else []


def _verify(wanted: bool, base: Any, describe: str, of: str | None = None, fallback: Any = None) -> list[Step]:
    return [steps.verify_outputs(of, base, describe, fallback=fallback)] if wanted else []


def for_recipe(r: Any, model: str, job: RunJob) -> list[Step]:
    """``run RECIPE``: extend (resaved in the [hf] dtype and shards), the recipe saved, GGUF, verify,
    passkey, eval, the cards, and with --push both repos. Every step is listed, so the dry run shows them."""
    from yarnconv.publish.recipe import given_settings

    out = Path(job.output or "OUTPUT")
    gguf_dir = out.parent / f"{out.name}-GGUF"
    checks = r.verify is not None
    ext = recipe_extend_job(r, job, str(out))
    revision = ext.revision
    what = f"extend {model} -> {out} ({', '.join(f'{k} {v}' for k, v in given_settings(r.extend).items())})"
    if r.hf is None:
        made = [steps.extend_hf(model, ext, what, key="extend"), *_verify(checks, None, VERIFY_HF, of="extend")]
    else:
        hf = f", then written as {r.hf.get('dtype', 'the same dtype')}" + (f" in shards of {r.hf['max_shard_size']}" if r.hf.get("max_shard_size") else "")
        made = [_extend_resaved(model, ext, r.hf, what + hf), *_verify(checks, None, VERIFY_HF, of="hf")]
    made.append(steps.write_text(out / "yarnconv-recipe.toml", r.text, f"save the recipe as {out}/yarnconv-recipe.toml"))
    cards = [steps.card(out, f"write the model card {out}/README.md")]
    if r.gguf is not None:
        gguf_out = os.path.join(str(gguf_dir), "")
        made += [steps.export_gguf(out, gguf_out, r.gguf, f"export GGUF {r.gguf.outtype} -> {gguf_dir}/", key="gguf", force=job.force, measure=checks), *_verify(checks, out, VERIFY_GGUF, of="gguf")]
        cards.append(steps.card(gguf_dir, f"write the GGUF folder's model card {gguf_dir}/README.md", gguf=True, record_dir=out))
    if r.verify is not None and r.verify.passkey:
        made.append(steps.verify_job(out, r.verify, f"passkey retrieval in {out}, beside the source", key="passkey", base_of=(model, revision)))
    if r.eval is not None:
        methods = r.eval.methods if r.eval.methods is not None else "linear,dynamic,yarn"
        what = f"eval {out}: perplexity at {r.eval.lengths or 'the default lengths'} for it and its base" + (f", and {methods} at the same factor" if methods else "")
        made.append(steps.evaluate(out, r.eval, what + (", with passkey retrieval" if r.eval.passkey else "")))
    return made + cards + _pushes(r, out, gguf_dir, job.push)


def recipe_extend_job(r: Any, job: RunJob, output: str | None) -> ExtendJob:
    """The extend a recipe asks for; the recipe's [source] revision applies to its own model only, not to --model."""
    revision = r.revision if not job.model else None
    return ExtendJob(output=output, rope=r.extend, force=job.force, link=r.link, precompute_inv_freq=r.precompute_inv_freq, revision=revision, base_model=job.base_model, dry_run=output is None)


def _pushes(r: Any, out: Path, gguf_dir: Path, pushing: bool) -> list[Step]:
    if r.push is None:
        return []
    from yarnconv.publish.hub import full_repo_id

    repo, settings = r.push["repo"], PushJob(private=bool(r.push.get("private")))
    when = "" if pushing else " (with --push)"
    where = repo + (" (private)" if r.push.get("private") else "")
    full = full_repo_id(repo) if pushing else repo
    made = [steps.push(out, full, settings, f"push {out} -> {where}{when}", enabled=pushing)]
    if r.gguf is not None:
        made.append(steps.push(gguf_dir, f"{full}-GGUF", settings, f"push {gguf_dir} -> {repo}-GGUF{when}", enabled=pushing))
    return made


def _extend_resaved(model: str, ext: ExtendJob, hf: dict[str, Any], describe: str) -> Step:
    """extend into scratch beside the output, then the checkpoint written in the recipe's dtype and shards."""

    def run(s: State) -> dict[str, Any]:
        import shutil

        from yarnconv.jobs import parse_size
        from yarnconv.storage.atomic import scratch_path, sweep_stale

        out = Path(ext.output)  # type: ignore[arg-type]
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out.absolute().parent)  # a run killed with -9 left its scratch here
        scratch = scratch_path(out.absolute().parent, "run") / "extended"
        scratch.parent.mkdir()
        try:
            s.record["extend"] = steps.extend_hf(model, dataclasses.replace(ext, output=str(scratch)), describe).run(s)
            size = parse_size(hf.get("max_shard_size"), "--max-shard-size")
            return steps.export_hf(scratch, str(out), describe, dtype=hf.get("dtype"), max_shard_size=size, force=ext.force).run(s)
        finally:
            shutil.rmtree(scratch.parent, ignore_errors=True)

    return Step("hf", describe, run)


def for_demo(job: DemoJob) -> list[Step]:
    """``demo``: the built-in SmolLM2 extended, read back by transformers (rotary buffers), exported to
    GGUF and run in llama.cpp (logits against transformers'), verified in both, carded, and a push planned."""
    out = os.fspath(job.output)
    gguf_path = f"{out.rstrip(os.sep)}.gguf"
    from yarnconv.jobs import GGUFOptions

    def extend(s: State) -> dict[str, Any]:
        from yarnconv.plan import ExtendRequest
        from yarnconv.storage.sources import materialize_builtin

        ext = ExtendJob(output=out, rope=ExtendRequest(scale=job.scale), force=True, precompute_inv_freq=True)
        return steps.extend_hf(materialize_builtin("smollm2"), ext, "").run(s)

    def inspect(s: State) -> dict[str, Any]:
        from yarnconv.hf.report import inspect_model

        return inspect_model(out)

    def rotary(s: State) -> dict[str, Any]:
        from yarnconv.verify.rotary import rotary_check

        s.checks.append(check := rotary_check(out))
        return check.measured

    def logits(s: State) -> dict[str, Any]:
        from yarnconv.verify.logits import gguf_check

        s.checks.append(check := gguf_check(out, gguf_path))
        return check.measured if check.status != "skipped" else {"skipped": check.reason}

    return [
        Step("extend", f"extend builtin:smollm2 -> {out} (YaRN x{job.scale:g})", extend),
        Step("inspect", f"inspect {out}", inspect),
        Step("transformers_check", "transformers' rotary buffers against yarnconv's", rotary),
        steps.export_gguf(out, gguf_path, GGUFOptions(outtype="f32"), f"export {out} -> {gguf_path} (F32)", key="gguf", force=True),
        Step("llama_cpp_check", "llama.cpp's logits against transformers' on the same tokens", logits),
        Step("verify", "verify both outputs against the reference forward", lambda s: _verify_both(s, out, gguf_path)),
        steps.card(out, f"write the model card {out}/README.md, with verify's report and the figure", key="card", append=False),
        Step("push_dry_run", "plan a push (dry run)", lambda s: _planned_push(s, Path(out))),
    ]


def _verify_both(s: State, out: str, gguf_path: str) -> dict[str, Any]:
    """verify in transformers and in llama.cpp (skipped when the llama.cpp check could not run); judged by the demo."""
    verified = {}
    for kind, target, base in (("hf", out, None), ("gguf", gguf_path, out)):
        if kind == "gguf" and "skipped" in s.record["llama_cpp_check"]:
            continue  # no llama-cpp-python: the logits check already says so
        report, found = steps.verify_artifact(target, VerifyJob(base=base))
        verified[kind] = {"ok": report["ok"], "saved": report["saved"], "checks": len(found)}
        s.checks += [c for c in found if c.status in ("passed", "failed")]
    return verified


def _planned_push(s: State, out: Path) -> dict[str, Any]:
    name = f"SmolLM2-135M-Instruct-YaRN-{s.record['extend']['max_position_embeddings']['after'] // 1024}k"
    planned = steps.push_folder(out, f"your-name/{name}", PushJob(dry_run=True))
    return {k: planned[k] for k in ("repo_id", "bytes", "left_out")} | {"files": [f["path"] for f in planned["files"]]}
