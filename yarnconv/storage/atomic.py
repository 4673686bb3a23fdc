"""Output that appears whole or not at all: scratch names, stale-scratch sweeping, space and
location checks, and the atomic directory writer.

Scratch files and directories carry the writer's pid, so a later run can tell leftovers of a
process that died (kill -9, power loss) from work in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from yarnconv.errors import YarnconvError

SCRATCH_RE = re.compile(r"^\.yarnconv-(?P<kind>[a-z]+)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")


def scratch_path(parent: Path, kind: str, suffix: str = "") -> Path:
    """A short hidden name beside the output (at most ~40 bytes, so any legal output name works)."""
    return parent / f".yarnconv-{kind}-{os.getpid()}-{os.urandom(4).hex()}{suffix}"


def remove_tree(path: Path) -> None:
    """Remove a scratch directory (or file); shutil is imported only when there is something in it."""
    try:
        path.rmdir()
        return
    except FileNotFoundError:
        return
    except NotADirectoryError:
        path.unlink(missing_ok=True)
        return
    except OSError:
        pass
    import shutil  # start-up cost: only on the rare path that needs it

    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parent: Path) -> list[str]:
    """Remove yarnconv scratch left in ``parent`` by processes that no longer run; returns the names."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = SCRATCH_RE.match(entry.name)
        if not m or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def require_space(directory: Path, needed: int, what: str) -> None:
    """Refuse before writing ``needed`` bytes into a filesystem that cannot hold them."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize  # what shutil.disk_usage reports as free
    if needed > free:
        raise YarnconvError(
            f"not enough space for {what} in {directory}: needs {_human(needed)}, {_human(free)} free", "free some space or choose another -o"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_writable_parent(output: Path) -> None:
    """Refuse an output whose parent path runs through a file (``-o model.gguf/sub``)."""
    for parent in output.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise YarnconvError(f"{parent} is a file, so {output} cannot be created", "choose an -o inside a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise YarnconvError(f"cannot write into {parent}: permission denied", "choose a writable -o")
            return


def check_new_files(targets: list[Path], *, force: bool, inputs: list[Path] | None = None) -> None:
    """Refuse file outputs that are an input, a directory, or exist (without ``force``), or whose
    parent cannot be written; the one check every file-writing command makes before it starts."""
    sources = {p.resolve() for p in inputs or []}
    for target in targets:
        if target.resolve() in sources:
            raise YarnconvError(f"{target} is the input file", "use --in-place to edit it, or choose another -o")
        if target.is_dir():
            raise YarnconvError(f"{target} is a directory", "choose a file name for -o")
        if target.exists() and not force:
            raise YarnconvError(f"{target} already exists", "choose another -o or pass --force")
        check_writable_parent(target)


def made_dirs(target: Path) -> list[Path]:
    """Create ``target`` and missing parents; return the ones created (to remove if the run fails)."""
    missing = []
    d = target.absolute()
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir()
    return missing


def remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()


def check_output_location(source: Path, output: Path, *, force: bool) -> None:
    """Refuse outputs that would overwrite, nest in, or contain the input."""
    src, out = source.resolve(), output.resolve()
    if out == src:
        raise YarnconvError("the output is the input directory", "choose another -o; the input is never modified")
    if src in out.parents:
        raise YarnconvError(f"the output {output} is inside the input {source}", "choose an -o outside the model directory")
    if out in src.parents:
        raise YarnconvError(f"the output {output} contains the input {source}", "choose another -o")
    if out.exists() and not out.is_dir():
        raise YarnconvError(f"output {output} exists and is a file", "choose a directory name for -o")
    if out.exists() and not force:
        raise YarnconvError(f"output {output} already exists", "pass --force to replace it")
    check_writable_parent(out)


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a scratch directory beside ``target``; it becomes ``target`` only on success.

    On any error, Ctrl-C or SIGTERM the scratch directory is removed and ``target`` is untouched;
    scratch left by a killed earlier run is swept first.
    """
    target = target.absolute()
    created = made_dirs(target.parent)
    sweep_stale(target.parent)
    scratch = scratch_path(target.parent, "tmp")
    try:
        scratch.mkdir()
        yield scratch
        if target.exists():
            if not force:
                raise YarnconvError(f"output {target} appeared while writing", "pass --force to replace it")
            trash = scratch_path(target.parent, "old")
            os.rename(target, trash)
            os.rename(scratch, target)
            remove_tree(trash)
        else:
            os.rename(scratch, target)
    except BaseException:
        remove_tree(scratch)
        remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_files(targets: list[Path], kind: str = "files") -> Iterator[Path]:
    """Yield a scratch directory beside ``targets[0]``; write each target into it under its own
    name. On success they take their final names, the first one last (it is what users open);
    on any error, Ctrl-C or SIGTERM the scratch is removed and no target is touched."""
    parent = targets[0].absolute().parent
    created = made_dirs(parent)
    scratch = scratch_path(parent, kind)
    ok = False
    try:
        sweep_stale(parent)
        scratch.mkdir()
        yield scratch
        for target in targets[1:] + targets[:1]:
            os.replace(scratch / target.name, target)
        ok = True
    finally:
        remove_tree(scratch)
        if not ok:
            remove_empty(created)
