"""The probe every engine runs: the same token ids, at gapped positions.

Token ids are real text through the model's own tokenizer when it has one (``--text FILE``, or
else Python's own standard-library sources found on this machine at run time), otherwise seeded
random ids. Half the probe sits at positions 0.., half ends at the context's last position, so the
rope is exercised at every distance up to the target without a long sequence.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yarnconv.errors import YarnconvError

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Probe:
    tokens: list[int]
    positions: list[int]
    near: int  # tokens [0, near) sit at positions 0..near-1; the rest end at the last position
    source: str

    def summary(self) -> dict[str, object]:
        p, h = self.positions, self.near
        return {"tokens": len(self.tokens), "source": self.source, "positions": [p[0], p[h - 1], p[h], p[-1]]}


def machine_text(min_chars: int, seed: int = 0) -> tuple[str, str]:
    """Text found on this machine: Python standard-library sources, in a seeded order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4000)
    if not files:
        raise YarnconvError(f"no Python sources under {stdlib} to use as probe text", "pass --text FILE")
    order = np.random.default_rng(seed).permutation(len(files))
    parts, used, size = [], [], 0
    for i in order:
        text = files[i].read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        used.append(files[i].name)
        size += len(text)
        if size >= min_chars:
            break
    return "\n".join(parts), f"Python standard library sources ({', '.join(used[:3])}{', ...' if len(used) > 3 else ''})"


def text_tokens(tokenize: Tokenize, n: int, *, text_file: str | None = None, seed: int = 0) -> tuple[list[int], str]:
    """``n`` token ids of real text (the file, else machine text)."""
    if text_file:
        try:
            text = Path(text_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise YarnconvError(f"cannot read --text {text_file} ({exc.strerror})", "pass a readable UTF-8 text file") from None
        where = f"{Path(text_file).name}"
    else:
        text, where = machine_text(n * 8, seed)
    ids = tokenize(text)
    if len(ids) < n:
        if text_file:
            raise YarnconvError(f"--text {text_file} gives {len(ids)} tokens, the probe needs {n}", "pass a longer text, or a smaller --tokens")
        ids = (ids * (n // max(len(ids), 1) + 1))[:n]
    return ids[:n], where


def seeded_tokens(vocab: int, n: int, seed: int, bos: int | None) -> list[int]:
    ids = np.random.default_rng(seed).integers(0, vocab, n).tolist()
    if isinstance(bos, int) and 0 <= bos < vocab:
        ids[0] = bos
    return ids


def gapped(tokens: list[int], last: int, source: str) -> Probe:
    """Half the tokens at 0.., half ending at position ``last``."""
    n = len(tokens)
    head = n // 2
    far = max(last, n - 1)
    return Probe(tokens, list(range(head)) + list(range(far - (n - head) + 1, far + 1)), head, source)


def hf_tokenizer(root: Path) -> Tokenize | None:
    """The checkpoint's own tokenizer through transformers, or None when it has none."""
    if not any((root / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        tok = AutoTokenizer.from_pretrained(root)
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party loader is the input's problem here
        raise YarnconvError(f"the tokenizer in {root} fails to load ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", "fix or remove its tokenizer files, or verify with seeded ids (--seeded)") from None
    return lambda text: list(tok(text, verbose=False)["input_ids"])  # verbose: no warning about text past the model's length


def gguf_tokenizer(path: Path) -> Tokenize | None:
    """llama.cpp's tokenizer for a GGUF file (vocabulary only), or None without llama-cpp-python."""
    from yarnconv.verify import llama_cpp

    if not llama_cpp.available():
        return None
    return lambda text: llama_cpp.tokenize(path, text)
