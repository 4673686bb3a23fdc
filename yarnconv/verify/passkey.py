"""Passkey retrieval (the test of the YaRN paper, §4.3): a random 5-digit key hidden at a grid of
depths in filler text of several lengths; the model must repeat it.

The filler is text found on this machine (Python's standard-library sources, through the model's
own tokenizer); the prompt's wording is yarnconv's own. Keys and filler offsets are seeded. The
answer is decoded greedily among tokens made only of digits, so a model that knows the key is not
failed by its formatting. Accuracy per length and depth comes with a Wilson 95% interval; the
extended model runs beside its base (the model it was extended from) when one is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.errors import UsageError, YarnconvError
from yarnconv.storage.progress import progress_bar
from yarnconv.verify.check import Bound, Check, judge
from yarnconv.verify.probe import Tokenize, machine_text
from yarnconv.verify.stats import wilson

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
INTRO = "Somewhere in the long text below there is a five-digit secret number. Read everything and remember the number.\n"
NEEDLE = "\nImportant: the secret number is {key}. Once more, the secret number is {key}.\n"
QUESTION = "\nWhat is the secret number mentioned in the text above? The secret number is"


def parse_lengths(text: str) -> list[int]:
    """``8k,16k,32k`` (k = 1024) or plain token counts."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", part)
        if not m:
            raise UsageError(f"--lengths {text!r}: {part!r} is not a length", "write lengths like 8k,16k,32k or 4096")
        out.append(int(m[1]) * (1024 if m[2] else 1))
    return out


@dataclass
class Prompt:
    tokens: list[int]
    key: str


