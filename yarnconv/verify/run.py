"""``verify`` for an HF checkpoint: does transformers run it as planned?

The plan is what extend recorded in ``yarnconv.json`` (``rope_after``), or, without a record, the
config's own rope block read by yarnconv. One short probe of seeded token ids carries gapped
position ids: half below the original context, half ending at the last position of the new
context, so the rope is exercised at every distance up to the target without a long sequence.

Checks, each passed / failed / skipped with its bounds:

* rope table: the inv_freq and magnitude transformers builds equal the plan's (float32);
* logits, below and beyond the original length: transformers against the reference forward
  running the plan (:mod:`yarnconv.verify.reference`);
* no-op detector: beyond the original length transformers must match the plan, not the same
  weights with plain RoPE; when it matches plain RoPE the cause is named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv import rope
from yarnconv.config import ConfigView, RopeBlock, read_config
from yarnconv.errors import YarnconvError
from yarnconv.storage.files import CONFIG, RECORD, read_json
from yarnconv.verify.check import Bound, Check, judge, skipped
from yarnconv.verify.logits import compare_logits, log_softmax

REPORT = "yarnconv-verify.json"
ROPE_BOUNDS = (Bound("inv_freq_max_rel_diff", "<=", 1e-6), Bound("attention_factor_diff", "<=", 1e-6), Bound("pairs_match", "==", True))
# transformers' default (SDPA) attention rounds differently from the plain formula: up to ~2e-3
# in a logit on SmolLM2 at 32k, a KL far below these bounds; a wrong rope moves KL by orders more.
LOGIT_BOUNDS = (Bound("kl_max", "<=", 1e-4), Bound("top1_agreement", ">=", 0.99))


def intended_rope(root: Path, view: ConfigView) -> tuple[RopeBlock, str]:
    """The rope the checkpoint is meant to run: extend's recorded plan, else the config's own block."""
    record = root / RECORD
    if record.is_file():
        data = read_json(record, RECORD)
        after = data.get("rope_after") if isinstance(data, dict) else None
        if isinstance(after, dict):
            try:
                return RopeBlock(**after), f"{RECORD} (the plan extend wrote)"
            except TypeError:
                raise YarnconvError(f"{RECORD} has an unreadable rope_after", "re-run extend, or remove the record to verify the config as it is") from None
    return view.rope, f"{CONFIG} (no {RECORD}: the config's own rope, as yarnconv reads it)"


def probe(view: ConfigView, original: int, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded token ids and gapped positions: n/2 from 0, n/2 ending at the context's last position."""
    far = max((view.max_position or original) - 1, n - 1)
    vocab = view.vocab_size or 32000
    ids = np.random.default_rng(seed).integers(0, vocab, n).tolist()
    bos = view.text.get("bos_token_id")
    if isinstance(bos, int) and 0 <= bos < vocab:
        ids[0] = bos
    head = n // 2
    return ids, list(range(head)) + list(range(far - (n - head) + 1, far + 1))


