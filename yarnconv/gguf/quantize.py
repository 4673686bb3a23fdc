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
from pathlib import Path

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
    "iq4_nl": 25,
    "iq4_xs": 30,
}
NEED_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m", "q2_k_s"}
DIRECT = ("f32", "f16", "bf16", "q8_0")  # written by yarnconv itself, bytes identical to llama.cpp's converter


def parse_outtypes(text: str | None) -> list[str]:
    """``q4_k_m,q5_k_m,q8_0`` -> a list of known, distinct type names (lower case)."""
    names = [t.strip().lower() for t in (text or "auto").split(",") if t.strip()]
    for n in names:
        if n in NEED_IMATRIX:
            raise UsageError(f"--outtype {n} needs an importance matrix", f"choose one of {', '.join(LADDER)}, which llama.cpp quantizes without one")
        if n not in LADDER and n not in (*DIRECT, "auto"):
            raise UsageError(f"unknown --outtype {n!r}", f"choose from auto, {', '.join(DIRECT)}, {', '.join(LADDER)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--outtype {text} names a type twice", "list each type once")
    if "auto" in names and len(names) > 1:
        raise UsageError("--outtype auto cannot be combined with other types", "name the types, e.g. f16,q4_k_m")
    return names


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def require_quantizer() -> None:
    if not available():
        raise YarnconvError(
            "the quant ladder runs llama.cpp's quantizer, and llama-cpp-python is not installed",
            'pip install "yarnconv[gguf]" (or CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python)',
        )


def quantize(src: Path, dst: Path, outtype: str, *, threads: int | None = None) -> None:
    """llama.cpp's quantizer, ``src`` (f16/bf16/f32 GGUF) -> ``dst`` of type ``outtype``."""
    cmd = [sys.executable, "-m", "yarnconv.gguf.quantize", str(src), str(dst), str(LADDER[outtype]), str(threads or os.cpu_count() or 2)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not dst.is_file():
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        raise YarnconvError(f"llama.cpp's quantizer failed on {outtype.upper()} ({last})", "check free disk space; report it if the input is a yarnconv export")


def _child(src: str, dst: str, ftype: int, threads: int) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, threads
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
