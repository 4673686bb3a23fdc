"""One factory per pipeline step. Each returns a :class:`~yarnconv.pipeline.driver.Step` whose
``run`` calls the library room that does the work (hf, gguf, verify, evaluation, publish) and
returns that step's record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yarnconv.errors import CheckFailed, YarnconvError
from yarnconv.jobs import EvalJob, ExtendJob, GGUFOptions, PushJob, VerifyJob
from yarnconv.pipeline.driver import State, Step
from yarnconv.storage.files import RECORD

CARD = "README.md"


def extend_hf(model: str | os.PathLike[str], job: ExtendJob, describe: str, *, key: str | None = None) -> Step:
    """An extended HF checkpoint, its model card (with the figure) written inside the atomic commit."""

    def run(s: State) -> dict[str, Any]:
        from yarnconv.hf.extend import extending
        from yarnconv.publish.card import write_card

        out = Path(job.output)  # type: ignore[arg-type]
        settings = {"link": job.link or "auto", "force": job.force, "precompute_inv_freq": job.precompute_inv_freq, "revision": job.revision, "base_model": job.base_model}
        with extending(model, out, job.rope, progress=s.progress, **settings) as (staged, record):
            write_card(staged, name=out.name, record=record)  # from the record in hand, committed with the output
        record["card"] = str(out / CARD)
        return record

    return Step(key, describe, run)


def patch_gguf(model: str | os.PathLike[str], job: ExtendJob, describe: str) -> Step:
    """A GGUF file's YaRN keys rewritten (a copy, or in place)."""

    def run(s: State) -> dict[str, Any]:
        from yarnconv.gguf.patch import patch

        return patch(model, job.output, job.rope, in_place=job.in_place, force_output=job.force, link=job.link or "auto", dry_run=job.dry_run, progress=s.progress)

    return Step(None, describe, run)


def export_gguf(
    model: str | os.PathLike[str], output: str, options: GGUFOptions, describe: str, *, key: str | None = None, force: bool = False, dry_run: bool = False, **settings: Any
) -> Step:
    """GGUF files (settings: name, config, measure). With ``measure`` (--verify),
    each quantized type is measured against the float file before the files take their names."""

    def run(s: State) -> dict[str, Any]:
        from yarnconv.gguf.export import check_outputs, export_record, exporting, plan_gguf

        x = plan_gguf(
            model, output, outtype=options.outtype or "auto", route=options.gguf_rope or "auto", pre_tokenizer=options.pre_tokenizer,
            split_max_size=options.split_bytes(), imatrix=options.imatrix, **settings,
        )  # fmt: skip
        record = export_record(x)
        check_outputs(x, force=force)
        if dry_run:
            return record
        with exporting(x, record, progress=s.progress) as staged:
            if staged.measured:
                from yarnconv.verify.quant import quant_loss

                staged.add_losses(quant_loss(staged.float_file, staged.measured))
        return record

    return Step(key, describe, run)


def export_hf(model: str | os.PathLike[str], output: str, describe: str, *, key: str | None = None, **settings: Any) -> Step:
    """An HF checkpoint cast and resharded (settings: dtype, max_shard_size, force, dry_run); a yarnconv
    output's card is written inside the atomic commit."""

    def run(s: State) -> dict[str, Any]:
        from yarnconv.hf.variant import plan_hf, writing_hf
        from yarnconv.publish.card import write_card

        v = plan_hf(model, output, **settings)
        if not settings.get("dry_run"):
            with writing_hf(v, force=settings.get("force", False), progress=s.progress) as staged:
                if (staged / RECORD).is_file():  # a yarnconv output: its card says what the variant is
                    write_card(staged, name=v.out.name)
                    v.record["card"] = str(v.out / CARD)
        return v.record

    return Step(key, describe, run)


def verify_outputs(of: str | None, base: str | os.PathLike[str] | None, describe: str, *, fallback: Any = None) -> Step:
    """verify's checks on what step ``of`` wrote (each GGUF variant, or the one output; ``fallback``
    when it names none, a GGUF patched in place), each report saved beside its file; the first
    failure stops the command (exit 3), the output kept."""

    def run(s: State) -> None:
        part = s.part(of)
        if part.get("dry_run"):
            return
        variants = part.get("variants") or []
        for v in variants or [part]:
            target = v.get("output") or fallback
            extra = {"vs_float": v["vs_float"]} if "vs_float" in v else {}
            report, checks = verify_artifact(target, VerifyJob(base=None if base is None else str(base)), extra)
            part["verify"] = report
            s.checks += checks
            if variants:
                v["verify"] = {k: report[k] for k in ("ok", "saved")}
            if not report["ok"]:
                failed = next(c for c in checks if c.status == "failed")
                raise CheckFailed(f"verification failed: {failed.name}: {failed.reason}; the output is kept at {target}", f"read {report['saved']} for every check")

    return Step(None, describe, run)


