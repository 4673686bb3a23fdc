"""``verify``: does each runtime run the checkpoint as planned?

One probe of token ids (:mod:`yarnconv.verify.probe`) at gapped positions goes through the
reference forward running the plan and plain RoPE on the same weights, and through the engine
that runs the artifact: transformers for an HF checkpoint, llama.cpp for a GGUF file. Checks, each
passed / failed / skipped with its bounds:

* rope: the tables transformers builds, or what llama.cpp reads from the GGUF keys and context,
  equal the plan;
* logits below and beyond the original length against the reference (llama-perplexity's KL
  statistics), within the tolerance of the weights' type;
* no-op detector: beyond the original length the engine must follow the plan, not plain RoPE on
  the same weights; when it follows plain RoPE the cause is named;
* drift (reported, not gated): base rope vs the plan below the original length, NLL with a
  bootstrap interval, on the reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.errors import YarnconvError
from yarnconv.verify.check import Bound, Check, judge, skipped, within_noise
from yarnconv.verify.logits import compare_logits
from yarnconv.verify.probe import Probe, gapped, gguf_tokenizer, hf_tokenizer, seeded_tokens, text_tokens
from yarnconv.verify.reference import FAMILIES
from yarnconv.verify.stats import drift, region_stats
from yarnconv.verify.subject import Subject, gguf_subject, hf_subject
from yarnconv.verify.transformers_engine import (
    HALF_BOUNDS,
    HALF_NOISE_MARGIN,
    TABLES_ONLY,
    engine_dtype,
    half_noise,
    rope_table_check,
    transformers_logits,
    transformers_tables,
)

REPORT = "yarnconv-verify.json"
# transformers' default (SDPA) attention rounds differently from the plain formula: up to ~2e-3
# in a logit on SmolLM2 at 32k, a KL far below these bounds; a wrong rope moves KL by orders more.
LOGIT_BOUNDS = (Bound("kl_max", "<=", 1e-4), Bound("top1_agreement", ">=", 0.99))
HALF_BEYOND = (
    "reported, not gated: in half precision long distances move logits by themselves "
    "(SmolLM2 x4 at 32k: KL mean 0.43 between transformers in bfloat16 and in float32); the rope is judged by the tables and the no-op detector"
)


def region_checks(
    ref: np.ndarray,
    got: np.ndarray,
    probe: Probe,
    original: int,
    engine: str,
    bounds: tuple[Bound, ...],
    *,
    half: bool = False,
    noise: dict[str, tuple[dict[str, Any], float]] | None = None,
) -> list[Check]:
    """KL statistics below and beyond the original length; ``noise[region]`` = (the engine's
    arithmetic noise measured on this model, margin) loosens that region's bounds to it."""
    out = []
    next_tokens = np.array([*probe.tokens[1:], -1])
    next_tokens[probe.near - 1] = -1  # the near half's last token is not followed by its text
    pos = np.array(probe.positions)
    for name, mask in (("below", pos < original), ("beyond", pos >= original)):
        label = f"{engine} logits {name} the original {original}"
        if not mask.any():
            out.append(skipped(label, f"the probe has no position {name} the original length", bounds))
            continue
        measured, region_bounds = region_stats(ref[mask], got[mask], next_tokens[mask]), bounds
        if noise and name in noise:
            measured |= {f"noise_{k}": v for k, v in noise[name][0].items()}
            region_bounds = within_noise(bounds, *noise[name])
        out.append(Check(label, "info", measured, reason=HALF_BEYOND) if half and name == "beyond" else judge(label, measured, region_bounds))
    return out


def noop_check(plan: np.ndarray, plain: np.ndarray, got: np.ndarray, positions: list[int], original: int, engine: str, margin: float = 10.0) -> Check:
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
    if to_plan * margin > to_plain:
        return Check(label, "failed", measured, reason=f"{engine} is neither the plan nor plain RoPE: it reads the rope block differently")
    return Check(label, "passed", measured)