class PromptBuilder:
    """Prompts of an exact token length from one tokenizer and the machine's filler text."""

    def __init__(self, tokenize: Tokenize, longest: int, seed: int) -> None:
        self.tokenize = tokenize
        self.bos = tokenize("")
        text, self.filler_source = machine_text(longest * 6, seed)
        self.filler = self.piece(text)
        if len(self.filler) < longest:
            self.filler = (self.filler * (longest // max(len(self.filler), 1) + 1))[: longest + 1]
        self.intro, self.question = self.piece(INTRO), self.piece(QUESTION)
        self.rng = np.random.default_rng(seed)

    def piece(self, text: str) -> list[int]:
        ids = self.tokenize(text)
        return ids[len(self.bos) :] if ids[: len(self.bos)] == self.bos else ids

    def build(self, length: int, depth: float) -> Prompt:
        key = str(int(self.rng.integers(10000, 100000)))
        needle = self.piece(NEEDLE.format(key=key))
        room = length - len(self.bos) - len(self.intro) - len(needle) - len(self.question)
        if room < 16:
            raise UsageError(f"passkey length {length} leaves no room for filler", "use lengths of at least 256 tokens")
        start = int(self.rng.integers(0, max(len(self.filler) - room, 1)))
        filler = self.filler[start : start + room]
        cut = int(round(depth * len(filler)))
        return Prompt([*self.bos, *self.intro, *filler[:cut], *needle, *filler[cut:], *self.question], key)


def digit_tokens(decode: Callable[[int], str], vocab: int) -> dict[int, str]:
    """Token ids whose text is digits (a leading space allowed), and those digits."""
    out = {}
    for i in range(vocab):
        try:
            s = decode(i)
        except Exception:  # noqa: BLE001 - special tokens some tokenizers refuse to decode
            continue
        if s.strip().isdigit() and s.strip().isascii() and (s == s.strip() or s == " " + s.strip()):
            out[i] = s.strip()
    if not out:
        raise YarnconvError("the tokenizer has no digit tokens", "passkey retrieval needs a tokenizer that can write numbers")
    return out


Step = Callable[[list[int]], np.ndarray]  # tokens -> next-token logits, continuing the same sequence


def greedy_digits(start: Step, prompt: list[int], digits: dict[int, str], n: int = 5) -> str:
    """Greedy decoding restricted to digit tokens until ``n`` digits are written."""
    ids = np.fromiter(digits, dtype=np.int64)
    logits, out = start(prompt), ""
    while len(out) < n:
        tok = int(ids[np.argmax(logits[ids])])
        out += digits[tok]
        if len(out) < n:
            logits = start([tok])
    return out[:n]


class Engine:
    """A runtime that continues one sequence at a time: ``start`` resets on a full prompt."""

    name: str

    def session(self) -> Step:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runtime holds (llama.cpp's context); transformers' model goes with the object."""


class TransformersEngine(Engine):
    def __init__(self, root: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.name = "transformers"
        self.model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32)
        self.vocab = self.model.config.get_text_config().vocab_size

    def session(self) -> Step:
        import inspect

        import torch

        # transformers 5.24 renamed past_key_values to cache (the old name warns); older take only the old one
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        state: dict[str, Any] = {}

        def step(tokens: list[int]) -> np.ndarray:
            with torch.inference_mode():
                out = self.model(torch.tensor([tokens]), use_cache=True, logits_to_keep=1, **{name: state.get("cache")})
            state["cache"] = getattr(out, name)
            return out.logits[0, -1].double().numpy()

        return step


class LlamaCppEngine(Engine):
    def __init__(self, path: Path, n_ctx: int, rope: dict[str, Any] | None = None) -> None:
        from yarnconv.verify.llama_cpp import Sequence

        self.name = "llama.cpp"
        self.seq = Sequence(path, n_ctx, rope=rope)
        self.vocab = self.seq.vocab

    def session(self) -> Step:
        self.seq.reset()
        return self.seq.feed

    def close(self) -> None:
        self.seq.close()


def run_passkey(
    engines: dict[str, Engine],
    tokenize: Tokenize,
    decode: Callable[[int], str],
    lengths: list[int],
    *,
    trials: int = 2,
    seed: int = 0,
    minimum: float | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Check]:
    """Accuracy per model (extended, base), length and depth; gated only when ``minimum`` is given."""
    any_engine = next(iter(engines.values()))
    digits = digit_tokens(decode, any_engine.vocab)  # type: ignore[attr-defined]
    rows, per_length = [], []
    bar = progress_bar(len(engines) * len(lengths) * len(DEPTHS) * trials, progress, "passkey", unit="prompt")
    try:
        with bar:
            filler = _run_all(engines, tokenize, digits, lengths, trials, seed, rows, per_length, bar)
    finally:
        for engine in engines.values():
            engine.close()
    report = {"engine": any_engine.name, "filler": filler, "depths": list(DEPTHS), "rows": rows, "per_length": per_length}
    extended = [r for r in per_length if r["model"] == "extended"] or per_length
    measured = {"min_accuracy": min(r["accuracy"] for r in extended), **{f"accuracy_{r['length']}": r["accuracy"] for r in extended}}
    if minimum is None:
        return report, Check("passkey retrieval (informational)", "info", measured, reason="pass --passkey-min to gate on it")
    return report, judge("passkey retrieval", measured, (Bound("min_accuracy", ">=", minimum),))


def _run_all(
    engines: dict[str, Engine], tokenize: Tokenize, digits: dict[int, str], lengths: list[int], trials: int, seed: int, rows: list, per_length: list, bar: Any
) -> str:
    """Every prompt through every engine; returns where the filler came from."""
    for label, engine in engines.items():
        builder = PromptBuilder(tokenize, max(lengths), seed)  # the same keys and filler for every model
        for length in lengths:
            hits = 0
            for depth in DEPTHS:
                correct = 0
                for _ in range(trials):
                    p = builder.build(length, depth)
                    correct += greedy_digits(engine.session(), p.tokens, digits) == p.key
                    bar.update(1)
                low, high = wilson(correct, trials)
                rows.append({"model": label, "length": length, "depth": depth, "trials": trials, "correct": correct, "accuracy": correct / trials, "ci95": [low, high]})
                hits += correct
            n = trials * len(DEPTHS)
            low, high = wilson(hits, n)
            per_length.append({"model": label, "length": length, "trials": n, "accuracy": hits / n, "ci95": [low, high]})
    return builder.filler_source
