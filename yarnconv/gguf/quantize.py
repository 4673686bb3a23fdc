"""The GGUF quant ladder through llama.cpp's own quantizer (``llama_model_quantize``, as shipped
in llama-cpp-python): yarnconv writes one f16/bf16/f32 GGUF, llama.cpp quantizes it once per type.
K-quants and i-quants are never re-implemented here.

Each quantization runs in a child process (``python -m yarnconv.gguf.quantize``): a llama.cpp
assertion aborts only the child, and SIGTERM reaches the command between files as everywhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from yarnconv.errors import UsageError, YarnconvError

# llama.h's enum llama_ftype, for the types llama.cpp's quantizer makes without an importance matrix.
LADDER = {
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
    "iq3_s": 26,
    "iq3_m": 27,
    "iq4_nl": 25,
    "iq4_xs": 30,
}
# ... and those it refuses to make without one ("this quantization requires an importance matrix").
NEED_IMATRIX = {"iq2_xxs": 19, "iq2_xs": 20, "q2_k_s": 21, "iq3_xs": 22, "iq3_xxs": 23, "iq1_s": 24, "iq2_s": 28, "iq2_m": 29, "iq1_m": 31}
FTYPES = {**LADDER, **NEED_IMATRIX}
DIRECT = ("f32", "f16", "bf16", "q8_0")  # written by yarnconv itself, bytes identical to llama.cpp's converter
# llama.cpp converts at most this many bytes of rows to f32 at once (its default is 8 GiB, so a
# large tensor is held whole); quantization is per row, so the output is the same.
BUF_BYTES = 16 * 1024 * 1024


def parse_outtypes(text: str | None, *, imatrix: bool = False) -> list[str]:
    """``q4_k_m,q5_k_m,q8_0`` -> a list of known, distinct type names (lower case)."""
    names = [t.strip().lower() for t in (text or "auto").split(",") if t.strip()]
    for n in names:
        if n in NEED_IMATRIX and not imatrix:
            raise UsageError(f"--outtype {n} needs an importance matrix", f"pass --imatrix FILE, or choose one of {', '.join(LADDER)}")
        if n not in FTYPES and n not in (*DIRECT, "auto"):
            raise UsageError(f"unknown --outtype {n!r}", f"choose from auto, {', '.join(DIRECT)}, {', '.join(FTYPES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--outtype {text} names a type twice", "list each type once")
    if "auto" in names and len(names) > 1:
        raise UsageError("--outtype auto cannot be combined with other types", "name the types, e.g. f16,q4_k_m")
    return names


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


IMATRIX_SINCE = (0, 3, 36)  # llama_model_imatrix_data: a plain C array (before, a C++ map pointer)


def require_quantizer(*, imatrix: bool = False) -> None:
    if not available():
        raise YarnconvError(
            "the quant ladder runs llama.cpp's quantizer, and llama-cpp-python is not installed",
            'pip install "yarnconv[gguf]" (or CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python)',
        )
    if imatrix:
        from importlib.metadata import version

        have = version("llama-cpp-python")
        if tuple(int(x) for x in have.split(".")[:3] if x.isdigit()) < IMATRIX_SINCE:
            raise YarnconvError(f"--imatrix needs llama-cpp-python >= 0.3.36, this one is {have}", 'pip install -U "yarnconv[gguf]"')


def quantize_all(
    src: Path,
    targets: dict[str, Path],
    *,
    imatrix: Callable[[str], str | None] = lambda _: None,
    done: Callable[[str], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> None:
    """Every ``{type: dst}`` from ``src``, one quantizer per core at a time, each with every core.

    llama.cpp's quantizer leaves cores idle between tensors (it reads, converts to f32 and writes
    each one on a single thread), so two at once on two cores finish a ladder sooner than one after
    another. Each gets all the threads, and the OS shares the cores while both run: types differ
    tenfold in cost (a Llama-2-7B F16 on 2 cores: Q8_0 in 50 s, Q4_K_M in minutes), and with a
    core each, one core idled once the cheap type was done (Q4_K_M + Q8_0: 420 s, against 241 s
    with two threads each). The files are the same (quantization is per row, whatever the thread
    count). ``done`` is called with each type as its file is complete; on any error or signal, or
    once ``stop`` is set, every child is killed.
    """
    import tempfile
    import time

    cpus = os.cpu_count() or 2
    parallel = max(1, min(cpus, len(targets)))
    threads = cpus
    pending = list(targets.items())
    running: dict[subprocess.Popen[bytes], tuple[str, Path, Any]] = {}
    try:
        while pending or running:
            if stop is not None and stop.is_set():
                raise Stopped()
            while pending and len(running) < parallel:
                outtype, dst = pending.pop(0)
                cmd = [sys.executable, "-m", "yarnconv.gguf.quantize", str(src), str(dst), str({**FTYPES, "q8_0": 7}[outtype]), str(threads)]
                cmd += [m] if (m := imatrix(outtype)) else []
                log = tempfile.TemporaryFile()  # noqa: SIM115 (closed when its child ends); llama.cpp logs every tensor, a pipe could fill and stall it
                running[subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)] = (outtype, dst, log)
            finished = [p for p in running if p.poll() is not None]
            if not finished:
                time.sleep(0.05)
            for proc in finished:
                outtype, dst, log = running.pop(proc)
                log.seek(0)
                last = (log.read().decode(errors="replace").strip().splitlines() or ["no message"])[-1][:200]
                log.close()
                if proc.returncode != 0 or not dst.is_file():
                    raise YarnconvError(f"llama.cpp's quantizer failed on {outtype.upper()} ({last})", "check free disk space; report it if the input is a yarnconv export")
                done(outtype)
    finally:
        for proc, (_, _, log) in running.items():
            proc.kill()
            proc.wait()
            log.close()


class Stopped(Exception):
    """The caller gave up on the ladder (its own error or a signal); the children are killed."""


@contextmanager
def quantizing(src: Path, targets: dict[str, Path], **kw: Any) -> Iterator[Callable[[], None]]:
    """:func:`quantize_all` in a background thread, so the caller can write other files meanwhile;
    yields ``wait()``, which returns once every file is complete or raises the ladder's error.

    At 7B the ladder is bound by llama.cpp's quantizer, which idles a core between tensors while
    it reads and writes; yarnconv's own direct outputs (a Q8_0 encoded from the bf16 source) fill
    those gaps instead of waiting their turn. Leaving the block early (an error or SIGTERM in the
    caller) stops the thread, which kills the children before the caller's scratch is removed.
    """
    if not targets:  # nothing to quantize: no thread
        yield lambda: None
        return
    stop, ended, failed = threading.Event(), threading.Event(), list[BaseException]()

    def run() -> None:
        try:
            quantize_all(src, targets, stop=stop, **kw)
        except Stopped:
            pass
        except BaseException as exc:  # handed to the caller's thread by wait()
            failed.append(exc)
        finally:
            ended.set()

    def wait() -> None:
        # an Event, not Thread.join: a signal that interrupts join() can mark a running thread as
        # ended (CPython 3.11's _wait_for_tstate_lock), and the children would outlive the command
        while not ended.wait(0.1):
            pass
        if failed:
            raise failed[0]

    threading.Thread(target=run, name="yarnconv-quantize", daemon=True).start()
    try:
        yield wait
    finally:
        stop.set()
        ended.wait()


def _child(src: str, dst: str, ftype: int, threads: int, imatrix: str | None = None) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.max_buf_size = ftype, threads, BUF_BYTES
    keep: list = []  # the arrays params points into stay alive until the call returns
    if imatrix:
        params.imatrix, params.kv_overrides = _imatrix_params(imatrix, keep)
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


def _imatrix_params(path: str, keep: list) -> tuple:
    """The imatrix array and the ``quantize.imatrix.*`` keys, as ``llama-quantize --imatrix`` passes them."""
    import ctypes

    import llama_cpp
    import numpy as np

    from yarnconv.gguf.imatrix import read_imatrix

    im = read_imatrix(path)
    entries = (llama_cpp.llama_model_imatrix_data * (len(im.entries) + 1))()
    for i, (name, values) in enumerate(im.entries.items()):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        keep += [arr, name.encode()]
        entries[i].name, entries[i].size = keep[-1], arr.size
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    keys: list[tuple[str, int, object]] = [("quantize.imatrix.file", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, im.path)]
    if im.datasets:
        keys.append(("quantize.imatrix.dataset", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, im.datasets[0]))
    keys.append(("quantize.imatrix.entries_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, len(im.entries)))
    if im.chunks > 0:
        keys.append(("quantize.imatrix.chunks_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, im.chunks))
    kv = (llama_cpp.llama_model_kv_override * (len(keys) + 1))()  # zeroed: the last one ends the list
    for i, (key, tag, value) in enumerate(keys):
        o = kv[i]  # a view into the array, not a copy
        o.key, o.tag = key.encode(), tag
        if isinstance(value, str):
            o.value.val_str = value.encode()[:127]
        else:
            o.value.val_i64 = int(value)  # type: ignore[call-overload]
    keep += [entries, kv]
    return entries, kv


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6]))
