"""``eval``: perplexity against context length, and passkey retrieval, for the extended model beside its
base and the other scalings at the same factor (the YaRN paper's Tables 1-2 and §4.3, for the user's
own checkpoint). The protocol is :mod:`yarnconv.evaluation.protocol`; the rows
:mod:`yarnconv.evaluation.rows`; the runtimes :mod:`yarnconv.evaluation.engines`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv import rope
from yarnconv.errors import YarnconvError
from yarnconv.evaluation.engines import LlamaCppScorer, ReferenceScorer, Scorer, TransformersScorer
from yarnconv.evaluation.protocol import Protocol, Tally, check_documents, default_lengths
from yarnconv.evaluation.rows import Row, check_lengths, gguf_rows, hf_rows, variant_dir
from yarnconv.storage.progress import progress_bar
from yarnconv.verify.subject import Subject

REPORT = "yarnconv-eval.json"
FIGURE = "yarnconv-eval.png"
ENGINES = ("transformers", "llama.cpp", "reference")


def beside(model: Path) -> tuple[Path, Path]:
    """Where the report and its figure are saved: in the checkpoint, or next to the GGUF file."""
    if model.suffix == ".gguf":
        return model.with_name(model.name + ".eval.json"), model.with_name(model.name + ".eval.png")
    return model / REPORT, model / FIGURE


@dataclasses.dataclass
class Setup:
    """What every row shares: the model, its runtime, the text and the protocol."""

    path: Path
    gguf: bool
    engine: str
    dtype: str
    rows: list[Row]
    protocol: Protocol
    documents: list[tuple[str, list[int]]]
    text: dict[str, Any]
    head_dim: int
    tokenize: Callable[[str], list[int]]


def evaluate_model(
    model: str | Path,
    *,
    base: str | Path | None = None,
    lengths: list[int] | None = None,
    methods: list[str] | None = None,
    stride: int = 256,
    windows: int = 1,
    texts: Sequence[str] = (),
    engine: str | None = None,
    passkey: bool = False,
    passkey_trials: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Every row's perplexity at every length (and passkey accuracy with ``passkey``); the report."""
    started = time.monotonic()
    s = prepare(Path(model), Path(base) if base is not None else None, lengths, methods if methods is not None else ["linear", "dynamic", "yarn"], stride, windows, texts, engine, seed)
    out: dict[str, Any] = {"model": str(s.path), "kind": "gguf" if s.gguf else "hf", "engine": s.engine + (f" ({s.dtype})" if s.engine == "transformers" else "")}
    ext = s.rows[0]
    out |= {"factor": ext.block.factor, "original_context": ext.block.original_context, "context": ext.max_position}
    out |= {"text": s.text, "protocol": {"stride": s.protocol.stride, "windows": s.protocol.windows, "definition": s.protocol.definition()}}
    out["lengths"] = list(s.protocol.lengths)
    with tempfile.TemporaryDirectory(prefix="yarnconv-eval-") as scratch:
        tallies: dict[str, Tally] = {}
        out["rows"] = [_row(s, row, Path(scratch), tallies, progress) for row in s.rows]
        for r in out["rows"]:
            if r["label"] in tallies and r["label"] != "base" and "base" in tallies:
                r["vs_base"] = [tallies[r["label"]].against(tallies["base"], n) for n in s.protocol.lengths]
        for r in out["rows"]:
            if r.get("same_as"):
                twin = next(x for x in out["rows"] if x["label"] == r["same_as"])
                r.update({k: twin[k] for k in ("ppl", "ci95", "nll", "scored_tokens", "vs_base") if k in twin})
        if passkey:
            out["passkey"] = _passkey(s, Path(scratch), passkey_trials, seed, progress)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def prepare(path: Path, base: Path | None, lengths: list[int] | None, methods: list[str], stride: int, windows: int, texts: Sequence[str], engine: str | None, seed: int) -> Setup:
    """Check the input and build the rows, the protocol and the documents, before any forward runs."""
    gguf = path.suffix == ".gguf"
    if gguf and not path.is_file() or not gguf and not (path / "config.json").is_file():
        raise YarnconvError(f"{path} is neither an HF checkpoint directory nor a .gguf file", "evaluate what yarnconv extend or export wrote")
    if base is not None and not (base.is_file() if gguf else (base / "config.json").is_file()):
        raise YarnconvError(f"--base {base} is not {'a GGUF file' if gguf else 'an HF checkpoint directory'}", "pass the model this one was extended from, in the same format")
    from yarnconv.verify.subject import gguf_subject, hf_subject

    subject = gguf_subject(path, None) if gguf else hf_subject(path)  # read once: the rows, the engine and the head size use it
    engine, dtype = _engine(subject, engine)
    rows = gguf_rows(subject, base, methods) if gguf else hf_rows(subject, base, methods)
    ext = rows[0]
    ladder = lengths or default_lengths(int(ext.block.original_context or 0), ext.max_position)
    check_lengths(ladder, rows)
    protocol = Protocol(tuple(ladder), stride, windows)
    tokenize = _tokenizer(path, gguf)
    documents, text = _documents(tokenize, texts, protocol, seed)
    return Setup(path, gguf, engine, dtype, rows, protocol, documents, text, subject.dim, tokenize)


