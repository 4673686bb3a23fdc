"""Requests as data: one definition of each command's settings, read by the CLI (its options),
the library (route checks) and recipes (TOML keys).

A field made with :func:`option` carries its help text and choices; a field whose type is
another request dataclass is a group whose fields are flattened (``ExtendJob.rope.scale`` is
``--scale`` on the command line and ``scale`` in a recipe). ``None`` means "not given": the
library fills the default, so it can tell a typed ``--schema portable`` from no ``--schema``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

from yarnconv.errors import UsageError

T = TypeVar("T")


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    short: str | None = None,
    kind: type | None = None,
    required: bool = False,
    multiple: bool = False,
) -> Any:
    """A request field: ``shown`` is the default as the help prints it when ``default`` is None;
    ``multiple``: a repeatable option, a tuple of values (default empty)."""
    meta = {"help": help, "choices": choices, "shown": shown, "short": short, "kind": kind, "required": required, "multiple": multiple}
    return dataclasses.field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """A nested request whose fields are flattened into the parent's."""
    return dataclasses.field(default_factory=cls, metadata={"group": True})


def flat_fields(cls: type) -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any]]]:
    """Every leaf field of a request class with its path, groups flattened in order."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            sub = f.default_factory  # type: ignore[misc]
            for path, leaf in flat_fields(sub):  # type: ignore[arg-type]
                yield (f.name, *path), leaf
        else:
            yield (f.name,), f


def from_flat(cls: type[T], values: dict[str, Any]) -> T:
    """Build a request from flat names (CLI parameters, recipe keys); unknown names are an error."""
    paths = {path[-1]: path for path, _ in flat_fields(cls)}
    unknown = sorted(set(values) - set(paths))
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r}", f"choose from {', '.join(sorted(paths))}")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        node = nested
        for part in paths[name][:-1]:
            node = node.setdefault(part, {})
        node[name] = value
    return _build(cls, nested)


def _build(cls: type[T], tree: dict[str, Any]) -> T:
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in tree:
            value = tree[f.name]
            kwargs[f.name] = _build(f.default_factory, value) if f.metadata.get("group") else value  # type: ignore[arg-type]
    return cls(**kwargs)


def given(request: Any) -> list[str]:
    """Flat names of the settings that differ from their defaults (what the user asked for)."""
    out = []
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if f.metadata.get("group"):
            out += given(value)
        elif value != f.default:
            out.append(f.name)
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")
