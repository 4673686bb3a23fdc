"""TOML recipes: one file that says how a known model is extended, exported and verified.

A recipe's tables map onto the same requests the command line fills, so a key means exactly what
its flag means (``scale`` is ``--scale``)::

    [recipe]                      # name, description
    [source]                      # model (local dir, Hub id or builtin:smollm2), revision
    [extend]                      # scale | target_context, original_context, beta_fast, ... schema, link
    [hf]                          # dtype (f32, f16, bf16) and max_shard_size of the checkpoint written
    [gguf]                        # outtype = ["q4_k_m", "q8_0"], gguf_rope, pre_tokenizer, imatrix
    [verify]                      # enabled, tokens, passkey, lengths, passkey_trials, passkey_min, ...
    [eval]                        # enabled, lengths, methods, stride, windows, text = [...], passkey, ...
    [push]                        # repo (name in your namespace, or org/name), private

Validation is strict and happens before anything runs: an unknown table or key, a value of the
wrong type or outside its choices, or settings that contradict each other are one-line errors
naming the file, the line and the key. Shipped recipes (``yarnconv/recipes/*.toml``, also
``recipes/`` in a checkout) are found by name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.jobs import EvalJob, GGUFOptions, VerifyJob
from yarnconv.options import flat_fields, from_flat
from yarnconv.options import given as given_names
from yarnconv.plan import ExtendRequest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SHIPPED = "yarnconv.recipes"
EXTEND_EXTRA = {"link": ("auto", "reflink", "hardlink", "copy"), "precompute_inv_freq": bool}
VERIFY_SKIP = {"base", "report"}  # the run decides these
EVAL_SKIP = {"base", "report"}  # eval runs on the output, with the rope it had before extend as the base


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; ``text`` is the file as written (saved into the output)."""

    path: str
    text: str
    name: str
    description: str
    model: str | None
    revision: str | None
    extend: ExtendRequest
    link: str | None
    precompute_inv_freq: bool
    gguf: GGUFOptions | None
    verify: VerifyJob | None
    hf: dict[str, str] | None = None  # dtype, max_shard_size
    push: dict[str, Any] | None = None  # repo, private
    eval: EvalJob | None = None  # noqa: A003 - the command's name


def shipped() -> list[str]:
    """Names of the recipes that come with yarnconv."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files(SHIPPED).iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | os.PathLike[str]) -> Recipe:
    """A recipe file, or a shipped recipe by name (``smollm2-135m-32k``)."""
    p = Path(name_or_path)
    if p.is_file():
        return parse_recipe(p.read_text(encoding="utf-8"), str(p))
    if p.suffix != ".toml" and os.sep not in str(name_or_path):
        res = resources.files(SHIPPED) / f"{name_or_path}.toml"
        if res.is_file():
            return parse_recipe(res.read_text(encoding="utf-8"), f"{name_or_path}.toml (shipped)")
    raise YarnconvError(f"no recipe {name_or_path}: not a file, nor a shipped recipe", f"pass a .toml file or one of {', '.join(shipped())}")


def parse_recipe(text: str, where: str = "recipe") -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise YarnconvError(f"{where}: not valid TOML ({exc})", "fix the syntax at that line") from None
    _check_keys(text, where, data)
    ext = dict(data.get("extend", {}))
    if ("scale" in ext) == ("target_context" in ext):
        raise _error(text, where, "extend", "scale" if "scale" in ext else None, "[extend] needs exactly one of scale and target_context", "keep one of them")
    gguf, ver, ev = _gguf_table(text, where, data), _verify_table(text, where, data), _eval_table(text, where, data)
    if "push" in data and "repo" not in data["push"]:
        raise _error(text, where, "push", None, "[push] needs repo", 'add repo = "name" (your namespace) or "org/name"')
    if "max_shard_size" in data.get("hf", {}):
        from yarnconv.jobs import parse_size

        try:
            parse_size(data["hf"]["max_shard_size"], "max_shard_size")
        except YarnconvError as exc:
            raise _error(text, where, "hf", "max_shard_size", f"[hf] {exc}", exc.hint or "") from None
    link, precompute = ext.pop("link", None), bool(ext.pop("precompute_inv_freq", False))
    meta, source = data.get("recipe", {}), data.get("source", {})
    return Recipe(
        where,
        text,
        meta.get("name", Path(where.split(" ")[0]).stem),
        meta.get("description", ""),
        source.get("model"),
        source.get("revision"),
        from_flat(ExtendRequest, ext),
        link,
        precompute,
        from_flat(GGUFOptions, gguf) if gguf is not None else None,
        from_flat(VerifyJob, ver) if ver is not None else None,
        dict(data["hf"]) if "hf" in data else None,
        dict(data["push"]) if "push" in data else None,
        from_flat(EvalJob, ev) if ev is not None else None,
    )


def _check_keys(text: str, where: str, data: dict[str, Any]) -> None:
    """Every table and key known, every value of its type; errors name the line."""
    known = {"recipe": {"name": str, "description": str}, "source": {"model": str, "revision": str}}
    known["extend"] = {**_field_types(ExtendRequest), **EXTEND_EXTRA}
    known["gguf"] = {**_field_types(GGUFOptions), "outtype": (str, list)}
    known["verify"] = {**_field_types(VerifyJob, skip=VERIFY_SKIP), "enabled": bool}
    known["hf"] = {"dtype": ("f32", "f16", "bf16"), "max_shard_size": str}
    known["push"] = {"repo": str, "private": bool}
    known["eval"] = {**_field_types(EvalJob, skip=EVAL_SKIP), "text": (str, list), "enabled": bool}
    for table, values in data.items():
        if table not in known and not isinstance(values, dict):
            raise _error(text, where, None, table, f"unknown key {table!r} outside any table", f"keys belong in tables: {', '.join(f'[{t}]' for t in known)}")
        if table not in known:
            raise _error(text, where, table, None, f"unknown table [{table}]", f"tables are {', '.join(f'[{t}]' for t in known)}")
        if not isinstance(values, dict):
            raise _error(text, where, None, table, f"{table} must be a table ([{table}])", "write it as a [table] with keys")
        for key, value in values.items():
            if key not in known[table]:
                raise _error(text, where, table, key, f"unknown key {key!r} in [{table}]", f"keys of [{table}]: {', '.join(known[table])}")
            _check(text, where, table, key, value, known[table][key])


def _gguf_table(text: str, where: str, data: dict[str, Any]) -> dict[str, Any] | None:
    gguf = dict(data["gguf"]) if "gguf" in data else None
    if gguf is not None:
        from yarnconv.gguf.quantize import parse_outtypes

        types = gguf.get("outtype", "auto")
        gguf["outtype"] = ",".join(types) if isinstance(types, list) else types
        try:
            parse_outtypes(gguf["outtype"], imatrix="imatrix" in gguf)
        except YarnconvError as exc:
            raise _error(text, where, "gguf", "outtype", str(exc), exc.hint or "") from None
    return gguf


def _verify_table(text: str, where: str, data: dict[str, Any]) -> dict[str, Any] | None:
    ver = dict(data["verify"]) if "verify" in data else None
    if ver is not None and not ver.pop("enabled", True):
        ver = None
    if ver is not None and ("lengths" in ver or "passkey_min" in ver) and not ver.get("passkey"):
        raise _error(text, where, "verify", "lengths" if "lengths" in ver else "passkey_min", "[verify] lengths and passkey_min need passkey = true", "set passkey = true or drop them")
    return ver


def _eval_table(text: str, where: str, data: dict[str, Any]) -> dict[str, Any] | None:
    ev = dict(data["eval"]) if "eval" in data else None
    if ev is not None and not ev.pop("enabled", True):
        ev = None
    if ev is not None:
        ev["text"] = tuple([ev["text"]] if isinstance(ev.get("text", []), str) else ev.get("text", []))
        if "passkey_trials" in ev and not ev.get("passkey"):
            raise _error(text, where, "eval", "passkey_trials", "[eval] passkey_trials needs passkey = true", "set passkey = true or drop it")
    return ev


def _field_types(cls: type, skip: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Recipe key -> expected type (or tuple of choices) from a request's fields."""
    out: dict[str, Any] = {}
    for path, f in flat_fields(cls):
        name = path[-1]
        if name in skip:
            continue
        meta = f.metadata
        if meta.get("choices"):
            out[name] = tuple(meta["choices"])
        elif meta.get("kind") in (float, int):
            out[name] = meta["kind"]
        elif isinstance(f.default, bool):
            out[name] = bool
        elif isinstance(f.default, int) and not isinstance(f.default, bool):
            out[name] = int
        else:
            out[name] = str
    return out


