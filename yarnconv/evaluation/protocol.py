"""The perplexity protocol ``eval`` runs: sliding windows with a stride, the YaRN paper's (§4.1, after
Press et al.'s sliding-window evaluation, S = 256), stated exactly so a number can be recomputed by hand.

For a context length L, stride S and W windows per document: window k is the document's tokens
[k·S, k·S + L), run on its own from position 0; it scores its last S tokens, i.e. the tokens at window
offsets t in [L - S, L), each predicted from the t tokens before it in the window. So every scored
token sees between L - S and L - 1 tokens of context, and the W windows together score the document's
tokens [L - S, L - S + W·S) once each. Perplexity at L = exp(mean NLL over the scored tokens of every
window of every document).

A rope that does not depend on the sequence length (plain, linear, YaRN, Llama 3) gives window
[k·S, k·S + L) the same logits as the first L tokens of the window [k·S, k·S + L_max), because
attention is causal and positions start at 0 in both: one forward of L_max tokens per window start
serves every length. Dynamic NTK (and LongRoPE) changes every frequency with the sequence length, so
it runs one forward per length (``per_length``). Pure: no torch, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from yarnconv.errors import UsageError, YarnconvError

LENGTH_DEPENDENT = ("dynamic", "longrope")  # rope types whose frequencies follow the sequence length


def parse_lengths(text: str) -> list[int]:
    """``2k,4k,32k`` (k = 1024) or plain token counts (as ``verify --lengths``), sorted, without repeats."""
    from yarnconv.verify.passkey import parse_lengths as lengths_in_order

    out = lengths_in_order(text)
    if 0 in out:
        raise UsageError(f"--lengths {text!r}: 0 is not a length", "write lengths like 2k,8k,32k or 4096")
    return sorted(set(out))


def default_lengths(original: int, context: int) -> list[int]:
    """A ladder from a quarter of the original length, doubling, to the new context (itself included)."""
    out, length = [], max(original // 4, 256)
    while length < context:
        out.append(length)
        length *= 2
    return [*out, context]


@dataclass(frozen=True)
class Protocol:
    lengths: tuple[int, ...]  # ascending
    stride: int = 256
    windows: int = 1  # per length and document

    def __post_init__(self) -> None:
        if self.stride < 1 or self.windows < 1:
            raise UsageError(f"--stride {self.stride} and --windows {self.windows} must be positive", "use e.g. --stride 256 --windows 1")
        if self.stride >= self.lengths[0]:
            raise UsageError(f"--stride {self.stride} is not below the shortest length {self.lengths[0]}", "use a smaller --stride, or drop the short lengths")

    @property
    def needed(self) -> int:
        """Tokens a document must have for every window of the longest length."""
        return self.lengths[-1] + (self.windows - 1) * self.stride

    def targets(self, length: int) -> range:
        """Window offsets of the tokens scored at ``length``."""
        return range(length - self.stride, length)

    def forwards(self, per_length: bool) -> list[tuple[int, int, list[int]]]:
        """(start, span, lengths served) for each forward over a document, in running order: one per
        window start serving every length, or, ``per_length``, one per window and length, lengths ascending
        (transformers' dynamic rope only grows within a loaded model)."""
        starts = [k * self.stride for k in range(self.windows)]
        if per_length:
            return [(b, length, [length]) for length in self.lengths for b in starts]
        return [(b, self.lengths[-1], list(self.lengths)) for b in starts]

    def definition(self) -> str:
        return (
            f"sliding windows of L tokens with stride {self.stride}, {self.windows} per document: window k covers tokens "
            f"[k*{self.stride}, k*{self.stride} + L), starts at position 0 and scores its last {self.stride} tokens, "
            f"each seeing {{L-{self.stride} .. L-1}} tokens of context; ppl = exp(mean NLL over the scored tokens)"
        )


def check_documents(sizes: dict[str, int], protocol: Protocol) -> list[str]:
    """The documents long enough for every window; one line naming the problem when none is."""
    usable = [name for name, n in sizes.items() if n >= protocol.needed]
    if not usable:
        longest = max(sizes.values(), default=0)
        raise YarnconvError(
            f"the text is {longest} tokens long at most, and length {protocol.lengths[-1]} with {protocol.windows} window(s) of stride {protocol.stride} needs {protocol.needed}",
            "pass a longer --text, fewer --windows, or shorter --lengths",
        )
    return usable


@dataclass
class Tally:
    """The NLL of every scored token, per length, for one row."""

    nll: dict[int, list[float]]

    @classmethod
    def empty(cls, lengths: tuple[int, ...]) -> Tally:
        return cls({length: [] for length in lengths})

    def ppl(self, length: int) -> float:
        values = self.nll[length]
        return math.exp(float(np.mean(values))) if values else float("nan")

    def interval(self, length: int, *, seed: int = 0) -> tuple[float, float]:
        """A 95% percentile-bootstrap interval over the scored tokens (verify's ``bootstrap_mean``; the
        tokens are not independent, so it is a lower bound on the uncertainty)."""
        from yarnconv.verify.stats import bootstrap_mean

        if len(self.nll[length]) < 2:
            return float("nan"), float("nan")
        _, low, high = bootstrap_mean(np.asarray(self.nll[length]), seed=seed)
        return math.exp(low), math.exp(high)

    def against(self, other: Tally, length: int, *, seed: int = 0) -> dict[str, Any]:
        """This row's perplexity over another's on the same scored tokens: exp(mean NLL difference), with a
        95% paired bootstrap interval (the text's own difficulty cancels, so it is far narrower than
        either row's own interval)."""
        from yarnconv.verify.stats import bootstrap_mean

        diff = np.asarray(self.nll[length], dtype=np.float64) - np.asarray(other.nll[length], dtype=np.float64)
        if len(diff) < 2:
            return {"ppl_ratio": None, "ci95": [None, None]}
        mean, low, high = bootstrap_mean(diff, seed=seed)
        return {"ppl_ratio": round(math.exp(mean), 4), "ci95": [round(math.exp(low), 4), round(math.exp(high), 4)]}