def verify_artifact(model: str | os.PathLike[str], job: VerifyJob, extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Run verify on an HF directory or a GGUF file and save the report beside it (yarnconv-verify.json,
    or FILE.gguf.verify.json) and at ``job.report``; ``extra`` joins the report (quantization loss)."""
    from yarnconv.verify.passkey import parse_lengths
    from yarnconv.verify.run import REPORT, save_report, verify_model

    root = Path(model)
    if not root.is_dir() and root.suffix != ".gguf":
        raise YarnconvError(f"{model} is neither a checkpoint directory nor a .gguf file", "verify an HF output directory or a GGUF file")
    lengths = parse_lengths(job.lengths) if job.lengths else [] if job.passkey else None
    report, checks = verify_model(
        root, base=job.base, tokens=job.tokens, seed=job.seed, text=job.text, seeded=job.seeded, passkey=lengths, passkey_trials=job.passkey_trials, passkey_min=job.passkey_min,
        dtype=job.dtype or "auto", progress=False, engines=list(job.engine) or None, engine_python=job.engine_python,
    )  # fmt: skip
    report.update(extra or {})
    beside = root / REPORT if root.is_dir() else root.with_name(root.name + ".verify.json")
    report["saved"] = str(save_report(beside, report))
    if job.report:
        save_report(Path(job.report), report)
    return report, checks


def verify_job(target: str | os.PathLike[str], job: VerifyJob, describe: str, *, key: str, base_of: tuple[str, str | None] | None = None) -> Step:
    """verify with every setting of ``job`` (a recipe's [verify] passkey run; ``base_of``: the (model,
    revision) whose local copy is the base, resolved when the step runs); reported, not gated."""

    def run(s: State) -> dict[str, Any]:
        import dataclasses

        from yarnconv.storage.sources import resolve

        settings = job if base_of is None else dataclasses.replace(job, base=str(resolve(*base_of).path))
        report, checks = verify_artifact(target, settings)
        s.checks += checks
        return report

    return Step(key, describe, run)


def evaluate(target: str | os.PathLike[str], job: EvalJob, describe: str, *, key: str | None = "eval") -> Step:
    def run(s: State) -> dict[str, Any]:
        return evaluate_artifact(target, job, progress=s.progress)

    return Step(key, describe, run)


def evaluate_artifact(model: str | os.PathLike[str], job: EvalJob, *, progress: bool = False) -> dict[str, Any]:
    """``yarnconv eval``'s report, saved beside the model (and at ``job.report``)."""
    from yarnconv.evaluation.protocol import parse_lengths
    from yarnconv.evaluation.report import save
    from yarnconv.evaluation.rows import parse_methods
    from yarnconv.evaluation.run import evaluate_model

    lengths = parse_lengths(job.lengths) if job.lengths else None
    report = evaluate_model(
        Path(model), base=job.base, lengths=lengths, methods=parse_methods(job.methods), stride=job.stride, windows=job.windows, texts=job.text,
        engine=job.engine, passkey=job.passkey, passkey_trials=job.passkey_trials, seed=job.seed, progress=progress,
    )  # fmt: skip
    save(Path(model), report, Path(job.report) if job.report else None)
    return report


def card(folder: str | os.PathLike[str], describe: str, *, key: str = "cards", append: bool = True, gguf: bool = False, record_dir: str | os.PathLike[str] | None = None) -> Step:
    """The model card refreshed from what the earlier steps left beside the model (verify, eval), with its figure."""

    def run(s: State) -> str | None:
        from yarnconv.publish.card import write_card

        if s.record.get("dry_run"):
            return None
        return str(write_card(Path(folder), gguf=gguf, record_dir=None if record_dir is None else Path(record_dir)))

    return Step(key, describe, run, append=append)


def push(folder: str | os.PathLike[str], repo_id: str, job: PushJob, describe: str, *, enabled: bool = True, key: str = "push") -> Step:
    def run(s: State) -> dict[str, Any]:
        return push_folder(folder, repo_id, job, progress=s.progress)

    return Step(key, describe, run, enabled=enabled, append=True)


def push_folder(folder: str | os.PathLike[str], repo_id: str, job: PushJob, *, progress: bool = True) -> dict[str, Any]:
    """``yarnconv push``: the folder's card refreshed, then its files in one commit."""
    from yarnconv.publish.hub import push as publish

    patterns = {k: [p.strip() for p in (getattr(job, k) or "").split(",") if p.strip()] or None for k in ("include", "exclude")}
    return publish(
        folder, repo_id, base_model=job.base_model, private=job.private, revision=job.revision, create_pr=job.create_pr, commit_message=job.commit_message, dry_run=job.dry_run,
        progress=progress, **patterns,
    )  # fmt: skip


def write_text(path: Path, text: str, describe: str) -> Step:
    def run(s: State) -> None:
        path.write_text(text, encoding="utf-8")

    return Step(None, describe, run)
