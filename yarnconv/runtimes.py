"""What each runtime effectively computes from a config.json, modelled from their source.

Each reader takes the text section of a config (root or ``text_config``) and returns the
rope settings that runtime would use, or the error it would raise. The models follow
shared/reference/runtimes.md and yarn-math.md (transformers 4.44-5.23, vLLM 0.33,
llama.cpp 0c1e57098 with its converter under transformers 5, exllamav2). They are pure, so
``inspect`` can run them on any checkpoint without installing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yarnconv import rope
from yarnconv.config import LAYER_TYPE_KEYS


@dataclass
class RuntimeReading:
    """One runtime's effective interpretation of a config."""

    runtime: str
    spec: rope.RopeSpec | None = None
    max_context: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.spec.method if self.spec else "error"


def _block(text: dict[str, Any], *, v5: bool) -> dict[str, Any]:
    scaling = text.get("rope_scaling")
    params = text.get("rope_parameters")
    if not v5:
        return dict(scaling or {})
    chosen = scaling or params or {}
    if isinstance(chosen, dict) and any(k in LAYER_TYPE_KEYS for k in chosen):
        chosen = chosen.get("full_attention") or {}
    return dict(chosen)


def _head_dim(text: dict[str, Any]) -> int:
    return text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]


def _yarn_spec(
    text: dict[str, Any],
    block: dict[str, Any],
    *,
    theta: float,
    rho: float | None,
    factor: float,
    original: int,
    truncate: bool = True,
    betas: bool = True,
    magnitude_keys: bool = True,
    mscale_keys: bool = True,
) -> rope.RopeSpec:
    return rope.RopeSpec(
        method="yarn",
        base=theta,
        dim=rope.rotary_dim(_head_dim(text), rho),
        factor=factor,
        original_context=original,
        beta_fast=block.get("beta_fast") if betas else None,
        beta_slow=block.get("beta_slow") if betas else None,
        truncate=bool(block.get("truncate", True)) if truncate else True,
        attention_factor=block.get("attention_factor") if magnitude_keys else None,
        mscale=block.get("mscale") if mscale_keys else None,
        mscale_all_dim=block.get("mscale_all_dim") if mscale_keys else None,
    )


def _fixed_yarn(text: dict[str, Any], block: dict[str, Any], *, theta: float, rho: float | None, original: int) -> rope.RopeSpec:
    """YaRN as llama.cpp's generic archs and exllamav2 run it: betas 32/1, always rounded, g(s)."""
    return _yarn_spec(
        text, block, theta=theta, rho=rho, factor=float(block["factor"]), original=original,
        truncate=False, betas=False, magnitude_keys=False, mscale_keys=False,
    )  # fmt: skip


def _simple_spec(text: dict[str, Any], kind: str, block: dict[str, Any], theta: float, rho: float | None) -> rope.RopeSpec:
    method = kind if kind in ("linear", "dynamic") else "default"
    return rope.RopeSpec(
        method=method,
        base=theta,
        dim=rope.rotary_dim(_head_dim(text), rho),
        factor=block.get("factor"),
        max_position=text.get("max_position_embeddings"),
    )


def _hf4(variant: str) -> Callable[[dict[str, Any]], RuntimeReading]:
    def read(text: dict[str, Any]) -> RuntimeReading:
        out = RuntimeReading(f"transformers {variant}")
        block = _block(text, v5=False)
        theta = float(text.get("rope_theta", 10000.0))
        rho = text.get("partial_rotary_factor")
        if not block and text.get("rope_parameters"):
            out.notes.append("rope_parameters (v5 form) is not read by transformers 4.x")
        kind = block.get("rope_type", block.get("type", "default"))
        mpe = text.get("max_position_embeddings")
        if kind != "yarn":
            out.spec = _simple_spec(text, kind, block, theta, rho)
            return out
        original = block.get("original_max_position_embeddings")
        factor = block.get("factor")
        if variant == "4.44-4.50":
            out.notes.append("original length taken from max_position_embeddings (D1)")
            out.spec = _yarn_spec(text, block, theta=theta, rho=rho, factor=factor, original=mpe, truncate=False, mscale_keys=False)
        elif variant == "4.51-4.55":
            if original:
                if factor != mpe / original:
                    out.notes.append(f"factor replaced by max/original = {mpe / original:g} (D2)")
                factor = mpe / original
            if block.get("truncate") is False:
                out.notes.append("truncate honoured from 4.55 only")
            out.spec = _yarn_spec(text, block, theta=theta, rho=rho, factor=factor, original=original or mpe, truncate=False)
        else:
            out.spec = _yarn_spec(text, block, theta=theta, rho=rho, factor=factor, original=original or mpe)
        return out

    return read