def make_probe(s: Subject, n: int, seed: int, text: str | None, seeded: bool) -> Probe:
    """Real text through the artifact's own tokenizer when it has one, else seeded ids."""
    tokenize = None if seeded else gguf_tokenizer(s.path) if s.kind == "gguf" else hf_tokenizer(s.path)
    if tokenize is None and text:
        raise YarnconvError(f"--text needs the model's tokenizer, and {s.path.name} has none that yarnconv can run", "install transformers (HF) or llama-cpp-python (GGUF), or drop --text")
    if tokenize is not None:
        ids, where = text_tokens(tokenize, n, text_file=text, seed=seed)
        source = f"text: {where}"
    else:
        ids, source = seeded_tokens(s.view.vocab_size or 32000, n, seed, s.view.text.get("bos_token_id")), f"seeded ids (seed {seed})"
    return gapped(ids, s.max_position - 1, source)


def _check_base(root: Path, base: Path) -> None:
    """--base for an HF output is the model it was extended from: the same tensors."""
    from yarnconv.storage.weights import scan_weights

    mine = {k: (v.dtype, v.shape) for k, v in scan_weights(root).tensors.items()}
    theirs = {k: (v.dtype, v.shape) for k, v in scan_weights(base).tensors.items()}
    if mine != theirs:
        raise YarnconvError(f"--base {base} holds other tensors than {root}", "pass the checkpoint this one was extended from")


def verify_model(
    source: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    tokens: int = 256,
    seed: int = 0,
    text: str | None = None,
    seeded: bool = False,
    passkey: list[int] | None = None,
    passkey_trials: int = 2,
    passkey_min: float | None = None,
    dtype: str = "auto",
    progress: bool = False,
    engines: list[str] | None = None,
    engine_python: str | None = None,
) -> tuple[dict[str, Any], list[Check]]:
    """Run the checks on an HF checkpoint directory or a GGUF file; returns the report and the checks.
    ``engines``: the runtimes that run it (default: transformers for HF, llama.cpp for GGUF; vllm
    for HF, in the interpreter ``engine_python`` names when this one lacks vLLM)."""
    path, base_path = Path(source), Path(base) if base is not None else None
    wanted = _engines(engines, path)
    vllm_python = None
    if "vllm" in wanted:
        from yarnconv.verify import vllm_engine

        vllm_python = vllm_engine.interpreter(engine_python)
    s = _subject(path, base_path, vllm_python is not None)
    probe = make_probe(s, tokens, seed, text, seeded)
    s.engine_dtype = engine_dtype(s, dtype) if s.kind == "hf" else "float32"
    checks, drifted, by_pos, vllm_facts = _run_engines(s, probe, wanted, vllm_python, (seed, text, seeded))
    report = {
        "model": str(path),
        "kind": s.kind,
        "engine": ", ".join(wanted),
        "plan": {"rope": s.block.to_dict(), "from": s.intent, "max_position_embeddings": s.max_position, "original_context": s.original},
        "reference": {"weights": str(s.reference), "weight_type": s.weight_type},
        **({"transformers_dtype": s.engine_dtype} if s.kind == "hf" else {}),
        "probe": probe.summary(),
        "checks": [c.to_dict() for c in checks],
        "drift": {"base_rope": s.base_block.to_dict(), **drifted},
    }
    if vllm_python is not None:
        report["vllm"] = {"python": str(vllm_python), **vllm_facts}
    if by_pos is not None:  # the reference ran
        report["by_position"] = by_pos
    if passkey is not None:
        passkey = passkey or [s.original, s.max_position]
        report["passkey"], check = passkey_run(s, base_path, passkey, passkey_trials, seed, passkey_min, progress)
        checks.append(check)
        report["checks"].append(check.to_dict())
    report["ok"] = all(c.status != "failed" for c in checks) and any(c.passed for c in checks)
    return report, checks


