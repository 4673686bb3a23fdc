"""The card's figure (PNG, matplotlib from the ``card`` extra): which RoPE dimensions YaRN leaves
alone, blends or interpolates, and, when verify ran, KL and NLL by probe position.

Top panel: each rotary pair's wavelength 2π/θ_i against the original context L. Pairs whose
wavelength is far below L keep their frequency (extrapolated), pairs far above it are divided by s
(interpolated), and the ramp between ``beta_fast`` and ``beta_slow`` rotations blends the two; the
colour is yarnconv's own computed ratio new/old frequency, so the figure shows what was written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from yarnconv import rope
from yarnconv.config import RopeBlock

PNG = "yarnconv-rope.png"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def rope_figure(block: dict[str, Any], head_dim: int, path: Path, by_position: dict[str, Any] | None = None) -> Path:
    """Draw the figure for the YaRN block (a record's ``rope_after``) into ``path``."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {f.name for f in dataclasses.fields(RopeBlock)}
    after = RopeBlock(**{k: v for k, v in block.items() if k in names})
    spec = after.spec(head_dim, None)
    new = rope.compute(spec).inv_freq
    old = rope.base_inv_freq(spec.base, spec.dim)
    ratio = [n / o for n, o in zip(new, old, strict=True)]
    s, original = spec.factor or 1.0, spec.original_context or 0
    kinds = ["extrapolated" if r > 1 - 1e-6 else "interpolated" if abs(r * s - 1) < 1e-6 else "blended" for r in ratio]
    colours = {"extrapolated": "#1f77b4", "blended": "#ff7f0e", "interpolated": "#2ca02c"}
    panels = 2 if by_position and by_position.get("kl") else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.2 * panels), squeeze=False)
    ax = axes[0][0]
    for kind, colour in colours.items():
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if idx:
            ax.scatter(idx, [2 * math.pi / old[i] for i in idx], s=14, color=colour, label=f"{kind} ({len(idx)})")
    ax.axhline(original, color="black", lw=1, ls="--", label=f"original context {original}")
    ax.axhline(original * s, color="grey", lw=1, ls=":", label=f"new context {int(original * s)}")
    ax.set_yscale("log")
    ax.set_xlabel("rotary pair i")
    ax.set_ylabel("wavelength 2π/θ_i (tokens)")
    ax.set_title(f"YaRN s = {s:g}: what happens to each RoPE dimension")
    ax.legend(fontsize=7, loc="upper left")
    if panels == 2:
        assert by_position is not None
        ax = axes[1][0]
        x = list(range(len(by_position["positions"])))
        ax.plot(x, [max(k, 1e-12) for k in by_position["kl"]], lw=1, label="KL(reference ‖ runtime)")
        ax.set_yscale("log")
        ax.set_ylabel("KL (nats)")
        nll = by_position.get("nll") or []
        if any(v is not None for v in nll):
            twin = ax.twinx()
            twin.plot(x, [float("nan") if v is None else v for v in nll], lw=0.6, color="#9467bd", alpha=0.6, label="runtime NLL")
            twin.set_ylabel("NLL of next token")
            twin.legend(fontsize=7, loc="upper right")
        pos = by_position["positions"]
        gap = next((i for i in range(1, len(pos)) if pos[i] != pos[i - 1] + 1), None)
        if gap is not None:
            ax.axvline(gap - 0.5, color="black", lw=1, ls="--")
            ax.set_xticks([0, gap - 0.5, len(pos) - 1], [str(pos[0]), f"{pos[gap - 1]} | {pos[gap]}", str(pos[-1])])
        ax.set_xlabel("probe position (near half | far half)")
        ax.set_title("verify: the runtime against the reference, by position")
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def eval_figure(report: dict[str, Any], path: Path) -> Path:
    """``eval``'s figure: perplexity against context length per row (the original and new context marked),
    and passkey accuracy per row when it ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passkey = report.get("passkey")
    fig, axes = plt.subplots(2 if passkey else 1, 1, figsize=(8, 3.6 * (2 if passkey else 1)), squeeze=False)
    ax, lengths = axes[0][0], report["lengths"]
    for r in report["rows"]:
        if r.get("same_as") or not any(v is not None for v in r["ppl"]):
            continue
        low = [v - lo for v, (lo, _) in zip(r["ppl"], r["ci95"], strict=True)]
        high = [hi - v for v, (_, hi) in zip(r["ppl"], r["ci95"], strict=True)]
        ax.errorbar(lengths, r["ppl"], yerr=[low, high], marker="o", ms=4, lw=1.4 if r["label"] == "extended" else 1, capsize=2, label=f"{r['label']}: {r['describe']}")
    _context_lines(ax, report)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"Sliding-window perplexity (stride {report['protocol']['stride']}), {report['engine']}")
    ax.legend(fontsize=7)
    if passkey:
        ax = axes[1][0]
        for label in dict.fromkeys(p["model"] for p in passkey["per_length"]):
            points = [p for p in passkey["per_length"] if p["model"] == label]
            acc = [p["accuracy"] for p in points]
            err = [[a - p["ci95"][0] for a, p in zip(acc, points, strict=True)], [p["ci95"][1] - a for a, p in zip(acc, points, strict=True)]]
            ax.errorbar([p["length"] for p in points], acc, yerr=err, marker="o", ms=4, capsize=2, label=label)
        _context_lines(ax, report)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("passkey accuracy (95% CI)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _context_lines(ax: Any, report: dict[str, Any]) -> None:
    if report.get("original_context"):
        ax.axvline(report["original_context"], color="black", lw=1, ls="--", label=f"original context {report['original_context']}")
    if report.get("context"):
        ax.axvline(report["context"], color="grey", lw=1, ls=":", label=f"new context {report['context']}")


def _save(fig: Any, path: Path) -> Path:
    """The PNG written whole: a temporary name beside it, renamed at the end."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