def _engine(s: Subject, asked: str | None) -> tuple[str, str]:
    """The runtime and transformers' dtype: llama.cpp for a GGUF; transformers for HF when the model fits
    (float32, else its half precision), else the streaming reference."""
    gguf = s.kind == "gguf"
    if asked is not None and asked not in ENGINES:
        raise YarnconvError(f"unknown engine {asked!r}", f"use one of {', '.join(ENGINES)}")
    if gguf:
        if asked == "transformers":
            raise YarnconvError("--engine transformers does not run a GGUF file", "use llama.cpp (default) or reference")
        from yarnconv.verify import llama_cpp

        if asked != "reference" and not llama_cpp.available():
            raise YarnconvError("evaluating a GGUF runs it in llama.cpp, and llama-cpp-python is not installed", 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python')
        return asked or "llama.cpp", "float32"
    if asked == "llama.cpp":
        raise YarnconvError("--engine llama.cpp runs GGUF files", "export the checkpoint (yarnconv export --gguf --outtype f32) and evaluate the file")
    if asked == "reference":
        return "reference", "float32"
    from yarnconv.verify.transformers_engine import TABLES_ONLY, engine_dtype

    dtype = engine_dtype(s, "auto")
    return ("reference", "float32") if dtype == TABLES_ONLY else ("transformers", dtype)


def _tokenizer(path: Path, gguf: bool) -> Callable[[str], list[int]]:
    from yarnconv.verify.probe import gguf_tokenizer, hf_tokenizer

    tokenize = gguf_tokenizer(path) if gguf else hf_tokenizer(path)
    if tokenize is None:
        raise YarnconvError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model) to turn text into tokens", "copy the base model's tokenizer files into it")
    return tokenize


