"""``verify OUT --engine vllm`` on SmolLM2-135M x4 (8k -> 32k): wall time and peak memory summed over
every process (yarnconv, and vLLM's child in its own interpreter), against what a user runs today to
get the same logprobs out of vLLM and nothing checked (vLLM load + one 256-token prompt with prompt
logprobs), and against ``verify OUT`` in transformers.

    python bench/bench_vllm.py            # ~6 min on 2 cores; needs .venvs/vllm (scripts/setup.sh)

Results: bench/out/vllm.json, and a table on stdout.
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

ROOT = HERE.parent
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"
YARNCONV = [sys.executable, "-m", "yarnconv"]
TODAY = """import os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=32768, enforce_eager=True, skip_tokenizer_init=True)
    llm.generate([{"prompt_token_ids": list(range(1000, 1256))}], SamplingParams(max_tokens=1, prompt_logprobs=20))
"""


def main() -> None:
    from yarnconv.storage.sources import materialize_builtin

    base = materialize_builtin("smollm2")
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    try:
        out = work / "s4"
        subprocess.run([*YARNCONV, "extend", str(base), "--scale", "4", "-o", str(out), "-q"], check=True)
        script = work / "today.py"
        script.write_text(TODAY)
        runs = {
            "verify --engine vllm": [*YARNCONV, "verify", str(out), "--engine", "vllm", "--engine-python", str(VLLM_PYTHON), "--report", str(work / "vllm-report.json")],
            "verify (transformers)": [*YARNCONV, "verify", str(out)],
            "today: vLLM load + 256-token prompt logprobs": [str(VLLM_PYTHON), str(script), str(out)],
        }
        results = {}
        for label, cmd in runs.items():
            wall, pss, rss = sampled(cmd, interval=0.2)
            results[label] = {"wall_s": round(wall, 1), "peak_pss_gb": round(pss / 1024, 2), "peak_rss_gb": round(rss / 1024, 2)}
            print(f"{label:<48} {wall:>7.1f} s {pss / 1024:>6.2f} GB PSS", flush=True)
        report = json.loads((work / "vllm-report.json").read_text())
        results["vllm_checks"] = {c["name"]: {"status": c["status"], **{k: v for k, v in c["measured"].items() if isinstance(v, (int, float))}} for c in report["checks"]}
        results["vllm"] = report["vllm"]
        dest = HERE / "out" / "vllm.json"
        dest.parent.mkdir(exist_ok=True)
        dest.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