def _v5_common(text: dict[str, Any], out: RuntimeReading) -> tuple[dict[str, Any], str, float, float | None, int | None]:
    block = _block(text, v5=True)
    theta = block.get("rope_theta", text.get("rope_theta"))
    if theta is None:
        out.notes.append("no rope_theta: a per-class default_theta is used (10000 for most)")
        theta = 10000.0
    rho = block.get("partial_rotary_factor", text.get("partial_rotary_factor"))
    kind = block.get("rope_type", block.get("type", "default"))
    original = text.get("original_max_position_embeddings") or block.get("original_max_position_embeddings")
    if original is None and kind == "yarn":
        out.notes.append("original length missing: max_position_embeddings is used")
        original = text.get("max_position_embeddings")
    return block, kind, float(theta), rho, original


def hf5(text: dict[str, Any]) -> RuntimeReading:
    """transformers 5.x: rope_scaling wins over rope_parameters; top-level original overrides."""
    out = RuntimeReading("transformers 5.x")
    block, kind, theta, rho, original = _v5_common(text, out)
    if kind != "yarn":
        out.spec = _simple_spec(text, kind, block, theta, rho)
        return out
    factor = block.get("factor")
    if factor is None:
        factor = text["max_position_embeddings"] / original
    out.spec = _yarn_spec(text, block, theta=theta, rho=rho, factor=factor, original=original)
    return out


def vllm(text: dict[str, Any]) -> RuntimeReading:
    """vLLM 0.33: HF-v5 standardisation, betas passed through as given, context capped at max."""
    out = RuntimeReading("vLLM 0.33")
    raw = _block(text, v5=True)
    if "type" in raw and "rope_type" in raw and raw["type"] != raw["rope_type"]:
        out.error = "type and rope_type conflict: ValueError"
        return out
    block, kind, theta, rho, original = _v5_common(text, out)
    out.max_context = text.get("max_position_embeddings")
    if kind != "yarn":
        out.spec = _simple_spec(text, kind, block, theta, rho)
        return out
    if block.get("factor") is None:
        out.error = "YaRN without factor: KeyError"
        return out
    for key in ("beta_fast", "beta_slow"):
        if key in block and not block[key]:
            out.error = f"{key}=0: division by zero"
            return out
    dropped = [k for k in ("attn_factor", "extrapolation_factor") if k in block]
    if dropped:
        out.notes.append(f"{', '.join(dropped)} dropped")
    out.spec = _yarn_spec(text, block, theta=theta, rho=rho, factor=block["factor"], original=original)
    return out


def llama_cpp(text: dict[str, Any]) -> RuntimeReading:
    """llama.cpp: convert_hf_to_gguf (under transformers 5) then the llama/qwen runtime graph.

    Generic architectures ignore betas, ``truncate``, ``attention_factor`` and mscale: the
    runtime rounds the correction range and recomputes the magnitude as g(s).
    """
    out = RuntimeReading("llama.cpp")
    block, kind, theta, rho, original = _v5_common(text, out)
    out.max_context = text.get("max_position_embeddings")
    if kind != "yarn" or block.get("factor") is None:
        spec = _simple_spec(text, kind, block, theta, rho)
        if kind == "dynamic":
            out.notes.append("dynamic NTK is not converted (no GGUF key)")
            spec = rope.RopeSpec(method="default", base=theta, dim=spec.dim)
        out.spec = spec
        return out
    ignored = [k for k in ("beta_fast", "beta_slow") if block.get(k) not in (None, 32, 32.0, 1, 1.0)]
    ignored += [k for k in ("attention_factor", "mscale", "mscale_all_dim") if block.get(k) is not None]
    if block.get("truncate") is False:
        ignored.append("truncate")
    if ignored:
        out.notes.append(f"ignored for llama/qwen archs: {', '.join(ignored)}")
    out.spec = _fixed_yarn(text, block, theta=theta, rho=rho, original=original)
    return out