def _subject(path: Path, base_path: Path | None, vllm: bool) -> Subject:
    """What is verified (an HF directory or a GGUF file, with the checkpoint it came from), checked
    against what the engines can run."""
    if path.suffix == ".gguf":
        if not path.is_file():
            raise YarnconvError(f"no GGUF file {path}", "check the path")
        from yarnconv.verify import llama_cpp

        if not llama_cpp.available():
            raise YarnconvError("verifying a GGUF runs it in llama.cpp, and llama-cpp-python is not installed", 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python')
        if base_path is not None and not (base_path / "config.json").is_file():
            raise YarnconvError(f"--base {base_path} is not an HF checkpoint directory", "pass the directory the GGUF was exported from")
        s = gguf_subject(path, base_path)
    else:
        s = hf_subject(path)
        if base_path is not None:
            _check_base(path, base_path)
            s.base_block = hf_subject(base_path).view.rope if not (path / "yarnconv.json").is_file() else s.base_block
    if vllm:
        from yarnconv.verify import vllm_engine

        if s.view.model_type not in FAMILIES:
            raise YarnconvError(f"--engine vllm compares with the reference forward, which runs {', '.join(sorted(FAMILIES))}, not {s.view.model_type}", "verify it with the transformers engine (its rope tables)")
        vllm_engine.fits(s)
    return s


def _run_engines(s: Subject, probe: Any, wanted: list[str], vllm_python: Any, probe_args: tuple[int, str | None, bool]) -> tuple[list[Check], dict[str, Any], Any, dict[str, Any]]:
    """The engines' checks against the reference forward (or transformers' own tables when the
    reference cannot run this model), the drift from the base rope, and the by-position summary."""
    from yarnconv.verify.reference import ReferenceModel

    seed, text, seeded = probe_args
    near, plain_block = probe.near, rope_plain(s)
    if s.kind == "hf" and (s.view.model_type not in FAMILIES or s.engine_dtype == TABLES_ONLY):  # transformers' own tables only
        why = s.why_tables_only or f"the reference forward does not run {s.view.model_type}"
        if vllm_python is not None:
            raise YarnconvError(f"--engine vllm compares with the reference forward, which does not run here ({why})", "drop --dtype none, or drop --engine vllm")
        return engine_checks(s, probe, None, None, None), {"skipped": why}, None, {}
    alone = (probe.near,) if s.kind == "gguf" and probe.near < len(probe.tokens) else ()
    reference = ReferenceModel(s.reference)
    planned = reference.logits(probe.tokens, probe.positions, spec=s.spec(), alone=alone).double().numpy()
    plain = reference.logits(probe.tokens, probe.positions, spec=s.spec(plain_block), alone=alone).double().numpy()
    kept: dict[str, Any] = {}
    checks = engine_checks(s, probe, planned, plain, reference, kept) if wanted != ["vllm"] else []
    vllm_facts: dict[str, Any] = {}
    if vllm_python is not None:
        from yarnconv.verify import vllm_engine

        long_tokens = vllm_engine.long_sequence(make_probe(s, s.original + vllm_engine.LONG_EXTRA + 1, seed, text, seeded).tokens, s.original, vllm_engine.planned_context(s))
        more, vllm_facts = vllm_engine.checks(s, probe, planned, plain, reference, vllm_python, long_tokens)
        checks += more
    base_near = plain[:near] if s.base_block == plain_block else reference.logits(probe.tokens[:near], spec=s.spec(s.base_block)).double().numpy()
    drifted = drift(base_near, planned[:near], np.array([*probe.tokens[1:near], -1]), seed=seed)
    return checks, drifted, by_position(planned, kept.get("got"), probe), vllm_facts


ENGINES = ("transformers", "llama.cpp", "vllm")


def _engines(engines: list[str] | None, path: Path) -> list[str]:
    """The engines asked for, checked against the artifact: vLLM and transformers run HF outputs, llama.cpp GGUF files."""
    gguf = path.suffix == ".gguf"
    wanted = list(dict.fromkeys(engines or ["llama.cpp" if gguf else "transformers"]))
    for e in wanted:
        if e not in ENGINES:
            raise YarnconvError(f"unknown engine {e!r}", f"use one of {', '.join(ENGINES)}")
        if gguf != (e == "llama.cpp"):
            what = "a GGUF file runs in llama.cpp" if gguf else f"{path.name} is an HF checkpoint: transformers and vllm run it"
            raise YarnconvError(f"--engine {e} does not apply here: {what}", "drop that --engine, or verify the other artifact")
    return wanted


def passkey_run(s: Subject, base: Path | None, lengths: list[int], trials: int, seed: int, minimum: float | None, progress: bool) -> tuple[dict[str, Any], Check]:
    """The passkey test in the artifact's runtime; for an HF output, beside its --base model."""
    from yarnconv.verify import passkey

    if s.kind == "gguf":
        engine = passkey.LlamaCppEngine(s.path, max(lengths) + 16)
        engines: dict[str, passkey.Engine] = {"extended": engine}
        tokenize = gguf_tokenizer(s.path)
        assert tokenize is not None  # llama-cpp-python was checked above

        def decode(i: int) -> str:
            return engine.seq.detokenize(i)

    else:
        if hf_tokenizer(s.path) is None:
            raise YarnconvError(f"--passkey needs the model's tokenizer, and {s.path} has none transformers can load", "add the tokenizer files, or drop --passkey")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(s.path)

        def tokenize(text: str) -> list[int]:
            return list(tok(text)["input_ids"])

        def decode(i: int) -> str:
            return str(tok.decode([i]))

        engines = {"extended": passkey.TransformersEngine(s.path)}
        if base is not None:
            engines["base"] = passkey.TransformersEngine(base)
    return passkey.run_passkey(engines, tokenize, decode, lengths, trials=trials, seed=seed, minimum=minimum, progress=progress)


def by_position(planned: np.ndarray, got: np.ndarray | None, probe: Probe) -> dict[str, Any]:
    """Per probe position: KL(reference || engine) and the engine's NLL of the next token (null where
    the probe has no next token), for plots."""
    from yarnconv.verify.logits import compare_logits, log_softmax

    nxt = np.array([*probe.tokens[1:], -1])
    nxt[probe.near - 1] = -1
    out: dict[str, Any] = {"positions": list(probe.positions)}
    if got is not None:
        out["kl"] = [float(f"{k:.4g}") for k in compare_logits(planned, got).kl]
        lp = log_softmax(np.asarray(got, dtype=np.float64))
        out["nll"] = [None if t < 0 else float(f"{-lp[i, t]:.4g}") for i, t in enumerate(nxt)]
    return out


def rope_plain(s: Subject) -> Any:
    from yarnconv.config import RopeBlock

    return RopeBlock(theta=s.block.theta, partial_rotary_factor=s.block.partial_rotary_factor)


def engine_checks(s: Subject, probe: Probe, planned: np.ndarray | None, plain: np.ndarray | None, reference: Any, keep: dict[str, Any] | None = None) -> list[Check]:
    """The engine's checks; ``keep["got"]`` receives the engine's logits (for the by-position series)."""
    if s.kind == "hf":
        try:
            if s.engine_dtype == TABLES_ONLY:
                got, table = None, transformers_tables(s.path)
            else:
                got, table = transformers_logits(s.path, probe.tokens, probe.positions, s.engine_dtype)
        except ImportError:
            return [skipped("transformers", "transformers is not installed (pip install transformers)")]
        layer_specs = {lt: s.spec(b) for lt, b in s.layer_blocks.items()} if len(table) > 1 or "" not in table else None
        tables = [_named(rope_table_check(table, s.spec(), layer_specs), s), *_sidecar_checks(s)]
        half = s.engine_dtype != "float32"
        if planned is None or plain is None or got is None:
            why = s.why_tables_only or f"the reference forward runs {', '.join(sorted(FAMILIES))}, not {s.view.model_type}: rope tables only"
            return [*tables, skipped("transformers logits", why, LOGIT_BOUNDS), skipped("transformers applies the planned scaling", why)]
        if keep is not None:
            keep["got"] = got
        noise = {"below": (half_noise(reference, s, probe, planned), HALF_NOISE_MARGIN)} if half else None
        return [
            *tables,
            *region_checks(planned, got, probe, s.original, "transformers", HALF_BOUNDS if half else LOGIT_BOUNDS, half=half, noise=noise),
            noop_check(planned, plain, got, probe.positions, s.original, "transformers", margin=5.0 if half else 10.0),
        ]
    from yarnconv.verify import gguf_checks, llama_cpp

    checks = [gguf_checks.keys_check(s), gguf_checks.context_check(s)]
    if s.base is not None and s.gguf["arch"] == "llama":
        from yarnconv.verify.weights import Weights, gguf_source

        base_weights = reference.weights if s.reference == s.base else Weights(s.base)
        checks.append(gguf_checks.qk_layout_check(s, gguf_source(s.path)[1], base_weights))
    near, far = probe.tokens[: probe.near], probe.tokens[probe.near :]
    got = llama_cpp.gapped_logits(s.path, near, far, probe.positions[probe.near] if far else 0)
    bounds = gguf_checks.logit_bounds(s.weight_type, s.reference != s.path)
    if keep is not None:
        keep["got"] = got
    noise = gguf_checks.llama_cpp_noise(reference, s, probe, planned)
    return [*checks, *region_checks(planned, got, probe, s.original, "llama.cpp", bounds, noise=noise), noop_check(planned, plain, got, probe.positions, s.original, "llama.cpp")]


def _named(check: Check, s: Subject) -> Check:
    """A failed rope-table check names its cause: the layer types config.json scales instead of the
    planned ones, what its block says that the plan does not, or transformers reading an unchanged block its own way."""
    if check.passed:
        return check
    from yarnconv.config.block import differences

    worst = next((lt for lt in s.layer_blocks if (check.reason or "").startswith(f"the {lt} layers")), None)
    got = s.view.layer_ropes.get(worst or "", s.view.rope)
    diffs = differences(got, s.layer_blocks[worst]) if worst in s.view.layer_ropes else differences(s.view.rope, s.block)
    moved = [lt for lt, b in s.view.layer_ropes.items() if lt != worst and b.rope_type != s.layer_blocks.get(lt, b).rope_type]
    if worst and got.rope_type == "default" and moved:
        cause = f"config.json scales the {', '.join(moved)} layers and leaves the {worst} layers plain: the scaling sits on the wrong layer type"
    elif diffs:
        cause = f"config.json's rope block reads as {'; '.join(diffs)}; fix: re-run extend, or restore config.json"
    else:
        cause = "this transformers builds another rope from config.json than yarnconv reads (see docs/runtimes.md §1 for version traps)"
    return Check(check.name, "failed", check.measured, check.bounds, f"{cause} ({check.reason})")


def _sidecar_checks(s: Subject) -> list[Check]:
    """The precomputed buffers extend --precompute-inv-freq wrote, when the checkpoint has them."""
    from yarnconv.plan import layer_types
    from yarnconv.storage.files import SIDECAR
    from yarnconv.verify.rotary import sidecar_check

    path = s.path / SIDECAR
    if not path.is_file():
        return []
    types = layer_types(s.view) or [""] * (s.view.num_layers or 0)
    return [sidecar_check(path, s.spec(), {lt: s.spec(b) for lt, b in s.layer_blocks.items()}, types)]


def save_report(path: Path, report: dict[str, Any]) -> Path:
    """Write the report whole: a temporary name beside it, renamed at the end, removed on any failure."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
