"""``yarnconv demo``: the whole promise on a real model, in one run.

The built-in SmolLM2-135M (8k) is extended with YaRN, inspected, read back by transformers
(its rotary buffers must equal yarnconv's bit for bit), exported to GGUF, and run through
llama.cpp, whose logits must match transformers' on the same tokens; then ``verify`` runs on both
outputs (transformers and llama.cpp against the reference forward, at distances up to 32k). The
demo passes only when every check passes; a check that could not run is not a pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yarnconv.verify.check import Check


def demo_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(c.passed for c in checks)


def run_demo(output: str | os.PathLike[str] = "demo-out", scale: float = 4.0, *, progress: bool = True) -> tuple[dict[str, Any], list[Check]]:
    """The demo's record (what --json prints) and its checks."""
    from yarnconv.gguf.export import export_gguf
    from yarnconv.hf.extend import extend
    from yarnconv.hf.report import inspect_model
    from yarnconv.plan import ExtendRequest
    from yarnconv.storage.sources import materialize_builtin
    from yarnconv.verify.logits import gguf_check
    from yarnconv.verify.rotary import rotary_check

    src = materialize_builtin("smollm2")
    out = os.fspath(output)
    record = extend(src, out, ExtendRequest(scale=scale), force=True, precompute_inv_freq=True, progress=progress)
    report = inspect_model(out)
    rotary = rotary_check(out)
    gguf_path = f"{out.rstrip(os.sep)}.gguf"
    gguf = export_gguf(out, gguf_path, outtype="f32", force=True, progress=progress)
    logits = gguf_check(out, gguf_path)
    from yarnconv.verify.run import REPORT, save_report, verify_model

    checks = [rotary, logits]
    verified = {}
    for kind, target, base in (("hf", out, None), ("gguf", gguf_path, out)):
        if kind == "gguf" and logits.status == "skipped":
            continue  # no llama-cpp-python: the logits check above already says so
        checked, found = verify_model(target, base=base)
        where = os.path.join(out, REPORT) if kind == "hf" else f"{gguf_path}.verify.json"
        verified[kind] = {"ok": checked["ok"], "saved": str(save_report(Path(where), checked)), "checks": len(found)}
        checks += [c for c in found if c.status in ("passed", "failed")]
    llama: dict[str, Any] = logits.measured if logits.status != "skipped" else {"skipped": logits.reason}
    data = {
        "extend": record,
        "inspect": report,
        "transformers_check": rotary.measured,
        "gguf": gguf,
        "llama_cpp_check": llama,
        "verify": verified,
        "checks": [c.to_dict() for c in checks],
        "ok": demo_ok(checks),
    }
    return data, checks
