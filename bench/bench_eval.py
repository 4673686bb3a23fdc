"""``yarnconv eval`` on SmolLM2-135M x4 (8k -> 32k): the YaRN paper's perplexity table (base, PI, dynamic
NTK, YaRN at 2k, 4k, 8k, 16k, 32k; stride 256, one window per length) from one command, with its wall
time and peak memory (PSS, sampled), in transformers float32 on this machine's cores.

    python bench/bench_eval.py            # ~22 min on 2 cores
    python bench/bench_eval.py --passkey  # and passkey retrieval on the same ladder (much longer)

Results: bench/out/eval.json (the timings and the report), and the table on stdout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_export_variants import sampled  # noqa: E402

YARNCONV = [sys.executable, "-m", "yarnconv"]


def main() -> None:
    from yarnconv.storage.sources import materialize_builtin

    base = materialize_builtin("smollm2")
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        out = work / "s4"
        subprocess.run([*YARNCONV, "extend", str(base), "--scale", "4", "-o", str(out), "-q"], check=True)
        cmd = [*YARNCONV, "eval", str(out), "--json", "--report", str(work / "eval.json"), *sys.argv[1:]]  # --json: no progress bars into the pipe
        wall, pss, rss = sampled(cmd, interval=0.5)
        report = json.loads((work / "eval.json").read_text())
        results = {"command": "yarnconv eval OUT " + " ".join(sys.argv[1:]), "wall_s": round(wall, 1), "peak_pss_gb": round(pss / 1024, 2), "peak_rss_gb": round(rss / 1024, 2), "report": report}
        print(f"wall {wall:.1f} s, peak PSS {pss / 1024:.2f} GB")
        for row in report["rows"]:
            print(f"{row['label']:<10} " + " ".join("      -" if v is None else f"{v:7.3f}" for v in row["ppl"]) + f"   {row.get('seconds', '')}")
        dest = HERE / "out" / "eval.json"
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
