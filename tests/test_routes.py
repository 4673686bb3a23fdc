"""The route table (yarnconv.routes): every (command, route, setting) pair is either applied or
refused with the route's reason, the API and the CLI refuse exactly what the table says, and
--help prints the table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from yarnconv.cli import main
from yarnconv.errors import UsageError
from yarnconv.jobs import EvalJob, ExportJob, ExtendJob, InspectJob, VerifyJob
from yarnconv.options import flag, flat_fields, from_flat
from yarnconv.routes import ROUTES, check, help_text

JOBS = {"extend": ExtendJob, "export": ExportJob, "verify": VerifyJob, "eval": EvalJob, "inspect": InspectJob}


def _given(field: dataclasses.Field[Any]) -> Any:
    """A value that differs from the field's default (what a user typing the flag gives)."""
    if field.metadata.get("multiple"):
        return ("x",)
    if field.default is False:
        return True
    if isinstance(field.default, int | float) and not isinstance(field.default, bool):
        return field.default + 1
    return (field.metadata.get("choices") or ("x",))[-1]


PAIRS = [(cmd, r.name, path[-1], f) for cmd, rows in ROUTES.items() for r in rows for path, f in flat_fields(JOBS[cmd])]


def test_the_table_names_only_real_settings() -> None:
    names = {cmd: {path[-1] for path, _ in flat_fields(JOBS[cmd])} for cmd in ROUTES}
    unknown = [(cmd, r.name, n) for cmd, rows in ROUTES.items() for r in rows for n in r.refuses if n not in names[cmd]]
    assert not unknown, unknown
    assert len(PAIRS) > 150  # every setting of every route of five commands


@pytest.mark.parametrize(("command", "route", "setting", "field"), PAIRS, ids=[f"{c}-{r}-{s}" for c, r, s, _ in PAIRS])
def test_every_pair_applies_or_is_refused_with_the_routes_reason(command: str, route: str, setting: str, field: dataclasses.Field[Any]) -> None:
    job = from_flat(JOBS[command], {setting: _given(field)})
    row = next(r for r in ROUTES[command] if r.name == route)
    if setting in row.refuses:
        with pytest.raises(UsageError, match=f"^{flag(setting)} does not apply to {row.route.replace('(', '.').replace(')', '.')}"):
            check(command, [route], job)
    else:
        check(command, [route], job)


def _cli(*args: Any) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extend", "{gguf}", "--scale", "2", "-o", "{tmp}/p.gguf", "--revision", "main"], "--revision does not apply to patching a GGUF file"),
        (["extend", "{hf}", "--scale", "2", "-o", "{tmp}/o.gguf", "--gguf", "--link", "copy"], "--link does not apply to extend --gguf"),
        (["extend", "{hf}", "--scale", "2", "-o", "{tmp}/o", "--outtype", "f16"], "--outtype does not apply to an HF checkpoint output"),
        (["extend", "{hf}", "--scale", "2", "--dry-run", "--verify"], "--verify does not apply to a dry run"),
        (["export", "{hf}", "--gguf", "-o", "{tmp}/o.gguf", "--dtype", "f16"], "--dtype does not apply to GGUF export"),
        (["export", "{hf}", "--hf", "-o", "{tmp}/o", "--outtype", "f16"], "--outtype does not apply to --hf export"),
        (["export", "{hf}", "--safetensors", "-o", "{tmp}/o.safetensors", "--verify"], "--verify does not apply to one safetensors file"),
        (["export", "{hf}", "--hf", "-o", "{tmp}/o", "--dry-run", "--verify"], "--verify does not apply to a dry run"),
        (["verify", "{hf}", "--lengths", "8k"], "--lengths does not apply to a run without --passkey"),
        (["eval", "{hf}", "--passkey-trials", "3"], "--passkey-trials does not apply to a run without --passkey"),
        (["inspect", "{gguf}", "--revision", "main"], "--revision does not apply to a GGUF file"),
    ],
)
def test_the_cli_refuses_what_the_table_refuses_before_any_work(tmp_path: Path, llama_dir: Path, args: list[str], message: str) -> None:
    """One refusal per route row, through the real command line: exit 2, one line, nothing written."""
    gguf = tmp_path / "in.gguf"
    gguf.write_bytes(b"GGUF")  # never read: the route is refused first
    done = _cli(*[a.format(hf=llama_dir, gguf=gguf, tmp=tmp_path) for a in args])
    assert done.exit_code == 2, done.output
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "llama"]


@pytest.mark.parametrize("command", ["extend", "export", "verify", "eval", "inspect"])
def test_help_prints_the_table(command: str) -> None:
    out = _cli(command, "--help").output
    assert "Settings that do not apply, by route:" in out
    for row in ROUTES[command]:
        if row.refuses:
            assert row.when in out and flag(row.refuses[0]) in out
    assert help_text(command).count("\n") == 1 + sum(bool(r.refuses) for r in ROUTES[command])


def test_api_holds_no_per_flag_rules() -> None:
    """The API entries route and refuse through yarnconv.routes only: no flag names in api.py's rules."""
    text = (Path(__file__).parents[1] / "yarnconv" / "api.py").read_text()
    assert "reject(" not in text and "UsageError(" not in text
