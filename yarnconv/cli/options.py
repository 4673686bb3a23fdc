"""Click options derived from the library's request dataclasses (one definition, see yarnconv.options)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from yarnconv.options import flag, flat_fields, from_flat

T = TypeVar("T")


def _option(name: str, meta: Any, default: Any) -> Callable[[Any], Any]:
    decls = [meta["short"], flag(name)] if meta.get("short") else [flag(name)]
    kw: dict[str, Any] = {"help": meta.get("help") or None, "required": bool(meta.get("required"))}
    if isinstance(default, bool):
        return click.option(*decls, name, is_flag=True, **kw)
    if meta.get("choices"):
        kw["type"] = click.Choice(list(meta["choices"]))
    elif meta.get("kind") is os.PathLike:
        kw["type"] = click.Path()
    elif meta.get("kind") in (int, float):
        kw["type"] = meta["kind"]
    if meta.get("multiple"):
        return click.option(*decls, name, multiple=True, **kw)
    if meta.get("shown"):  # the library fills it in; None tells it the user gave none
        kw["help"] = f"{kw['help'] or ''}  [default: {meta['shown']}]".strip()
    elif default is not None:
        kw["show_default"] = True
    return click.option(*decls, name, default=default, **kw)


def request_options(cls: type) -> Callable[[Any], Any]:
    """Decorate a command with one option per leaf field of ``cls``, in field order."""

    def wrap(func: Any) -> Any:
        for path, f in reversed(list(flat_fields(cls))):
            func = _option(path[-1], f.metadata, f.default)(func)
        return func

    return wrap


def request_from(cls: type[T], params: dict[str, Any]) -> T:
    """Take ``cls``'s settings out of a command's parameters (the rest stay in ``params``)."""
    names = [path[-1] for path, _ in flat_fields(cls)]
    return from_flat(cls, {n: params.pop(n) for n in names if n in params})


def quiet_and_json(func: Any) -> Any:
    """The two presentation flags every long-running command takes."""
    func = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(func)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar.")(func)