def transformers_logits(root: Path, tokens: list[int], positions: list[int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits from transformers, loading the checkpoint the way a user does (float32), and its rotary tables."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32)
    rotary = next((m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")), None)
    table = {"inv_freq": rotary.inv_freq.tolist(), "attention_scaling": float(rotary.attention_scaling)} if rotary is not None else {}
    with torch.inference_mode():
        out = model(torch.tensor([tokens]), position_ids=torch.tensor([positions])).logits[0].double().numpy()
    return out, table


def rope_table_check(table: dict[str, Any], spec: rope.RopeSpec) -> Check:
    if not table:
        return Check("transformers rope table", "failed", reason="no rotary embedding module found in the loaded model")
    want = rope.compute(spec, precision="float32")
    got = table["inv_freq"]
    pairs = len(got) == len(want.inv_freq)
    diff = max((abs(a - b) / b for a, b in zip(got, want.inv_freq, strict=False)), default=0.0) if pairs else float("inf")
    measured = {
        "pairs_match": pairs,
        "inv_freq_max_rel_diff": diff,
        "attention_factor": table["attention_scaling"],
        "attention_factor_diff": abs(table["attention_scaling"] - want.attention_factor),
    }
    return judge("transformers rope table", measured, ROPE_BOUNDS)


def region_stats(ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray) -> dict[str, Any]:
    """The statistics llama.cpp's ``llama-perplexity --kl-divergence`` reports, for one region.

    ``next_tokens`` holds each position's following token (-1 for the last), for the PPL ratio.
    """
    c = compare_logits(ref, got)
    has_next = next_tokens >= 0
    rows = np.arange(len(ref))[has_next]

    def nll(x: np.ndarray) -> float:
        return float(-log_softmax(x[has_next])[np.arange(len(rows)), next_tokens[has_next]].mean()) if len(rows) else 0.0

    centred = ref - ref.mean(-1, keepdims=True)
    return {
        **c.to_dict(),
        "kl_p99": float(np.percentile(c.kl, 99)),
        "kl_p999": float(np.percentile(c.kl, 99.9)),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "nmse": float(((got - ref) ** 2).sum() / max((centred**2).sum(), 1e-30)),
        "ppl_ratio": float(np.exp(nll(got) - nll(ref))),
    }


def region_checks(ref: np.ndarray, got: np.ndarray, positions: list[int], original: int, engine: str, tokens: list[int]) -> list[Check]:
    out = []
    next_tokens = np.array([*tokens[1:], -1])
    pos = np.array(positions)
    for name, mask in (("below", pos < original), ("beyond", pos >= original)):
        label = f"{engine} logits {name} the original {original}"
        if not mask.any():
            out.append(skipped(label, f"the probe has no position {name} the original length", LOGIT_BOUNDS))
            continue
        measured = region_stats(ref[mask], got[mask], next_tokens[mask])
        out.append(judge(label, measured, LOGIT_BOUNDS))
    return out


def noop_check(plan: np.ndarray, plain: np.ndarray, got: np.ndarray, positions: list[int], original: int, engine: str) -> Check:
    """Beyond the original length the engine must follow the plan, not plain RoPE on the same weights."""
    label = f"{engine} applies the planned scaling"
    beyond = np.array(positions) >= original
    if not beyond.any():
        return skipped(label, "the probe has no position beyond the original length")
    to_plan = compare_logits(plan[beyond], got[beyond]).kl_mean
    to_plain = compare_logits(plain[beyond], got[beyond]).kl_mean
    plan_vs_plain = compare_logits(plain[beyond], plan[beyond]).kl_mean
    measured = {"kl_mean_to_plan": to_plan, "kl_mean_to_plain_rope": to_plain, "kl_mean_plan_vs_plain_rope": plan_vs_plain}
    if plan_vs_plain < 1e-6:
        return Check(label, "skipped", measured, reason="the plan computes what plain RoPE computes here (no scaling to detect)")
    if to_plain <= to_plan:
        return Check(label, "failed", measured, reason=f"{engine} computes plain RoPE beyond the original length: it ignores the rope block")
    if to_plan * 100 > plan_vs_plain:
        return Check(label, "failed", measured, reason=f"{engine} is neither the plan nor plain RoPE: it reads the rope block differently")
    return Check(label, "passed", measured)


def verify_hf(source: str | os.PathLike[str], *, tokens: int = 256, seed: int = 0) -> tuple[dict[str, Any], list[Check]]:
    """Run the checks on an HF checkpoint directory; returns the report and the checks."""
    from yarnconv.verify.reference import ReferenceModel

    root = Path(source)
    if not (root / CONFIG).is_file():
        raise YarnconvError(f"no {CONFIG} in {root}", "verify an HF checkpoint directory (GGUF files come in a later release)")
    view = read_config(read_json(root / CONFIG, CONFIG))
    block, intent = intended_rope(root, view)
    dim = view.rope_head_dim or view.head_dim or 0
    spec = block.spec(dim, view.max_position)
    plain = RopeBlock(theta=block.theta, partial_rotary_factor=block.partial_rotary_factor).spec(dim, view.max_position)
    original = block.original_context or view.max_position or 0
    ids, positions = probe(view, original, tokens, seed)
    reference = ReferenceModel(root)  # one header scan for both runs
    planned = reference.logits(ids, positions, spec=spec).double().numpy()
    plain_logits = reference.logits(ids, positions, spec=plain).double().numpy()
    try:
        got, table = transformers_logits(root, ids, positions)
    except ImportError:
        checks = [skipped("transformers", "transformers is not installed (pip install transformers)")]
    else:
        checks = [rope_table_check(table, spec), *region_checks(planned, got, positions, original, "transformers", ids), noop_check(planned, plain_logits, got, positions, original, "transformers")]
    report = {
        "model": str(root),
        "plan": {"rope": block.to_dict(), "from": intent, "max_position_embeddings": view.max_position},
        "probe": {"tokens": tokens, "seed": seed, "positions": [positions[0], positions[tokens // 2 - 1], positions[tokens // 2], positions[-1]]},
        "checks": [c.to_dict() for c in checks],
        "ok": all(c.status != "failed" for c in checks) and any(c.passed for c in checks),
    }
    return report, checks


def save_report(path: Path, report: dict[str, Any]) -> Path:
    """Write the report whole: a temporary name beside it, renamed at the end, removed on any failure."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
