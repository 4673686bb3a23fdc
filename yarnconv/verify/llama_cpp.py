"""llama.cpp as a verify engine, through llama-cpp-python's C API, at long rope distances.

llama.cpp's batch rules (``llama_batch_allocr::init``): within one decode a sequence's positions
must be continuous, and a sequence that already holds tokens must go on at its last position + 1;
an empty sequence may start anywhere. So a gapped probe (near tokens at 0.., far tokens ending at
the context's last position) is run as three decodes:

1. the near tokens in sequence 0 at positions 0..h-1;
2. the first far token alone in the empty sequence 1, at its large position;
3. sequence 0's cells shared into sequence 1 (``llama_memory_seq_cp``, one unified cache), then the
   other far tokens in sequence 1, which see the near tokens across the full distance.

The first far token therefore attends only to itself; the reference is told so (``alone``). The
KV cache is float32 and flash attention off (llama.cpp's CPU kernel rounds it through f16), so an
f32 GGUF matches the reference to float32 rounding; what is left grows with the position, from
llama.cpp forming each pair's angle by repeated float32 products.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from yarnconv.errors import YarnconvError


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _quiet(lib: Any) -> Any:
    """A log callback that drops llama.cpp's chatter (kept referenced while the library lives)."""

    @lib.llama_log_callback
    def drop(level: int, text: bytes, user: Any) -> None:
        return None

    lib.llama_log_set(drop, ctypes.c_void_p(0))
    return drop


_CALLBACK: Any = None


def _lib() -> Any:
    """llama-cpp-python, with llama.cpp's logging silenced once."""
    global _CALLBACK
    import llama_cpp as lib

    if _CALLBACK is None:
        _CALLBACK = _quiet(lib)
    return lib


def gapped_logits(path: str | os.PathLike[str], near: list[int], far: list[int], far_start: int, *, threads: int | None = None) -> np.ndarray:
    """llama.cpp's logits for ``near`` at 0..len(near)-1 then ``far`` at ``far_start``.. (see module doc);
    with ``far`` empty, one ordinary sequence. Returns [len(near) + len(far), vocab] float64."""
    lib = _lib()
    if far and far_start <= len(near) - 1:
        raise ValueError("far tokens must start after the near ones")
    mp = lib.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(str(Path(path)).encode(), mp)
    if not model:
        raise YarnconvError(f"llama.cpp could not load {Path(path).name}", "run `yarnconv inspect` on it; is it a complete GGUF of an architecture your llama-cpp-python knows?")
    total = len(near) + len(far)
    cp = lib.llama_context_default_params()
    cp.n_ctx = max(256, -(-total // 256) * 256)
    cp.n_batch = cp.n_ubatch = max(total, 1)
    cp.n_seq_max = 2
    cp.kv_unified = True
    cp.type_k = cp.type_v = lib.GGML_TYPE_F32
    cp.flash_attn_type = 0  # disabled: llama.cpp's CPU flash attention rounds through f16
    cp.n_threads = cp.n_threads_batch = threads or os.cpu_count() or 2
    ctx = lib.llama_init_from_model(model, cp)
    if not ctx:
        lib.llama_model_free(model)
        raise YarnconvError(f"llama.cpp could not create a context for {Path(path).name}", "is there memory for a float32 cache of the probe?")
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
    batch = lib.llama_batch_init(max(total, 1), 0, 1)
    rows: list[np.ndarray] = []
    try:

        def decode(tokens: list[int], start: int, seq: int) -> None:
            batch.n_tokens = len(tokens)
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, start + i, 1, 1
                batch.seq_id[i][0] = seq
            if lib.llama_decode(ctx, batch) != 0:
                raise YarnconvError(f"llama.cpp refused the probe at positions {start}..{start + len(tokens) - 1}", "report this as a yarnconv bug")
            for i in range(len(tokens)):
                rows.append(np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).astype(np.float64))

        decode(near, 0, 0)
        if far:
            decode(far[:1], far_start, 1)
            lib.llama_memory_seq_cp(lib.llama_get_memory(ctx), 0, 1, -1, -1)
            if len(far) > 1:
                decode(far[1:], far_start + 1, 1)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    return np.stack(rows)


def tokenize(path: str | os.PathLike[str], text: str) -> list[int]:
    """``text`` through the GGUF's own tokenizer (BOS added where the file says so)."""
    lib = _lib()
    mp = lib.llama_model_default_params()
    mp.vocab_only = True
    model = lib.llama_model_load_from_file(str(Path(path)).encode(), mp)
    if not model:
        raise YarnconvError(f"llama.cpp could not read the vocabulary of {Path(path).name}", "verify with seeded ids (--seeded)")
    try:
        vocab = lib.llama_model_get_vocab(model)
        data = text.encode("utf-8")
        cap = len(data) + 16
        out = (lib.llama_token * cap)()
        n = lib.llama_tokenize(vocab, data, len(data), out, cap, True, False)
        if n < 0:
            raise YarnconvError(f"llama.cpp's tokenizer failed on the probe text of {Path(path).name}", "verify with seeded ids (--seeded)")
        return list(out[:n])
    finally:
        lib.llama_model_free(model)


class Sequence:
    """One sequence decoded incrementally (passkey answers): ``feed`` returns the last token's logits.
    ``rope``: llama_context_params fields that replace the file's rope (llama.cpp's --rope-* flags);
    ``exact``: a float32 KV cache and flash attention off (its CPU kernel rounds through f16), as verify runs it."""

    def __init__(self, path: str | os.PathLike[str], n_ctx: int, *, batch: int = 512, rope: dict[str, Any] | None = None, exact: bool = False) -> None:
        lib = self.lib = _lib()
        mp = lib.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(str(Path(path)).encode(), mp)
        if not self.model:
            raise YarnconvError(f"llama.cpp could not load {Path(path).name}", "run `yarnconv inspect` on it")
        cp = lib.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, batch, batch
        cp.n_threads = cp.n_threads_batch = os.cpu_count() or 2
        if exact:
            cp.type_k = cp.type_v = lib.GGML_TYPE_F32
            cp.flash_attn_type = 0
        for key, value in (rope or {}).items():
            setattr(cp, key, value)
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise YarnconvError(f"llama.cpp could not create a {n_ctx}-token context for {Path(path).name}", "is there memory for its KV cache? use shorter --lengths")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.batch, self.size, self.pos = lib.llama_batch_init(batch, 0, 1), batch, 0

    def reset(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self.pos = 0

    def feed(self, tokens: list[int]) -> np.ndarray:
        b = self.batch
        for start in range(0, len(tokens), self.size):
            chunk = tokens[start : start + self.size]
            b.n_tokens = len(chunk)
            for i, t in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, self.pos + i, 1, int(i == len(chunk) - 1)
                b.seq_id[i][0] = 0
            if self.lib.llama_decode(self.ctx, b) != 0:
                raise YarnconvError(f"llama.cpp could not decode at position {self.pos}", "use shorter --lengths")
            self.pos += len(chunk)
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, -1), shape=(self.vocab,)).astype(np.float64)

    def detokenize(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.lib.llama_model_get_vocab(self.model), token, buf, 64, 0, False)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)
