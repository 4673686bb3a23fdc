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

from yarnconv.jobs import (
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


def _run(command: str, route: str, steps: list[Any], progress: bool, *, record: dict[str, Any] | None = None) -> Result:
    from yarnconv.pipeline.driver import State, run_steps

    state = run_steps(steps, State(progress=progress, record=record or {}))
    return Result(command, route, state.record, details={"checks": state.checks})


def extend(model: str | os.PathLike[str], job: ExtendJob, *, progress: bool = True) -> Result:
    """``yarnconv extend``: an extended copy of ``model`` (HF directory, Hub id, builtin:NAME or .gguf file)."""
    from yarnconv.routes import extend_route

    names = extend_route(model, job)
    if names == ["hf", "dry-run"]:
        from yarnconv.hf.extend import plan_for

        _, _, plan = plan_for(model, job.rope, revision=job.revision)
        record = {"dry_run": True, **plan.summary(), "config": plan.config}
        return Result("extend", "dry-run", record, details={"rope_block": plan.written_block()})
    from yarnconv.pipeline.build import for_extend

    return _run("extend", names[0], for_extend(model, job, names[0]), progress)


def export(model: str | os.PathLike[str], job: ExportJob, *, progress: bool = True) -> Result:
    """``yarnconv export``: GGUF with the YaRN keys llama.cpp honours (and its quant ladder), an HF
    checkpoint cast and resharded, or one safetensors file."""
    from yarnconv.pipeline.build import for_export
    from yarnconv.routes import export_route

    fmt = export_route(job)[0]
    result = _run("export", fmt, for_export(model, job, fmt), progress)
    if fmt == "gguf":
        result.record["dry_run"] = job.dry_run
    return result


def route_help(command: str) -> str:
    """The settings each of ``command``'s routes refuses, as its ``--help`` prints them (see :mod:`yarnconv.routes`)."""
    from yarnconv.routes import help_text

    return help_text(command)


def inspect(model: str | os.PathLike[str], job: InspectJob = InspectJob()) -> Result:
    """``yarnconv inspect``: describe a checkpoint or GGUF file and what each runtime makes of it."""
    from yarnconv.routes import inspect_route

    route = inspect_route(model, job)
    if route == "safetensors":
        from yarnconv.hf.report import inspect_safetensors

        return Result("inspect", route, inspect_safetensors(model))
    if route == "gguf":
        from yarnconv.gguf.report import inspect_gguf

        return Result("inspect", route, inspect_gguf(model))
    from yarnconv.hf.report import inspect_model

    return Result("inspect", route, inspect_model(model, revision=job.revision))


def hints(model: str | os.PathLike[str]) -> Result:
    """``yarnconv hints``: the launch command for each runtime (transformers, vLLM, SGLang, llama.cpp,
    ollama) sized to the extended context, and the KV cache that context needs per cache dtype."""
    from yarnconv.publish.hints import hints as launch_hints

    return Result("hints", "gguf" if os.fspath(model).endswith(".gguf") else "hf", launch_hints(model))


def push(folder: str | os.PathLike[str], repo_id: str, job: PushJob = PushJob(), *, progress: bool = True) -> Result:
    """``yarnconv push``: publish an output folder (checkpoint or GGUF) to the Hub in one commit, the
    card refreshed first; only files yarnconv wrote or copied go up."""
    from yarnconv.pipeline.steps import push_folder

    return Result("push", "dry-run" if job.dry_run else "hub", push_folder(folder, repo_id, job, progress=progress))


def demo(job: DemoJob = DemoJob(), *, progress: bool = True) -> Result:
    """``yarnconv demo``: extend the built-in SmolLM2, export it, and check both runtimes agree."""
    from yarnconv.pipeline.build import for_demo
    from yarnconv.verify.check import demo_ok

    result = _run("demo", "builtin:smollm2", for_demo(job), progress)
    checks = result.details["checks"]
    result.record |= {"checks": [c.to_dict() for c in checks], "ok": demo_ok(checks)}
    result.ok = result.record["ok"]
    return result


def verify(model: str | os.PathLike[str], job: VerifyJob = VerifyJob(), *, progress: bool = False) -> Result:
    """``yarnconv verify``: run the artifact in its runtime (transformers for an HF checkpoint,
    llama.cpp for a GGUF) and compare it with the reference forward running the plan; the report
    is also saved beside it (yarnconv-verify.json, or FILE.gguf.verify.json)."""
    from yarnconv.pipeline.steps import verify_artifact
    from yarnconv.routes import check_verify

    check_verify(job)
    report, checks = verify_artifact(model, job)
    return Result("verify", report["kind"], report, ok=report["ok"], details={"checks": checks})


def evaluate(model: str | os.PathLike[str], job: EvalJob = EvalJob(), *, progress: bool = False) -> Result:
    """``yarnconv eval``: perplexity against context length (and passkey accuracy) for the extended model,
    its base and the other scalings at the same factor; saved beside the model (yarnconv-eval.json and
    its PNG, or FILE.gguf.eval.json) and shown in its model card."""
    from yarnconv.pipeline.steps import evaluate_artifact
    from yarnconv.routes import check_eval

    check_eval(job)
    report = evaluate_artifact(model, job, progress=progress)
    return Result("eval", report["kind"], report)


def run(recipe: str | os.PathLike[str], job: RunJob = RunJob(), *, progress: bool = True) -> Result:
    """``yarnconv run RECIPE``: extend, export and verify as a TOML recipe says (a file, or a shipped
    recipe by name), then write the model cards and, with ``--push``, publish. The checkpoint goes
    to OUTPUT (in the recipe's [hf] dtype and shards), GGUF files to OUTPUT-GGUF/ (a GGUF repo beside
    the model repo, as the Hub names them); the recipe is saved into OUTPUT."""
    from yarnconv.pipeline.build import for_recipe, recipe_extend_job
    from yarnconv.pipeline.driver import describe
    from yarnconv.publish.recipe import as_dict, load_recipe
    from yarnconv.routes import check_run

    r = load_recipe(recipe)
    model = check_run(job, r)
    steps = for_recipe(r, model, job)
    record: dict[str, Any] = {"dry_run": job.dry_run, **as_dict(r), "model": model, "steps": describe(steps)}
    if job.dry_run:
        record["plan"] = extend(model, recipe_extend_job(r, job, None), progress=False).record
        return Result("run", "dry-run", record)
    return _run("run", "recipe", steps, progress, record=record)