def _documents(tokenize: Callable[[str], list[int]], texts: Sequence[str], protocol: Protocol, seed: int) -> tuple[list[tuple[str, list[int]]], dict[str, Any]]:
    """Each --text file is a document; without one, Python's standard-library sources found on this machine."""
    from yarnconv.verify.probe import machine_text

    docs: dict[str, list[int]] = {}
    if texts:
        for name in texts:
            try:
                docs[name] = tokenize(Path(name).read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                raise YarnconvError(f"cannot read --text {name} ({exc.strerror})", "pass readable UTF-8 text files") from None
        source = ", ".join(Path(n).name for n in texts)
    else:
        text, source = machine_text(protocol.needed * 6, seed)
        docs[source] = tokenize(text)
    usable = check_documents({k: len(v) for k, v in docs.items()}, protocol)
    info = {"source": source, "documents": [{"name": k, "tokens": len(v), "used": k in usable} for k, v in docs.items()]}
    info["scored_tokens_per_length"] = len(usable) * protocol.windows * protocol.stride
    return [(k, docs[k]) for k in usable], info


def _spec_at(row: Row, head_dim: int) -> Callable[[int], rope.RopeSpec]:
    """The rope of a sequence of n tokens: fixed, except dynamic NTK's base, which grows with n."""
    spec = row.block.spec(head_dim, row.max_position)
    if row.block.rope_type != "dynamic":
        return lambda n: spec
    return lambda n: dataclasses.replace(spec, method="default", base=rope.dynamic_ntk_base(spec, n), factor=None)


def _scorer(s: Setup, row: Row, scratch: Path) -> Scorer:
    if s.engine == "llama.cpp":
        return LlamaCppScorer(row.path or s.path, s.protocol.lengths[-1], row.flags)
    if s.engine == "reference":
        return ReferenceScorer(row.path or s.path, _spec_at(row, s.head_dim))
    return TransformersScorer(_where(s, row, scratch), s.dtype)


def _where(s: Setup, row: Row, scratch: Path) -> Path:
    """The directory transformers loads for a row: its --base, its config-only variant (made once), or the model."""
    if row.path is not None:
        return row.path
    if row.config is None:
        return s.path
    return scratch / row.label if (scratch / row.label).is_dir() else variant_dir(s.path, row.config, scratch / row.label)


def _same_rope(s: Setup, row: Row, tallies: dict[str, Tally], length: int) -> str | None:
    """A row already measured whose rope at ``length`` is this row's (dynamic NTK up to the original
    length is plain RoPE, the base's): its numbers are this row's there, and no forward is run again."""
    mine = rope.compute(_spec_at(row, s.head_dim)(length))
    for other in s.rows:
        if other.label in tallies and not other.per_length and other.path is None:
            theirs = rope.compute(_spec_at(other, s.head_dim)(length))
            if (theirs.inv_freq, theirs.attention_factor) == (mine.inv_freq, mine.attention_factor):
                return other.label
    return None


def _row(s: Setup, row: Row, scratch: Path, tallies: dict[str, Tally], progress: bool) -> dict[str, Any]:
    """One row of the table: every window of every document through the row's model."""
    out: dict[str, Any] = {"label": row.label, "describe": row.describe, "rope": row.block.to_dict(), "max_position_embeddings": row.max_position}
    nothing = [None] * len(s.protocol.lengths)
    if row.same_as or row.not_run:
        return out | ({"same_as": row.same_as} if row.same_as else {"not_run": row.not_run, "ppl": nothing, "ci95": nothing, "nll": nothing})
    started, p = time.monotonic(), s.protocol
    tally = tallies[row.label] = Tally.empty(p.lengths)
    reused = {n: label for n in p.lengths if row.per_length and (label := _same_rope(s, row, tallies, n))}
    for n, label in reused.items():
        tally.nll[n] = list(tallies[label].nll[n])
    plan = [(start, span, served) for start, span, served in p.forwards(row.per_length) if served[0] not in reused]
    scorer = _scorer(s, row, scratch) if plan else None
    try:
        with progress_bar(len(s.documents) * sum(span for _, span, _ in plan), progress, f"eval {row.label}", unit="tok") as bar:
            for _, ids in s.documents:
                for start, span, served in plan:
                    targets = sorted({t for length in served for t in p.targets(length)})
                    nll = dict(zip(targets, scorer.nll(ids[start : start + span], targets), strict=True))  # type: ignore[union-attr]
                    for length in served:
                        tally.nll[length] += [float(nll[t]) for t in p.targets(length)]
                    bar.update(span)
    finally:
        if scorer is not None:
            scorer.close()
    out["ppl"] = [round(tally.ppl(n), 4) for n in p.lengths]
    out["ci95"] = [[round(x, 4) for x in tally.interval(n)] for n in p.lengths]
    out["nll"] = [round(float(np.mean(tally.nll[n])), 6) for n in p.lengths]
    out["scored_tokens"] = [len(tally.nll[n]) for n in p.lengths]
    if reused:
        out["reused"] = {str(n): f"the same rope as {label} at this length: its numbers, no second run" for n, label in reused.items()}
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _passkey(s: Setup, scratch: Path, trials: int, seed: int, progress: bool) -> dict[str, Any]:
    """verify's passkey test on the same ladder, for every row this engine runs, one model in memory at a
    time; every row gets the same keys, depths and filler (the builder is seeded)."""
    from yarnconv.verify import passkey

    if s.engine == "reference":
        raise YarnconvError("passkey retrieval decodes answers, which the reference forward does not", "drop --passkey, or run in transformers / llama.cpp")
    merged: dict[str, Any] = {}
    decode = None if s.gguf else _hf_decoder(s.path)
    for r in (r for r in s.rows if not (r.same_as or r.not_run)):
        if s.gguf:
            engine: passkey.Engine = passkey.LlamaCppEngine(r.path or s.path, s.protocol.lengths[-1] + 16, rope=r.flags)
        else:
            engine = passkey.TransformersEngine(_where(s, r, scratch))
        report, _ = passkey.run_passkey({r.label: engine}, s.tokenize, decode or engine.seq.detokenize, list(s.protocol.lengths), trials=trials, seed=seed, progress=progress)  # type: ignore[attr-defined]
        merged = report if not merged else merged | {k: merged[k] + report[k] for k in ("rows", "per_length")}
    return merged


def _hf_decoder(root: Path) -> Callable[[int], str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root)
    return lambda i: str(tok.decode([i]))