def exllamav2(text: dict[str, Any]) -> RuntimeReading:
    """exllamav2 (exllamav2/rope.py, config.py): `type` only, both keys assert; the ramp uses
    max_seq_len instead of the original length, betas 32/1, whole-head rotation, g(s)."""
    out = RuntimeReading("exllamav2")
    block = _block(text, v5=False)
    theta = float(text.get("rope_theta", 10000.0))
    rho = text.get("partial_rotary_factor")
    mpe = text.get("max_position_embeddings")
    out.max_context = mpe
    if "type" in block and "rope_type" in block:
        out.error = "both `type` and `rope_type`: assertion error (use --schema exllamav2)"
        return out
    if block.get("type") != "yarn":
        if block.get("rope_type") == "yarn":
            out.notes.append("`rope_type` without `type`: YaRN silently off")
        out.spec = rope.RopeSpec(method="default", base=theta, dim=rope.rotary_dim(_head_dim(text), rho))
        return out
    if block.get("original_max_position_embeddings") is None:
        out.error = "YaRN without original_max_position_embeddings: KeyError"
        return out
    out.notes.append("correction range computed from max_seq_len (defaults to max_position_embeddings), as transformers <= 4.50 did")
    if rho not in (None, 1, 1.0):
        out.notes.append("partial_rotary_factor ignored (rotates the whole head)")
    out.spec = _fixed_yarn(text, block, theta=theta, rho=None, original=mpe)
    return out


READERS: dict[str, Callable[[dict[str, Any]], RuntimeReading]] = {
    "transformers 4.44-4.50": _hf4("4.44-4.50"),
    "transformers 4.51-4.55": _hf4("4.51-4.55"),
    "transformers 4.56-4.57": _hf4("4.56-4.57"),
    "transformers 5.x": hf5,
    "vLLM 0.33": vllm,
    "llama.cpp": llama_cpp,
    "exllamav2": exllamav2,
}


def compare(text: dict[str, Any], reference: rope.RopeSpec) -> list[dict[str, Any]]:
    """Every runtime's reading next to ``reference``: max relative inv_freq difference and magnitude."""
    ref = rope.compute(reference)
    rows = []
    for name, reader in READERS.items():
        try:
            reading = reader(text)
        except (KeyError, TypeError, ZeroDivisionError, ValueError) as exc:
            reading = RuntimeReading(name, error=f"{type(exc).__name__}: {exc}")
        row: dict[str, Any] = {"runtime": name, "method": reading.method, "notes": reading.notes}
        if reading.error or reading.spec is None:
            row.update(verdict="fails", error=reading.error)
            rows.append(row)
            continue
        try:
            got = rope.compute(reading.spec)
        except ValueError as exc:
            row.update(verdict="fails", error=str(exc))
            rows.append(row)
            continue
        diff = max((abs(a - b) / b for a, b in zip(got.inv_freq, ref.inv_freq, strict=False)), default=0.0)
        if len(got.inv_freq) != len(ref.inv_freq):
            diff = float("inf")
        mag = got.attention_factor
        same = diff <= 1e-6 and abs(mag - ref.attention_factor) <= 1e-7
        row.update(
            factor=reading.spec.factor,
            original_context=reading.spec.original_context,
            max_context=reading.max_context,
            attention_factor=mag,
            inv_freq_max_rel_diff=diff,
            verdict="same" if same else "differs",
        )
        rows.append(row)
    return rows
