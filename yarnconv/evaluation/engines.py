"""The runtimes ``eval`` scores text in: transformers for an HF checkpoint, llama.cpp for a GGUF file,
and yarnconv's streaming reference forward when transformers cannot hold the model.

Each scorer runs one sequence from position 0 and returns the NLL (nats) of the tokens asked for,
each predicted from every token before it; only those rows of the output projection are computed,
so a 32k-token forward never holds a [32k, vocab] logit matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.errors import YarnconvError


def _nll(logits: Any, tokens: list[int], targets: list[int]) -> np.ndarray:
    """NLL of ``tokens[t]`` from the logit row that predicts it (rows in the order of ``targets``), in float64."""
    import torch

    lp = torch.log_softmax(logits.double(), dim=-1)
    return (-lp[torch.arange(len(targets)), torch.tensor([tokens[t] for t in targets])]).numpy()


class Scorer:
    name = ""

    def nll(self, tokens: list[int], targets: list[int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runtime holds."""


class TransformersScorer(Scorer):
    """The checkpoint as transformers loads it (its own config, so its own reading of the rope block)."""

    name = "transformers"

    def __init__(self, root: Path, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        logging.disable_progress_bar()  # eval's own bar shows the progress
        self.model = AutoModelForCausalLM.from_pretrained(root, dtype=getattr(torch, dtype))
        self.model.eval()

    def nll(self, tokens: list[int], targets: list[int]) -> np.ndarray:
        import torch

        rows = torch.tensor([t - 1 for t in targets])
        with torch.inference_mode():
            logits = self.model(torch.tensor([tokens]), use_cache=False, logits_to_keep=rows).logits[0]
        return _nll(logits, tokens, targets)


class ReferenceScorer(Scorer):
    """yarnconv's reference decoder (weights streamed layer by layer, attention over query chunks) with
    the row's rope: for models transformers cannot load here. ``spec_at(length)`` gives the rope of a
    sequence of that length (dynamic NTK's grows with it)."""

    name = "reference"

    def __init__(self, weights: Path, spec_at: Any) -> None:
        from yarnconv.verify.reference import ReferenceModel

        self.model, self.spec_at = ReferenceModel(weights), spec_at

    def nll(self, tokens: list[int], targets: list[int]) -> np.ndarray:
        logits = self.model.logits(tokens, keep=[t - 1 for t in targets], spec=self.spec_at(len(tokens)))
        return _nll(logits, tokens, targets)


# llama.cpp's rope scaling types (llama.h: LLAMA_ROPE_SCALING_TYPE_*)
LLAMA_ROPE = {"default": 0, "linear": 1, "yarn": 2}


class LlamaCppScorer(Scorer):
    """A GGUF file in llama.cpp, optionally with its rope replaced by context parameters (llama.cpp's own
    --rope-scaling, --rope-scale, --rope-freq-base, --yarn-* flags; docs/gguf.md §7): float32 KV
    cache, flash attention off (its CPU kernel rounds through f16), the whole sequence in one context."""

    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, rope: dict[str, Any] | None = None) -> None:
        from yarnconv.verify.llama_cpp import Sequence

        self.seq = Sequence(path, -(-n_ctx // 256) * 256, rope=rope, exact=True)

    def nll(self, tokens: list[int], targets: list[int]) -> np.ndarray:
        import torch

        seq = self.seq
        lib, b = seq.lib, seq.batch
        seq.reset()
        wanted, rows = {t - 1 for t in targets}, {}
        for start in range(0, len(tokens), seq.size):
            chunk = tokens[start : start + seq.size]
            b.n_tokens = len(chunk)
            for i, t in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, start + i, 1, int(start + i in wanted)
                b.seq_id[i][0] = 0
            if lib.llama_decode(seq.ctx, b) != 0:
                raise YarnconvError(f"llama.cpp could not decode positions {start}..{start + len(chunk) - 1}", "use shorter --lengths")
            for i in range(len(chunk)):
                if start + i in wanted:
                    rows[start + i] = np.ctypeslib.as_array(lib.llama_get_logits_ith(seq.ctx, i), shape=(seq.vocab,)).copy()
        return _nll(torch.from_numpy(np.stack([rows[t - 1] for t in targets])), tokens, targets)

    def close(self) -> None:
        self.seq.close()
