"""Which setting applies to which route, as one table.

A command takes one route from its input (extend patches a ``.gguf`` MODEL, writes GGUF with
``--gguf``, else an HF checkpoint) and may add modifiers (``--dry-run``). Every setting of the
command's request applies to a route unless the route's row refuses it, with the reason the user
reads. The library refuses by this table (a usage error, exit 2), ``--help`` prints it, and the
tests check every (route, setting) pair against it. The value checks that follow the table (a probe
too short to measure, two flags choosing the same thing) live here too, so the API entries hold
no rules about single flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from yarnconv.errors import UsageError
from yarnconv.jobs import GGUF_SETTINGS
from yarnconv.options import flag, given


@dataclass(frozen=True)
class Route:
    """One row: taken ``when`` (words for --help), described as ``route`` in a refusal, refusing ``refuses``."""

    name: str
    when: str
    route: str
    refuses: tuple[str, ...]


def _row(name: str, when: str, route: str, *refuses: str) -> Route:
    return Route(name, when, route, refuses)


DRY_RUN = "a dry run (nothing is written to verify)"

ROUTES: dict[str, list[Route]] = {
    "extend": [
        _row("patch", "MODEL is a .gguf file", "patching a GGUF file (its tensors are kept as they are)", "gguf", *GGUF_SETTINGS, "schema", "precompute_inv_freq", "revision", "base_model"),
        _row("gguf", "--gguf", "extend --gguf (it writes one GGUF file)", "in_place", "schema", "precompute_inv_freq", "link", "base_model"),
        _row("hf", "otherwise (an HF checkpoint out)", "an HF checkpoint output (add --gguf to write GGUF)", *GGUF_SETTINGS, "in_place"),
        _row("dry-run", "--dry-run, with any of the above", DRY_RUN, "verify"),
    ],
    "export": [
        _row("gguf", "--gguf", "GGUF export (use --outtype)", "dtype", "max_shard_size"),
        _row("hf", "--hf", "--hf export", *GGUF_SETTINGS, "name"),
        _row("safetensors", "--safetensors", "one safetensors file", *GGUF_SETTINGS, "name", "max_shard_size", "verify"),
        _row("dry-run", "--dry-run, with any of the above", DRY_RUN, "verify"),
    ],
    "verify": [_row("no-passkey", "without --passkey", "a run without --passkey", "lengths", "passkey_min")],
    "eval": [_row("no-passkey", "without --passkey", "a run without --passkey", "passkey_trials")],
    "inspect": [
        _row("safetensors", "MODEL is a .safetensors file", "a safetensors file", "revision"),
        _row("gguf", "MODEL is a .gguf (or other single) file", "a GGUF file", "revision"),
        _row("hf", "otherwise (a checkpoint directory or Hub id)", "a checkpoint directory"),
    ],
}


def route_of(command: str, name: str) -> Route:
    return next(r for r in ROUTES[command] if r.name == name)


def refusal(command: str, name: str, setting: str) -> str | None:
    """Why ``setting`` does not apply to the route, or None when it applies."""
    r = route_of(command, name)
    return r.route if setting in r.refuses else None


def check(command: str, names: list[str], job: Any) -> None:
    """Refuse the given settings that a taken route (``names``: the route, then its modifiers) refuses."""
    for name in names:
        r = route_of(command, name)
        typed = [flag(n) for n in given(job) if n in r.refuses]
        if typed:
            raise UsageError(f"{', '.join(typed)} {'does' if len(typed) == 1 else 'do'} not apply to {r.route}", "drop it")


def help_text(command: str) -> str:
    """The command's rows for its --help epilog (Click keeps ``\\b`` paragraphs as written)."""
    lines = ["\b", "Settings that do not apply, by route:"]
    for r in ROUTES.get(command, []):
        if r.refuses:
            lines.append(f"  {r.when}: not {', '.join(flag(n) for n in r.refuses)}")
    return "\n".join(lines) if len(lines) > 2 else ""


def extend_route(model: str | os.PathLike[str], job: Any) -> list[str]:
    """extend's route (patch a .gguf MODEL, gguf with --gguf, else hf) and its modifiers, checked."""
    main = "patch" if os.fspath(model).endswith(".gguf") else "gguf" if job.gguf else "hf"
    names = [main] + (["dry-run"] if job.dry_run else [])
    check("extend", names, job)
    if job.output is None and main != "patch" and not job.dry_run:
        raise UsageError("no output given", "pass -o DIR (or -o FILE.gguf with --gguf)")
    return names


def export_route(job: Any) -> list[str]:
    """export's format (exactly one of --gguf, --hf, --safetensors) and its modifiers, checked."""
    formats = [f for f in ("gguf", "hf", "safetensors") if getattr(job, f)]
    if len(formats) != 1:
        raise UsageError("choose one export format" if not formats else f"--{' and --'.join(formats)} are different formats", "pass one of --gguf, --hf, --safetensors")
    if job.output is None:
        raise UsageError("no output given", "pass -o FILE.gguf, -o DIR or -o FILE.safetensors")
    names = formats + (["dry-run"] if job.dry_run else [])
    check("export", names, job)
    return names


def check_verify(job: Any) -> None:
    """verify's settings: the table, then the values no table row can judge."""
    if job.tokens < 4:
        raise UsageError(f"--tokens {job.tokens} is too short a probe", "use at least 4 (default 256)")
    if job.text and job.seeded:
        raise UsageError("--text and --seeded both choose the probe's tokens", "pass one of them")
    if not job.passkey:
        check("verify", ["no-passkey"], job)
    if job.passkey_min is not None and not 0 <= job.passkey_min <= 1:
        raise UsageError(f"--passkey-min {job.passkey_min} is not an accuracy", "give a number from 0 to 1")


def check_eval(job: Any) -> None:
    if not job.passkey:
        check("eval", ["no-passkey"], job)


def inspect_route(model: str | os.PathLike[str], job: Any) -> str:
    """inspect's route from the input's kind, checked."""
    text = os.fspath(model)
    name = "safetensors" if text.endswith(".safetensors") and os.path.isfile(text) else "gguf" if text.endswith(".gguf") or os.path.isfile(text) else "hf"
    check("inspect", [name], job)
    return name


def check_run(job: Any, recipe: Any) -> str:
    """The model a recipe run extends (--model, else the recipe's [source]), with its settings checked."""
    model = job.model or recipe.model
    if not model:
        raise UsageError(f"{recipe.path} names no [source] model", "pass --model DIR (or a Hub id)")
    if job.push and recipe.push is None:
        raise UsageError(f"{recipe.path} has no [push] table to push to", 'add [push] repo = "name", or drop --push')
    if job.output is None and not job.dry_run:
        raise UsageError("no output given", "pass -o DIR, or --dry-run to see the plan")
    return str(model)
