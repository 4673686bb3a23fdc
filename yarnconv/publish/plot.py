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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
