"""Benchmark the reference forward (yarnconv.verify.reference) against transformers' forward.

Targets (issue #9): peak RSS <= 0.25x the checkpoint's fp32 size; reference time per 1k tokens
within 1.5x of transformers' full-model forward (load excluded) on the same machine, in one run;
the fast checks behind ``--verify`` (``yarnconv verify`` on the extended copy) in <= 30 s.
Each side runs in its own process; peak RSS comes from os.wait4. The whole ``verify`` process
peaks higher than the reference alone: transformers, the engine under test, loads the whole
model in float32 as a user's load does.

    python bench/bench_verify.py                     # the ~1.5 GB bf16 checkpoint bench_extend.py makes
    python bench/bench_verify.py --model DIR --tokens 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = {
    "reference": (
        "import sys, time, numpy as np\n"
        "from yarnconv.verify.reference import ReferenceModel\n"
        "m = ReferenceModel(sys.argv[1]); n = int(sys.argv[2])\n"
        "ids = np.random.default_rng(0).integers(0, 32000, n).tolist()\n"
        "t = time.perf_counter(); m.logits(ids); print(time.perf_counter() - t)\n"
    ),
    "transformers": (
        "import sys, time, numpy as np, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); n = int(sys.argv[2])\n"
        "ids = torch.tensor([np.random.default_rng(0).integers(0, 32000, n).tolist()])\n"
        "t = time.perf_counter()\n"
        "with torch.inference_mode(): m(ids)\n"
        "print(time.perf_counter() - t)\n"
    ),
}


def run(kind: str, model: Path, tokens: int) -> tuple[float, float]:
    """(forward seconds, peak RSS MB) of one child process."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD[kind], str(model), str(tokens)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return float(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(__file__).parent / "out" / "src-1.5gb")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__).parent / "bench_extend.py"), "--make", str(args.model), "1.5"], check=True)
    params_bytes = sum(p.stat().st_size for p in args.model.glob("*.safetensors"))
    fp32 = params_bytes * 2  # bf16 on disk
    result: dict = {"model": str(args.model), "fp32_mb": round(fp32 / 1e6), "tokens": args.tokens}
    for kind in ("reference", "transformers"):
        runs = [run(kind, args.model, args.tokens) for _ in range(args.repeat)]
        result[kind] = {"forward_s": min(s for s, _ in runs), "peak_rss_mb": max(r for _, r in runs)}
        time.sleep(1)
    ext = args.model.parent / (args.model.name + "-x4")
    if not (ext / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "yarnconv", "extend", str(args.model), "--scale", "4", "-o", str(ext), "-q"], check=True)
    runs = [timed([sys.executable, "-m", "yarnconv", "verify", str(ext), "--json"]) for _ in range(args.repeat)]
    result["verify"] = {"wall_s": min(s for s, _ in runs), "peak_rss_mb": max(r for _, r in runs)}
    ref, hf = result["reference"], result["transformers"]
    result["time_ratio"] = ref["forward_s"] / hf["forward_s"]
    result["rss_over_fp32"] = ref["peak_rss_mb"] * 1e6 / fp32
    print(
        f"{args.tokens} tokens: reference {ref['forward_s']:.2f} s, {ref['peak_rss_mb']:.0f} MB peak "
        f"({result['rss_over_fp32']:.2f}x fp32 size) | transformers {hf['forward_s']:.2f} s, {hf['peak_rss_mb']:.0f} MB "
        f"| time ratio {result['time_ratio']:.2f} | yarnconv verify {result['verify']['wall_s']:.1f} s, {result['verify']['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