def _check(text: str, where: str, table: str, key: str, value: Any, want: Any) -> None:
    if isinstance(want, tuple) and all(isinstance(w, str) for w in want):
        if value not in want:
            raise _error(text, where, table, key, f"[{table}] {key} = {value!r} is not one of {', '.join(want)}", f"choose one of {', '.join(want)}")
        return
    kinds = want if isinstance(want, tuple) else (want,)
    ok = any(_is(value, k) for k in kinds)
    if ok and isinstance(value, list) and not all(isinstance(v, str) for v in value):
        ok = False
    if not ok:
        names = " or ".join({float: "a number", int: "an integer", bool: "true or false", str: "a string", list: "a list of strings"}[k] for k in kinds)
        raise _error(text, where, table, key, f"[{table}] {key} must be {names}, not {value!r}", f"write {key} as {names}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and key not in ("seed",):
        raise _error(text, where, table, key, f"[{table}] {key} = {value!r} must be positive", f"give {key} a positive value")


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _line(text: str, table: str | None, key: str | None) -> int | None:
    """The line where ``key`` is set in ``[table]`` (or where the table starts)."""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        head = re.match(r"\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", line)
        if head:
            current = head.group(1)
            if key is None and current == table:
                return n
            continue
        if key is not None and current == table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return n
        if table is None and current is None and key is not None and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return n
    return None


def _error(text: str, where: str, table: str | None, key: str | None, message: str, fix: str) -> YarnconvError:
    n = _line(text, table, key)
    return YarnconvError(f"{where}{f':{n}' if n else ''}: {message}", fix)


def as_dict(recipe: Recipe) -> dict[str, Any]:
    """What the recipe asks for, with defaults left out (for --json and the dry run)."""

    def given(obj: Any) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) != f.default and not f.metadata.get("group")}

    out: dict[str, Any] = {"recipe": recipe.path, "name": recipe.name, "description": recipe.description, "model": recipe.model, "extend": given(recipe.extend)}
    if recipe.gguf is not None:
        out["gguf"] = given(recipe.gguf)
    if recipe.verify is not None:
        out["verify"] = given(recipe.verify)
    if recipe.eval is not None:
        out["eval"] = given(recipe.eval)
    for table in ("hf", "push"):
        if getattr(recipe, table) is not None:
            out[table] = getattr(recipe, table)
    return out


def given_settings(request: Any) -> dict[str, Any]:
    return {name: getattr(request, name) for name in given_names(request)}

