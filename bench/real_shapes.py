"""Checkpoints with the real shapes, config, shard layout and tokenizer of public 7-8B models.

Weights are random (bf16, normal with std 0.02, seeded), everything else is as the Hub publishes
it: config.json from tests/corpus (each file cites its Hub origin), shards of the Hub's size, and
the model's real tokenizer, rebuilt from the vocabulary-only GGUF files llama.cpp ships for its
tokenizer tests (``models/ggml-vocab-*.gguf``, vendored in llama-cpp-python's sdist). A rebuilt
tokenizer is checked against the test vectors beside it (``.gguf.inp`` / ``.gguf.out``), so both
llama.cpp's converter and yarnconv see the vocabulary a user's download has.

Shards are streamed tensor by tensor (memory stays at one tensor), so building a 15 GB checkpoint
needs little more memory than its largest tensor.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "corpus"


@dataclass(frozen=True)
class Shape:
    name: str
    corpus: str  # tests/corpus file holding the Hub config
    vocab: str  # llama.cpp vocab file name: ggml-vocab-<vocab>.gguf
    shard_bytes: int  # the Hub's shard size limit
    bias: bool  # q/k/v biases (Qwen2)


SHAPES = {
    # meta-llama/Llama-2-7b-hf: 2 shards (9.98 GB + 3.50 GB); the Hub's weights are float16, these bf16
    "llama-2-7b": Shape("llama-2-7b", "llama-2-7b.json", "llama-spm", 10_000_000_000, False),
    # Qwen/Qwen2.5-7B-Instruct: 4 shards of at most 3.95 GB; GQA 28/4, vocabulary 152064
    "qwen2.5-7b": Shape("qwen2.5-7b", "qwen2.5-7b-instruct.json", "qwen2", 4_000_000_000, True),
}


def config(shape: Shape) -> dict:
    cfg = json.loads((CORPUS / shape.corpus).read_text())["config"]
    return {**cfg, "torch_dtype": "bfloat16"}


def tensor_shapes(cfg: dict, bias: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes in the Hub's order (embeddings, layers, norm, head)."""
    h, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    kv_dim = h // heads * kv
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv_dim, h), p + "self_attn.v_proj.weight": (kv_dim, h)}
        if bias:
            out |= {p + "self_attn.q_proj.bias": (h,), p + "self_attn.k_proj.bias": (kv_dim,), p + "self_attn.v_proj.bias": (kv_dim,)}
        out |= {
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ffn, h),
            p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return out | {"model.norm.weight": (h,), "lm_head.weight": (vocab, h)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_shards(root: Path, shapes: dict[str, tuple[int, ...]], shard_bytes: int, seed: int = 0) -> int:
    """Stream random bf16 tensors into Hub-style shards plus the index; returns the bytes written."""
    import torch

    groups: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, shape in shapes.items():
        n = _numel(shape) * 2
        if groups[-1] and size + n > shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = shape
        size += n
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {}, 0
        for name, shape in group.items():
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + _numel(shape) * 2]}
            offset += _numel(shape) * 2
        raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in group.items():
                if name.endswith("norm.weight"):
                    t = torch.ones(shape, dtype=torch.bfloat16)
                else:
                    t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
                f.write(t.view(torch.int16).numpy().tobytes())
                weight_map[name] = fname
        total += 8 + len(raw) + offset
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


# --- tokenizers -------------------------------------------------------------------------------


def vocab_dir(cache: Path) -> Path:
    """llama.cpp's vocabulary test files, from the llama-cpp-python sdist matching the installed version."""
    out = cache / "vocab"
    if (out / "ggml-vocab-qwen2.gguf").is_file():
        return out
    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={llama_cpp.__version__}", "-d", tmp]
        subprocess.run(pip, check=True)
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as tar:
            members = [m for m in tar.getmembers() if "/models/ggml-vocab-" in m.name and any(v in m.name for v in ("llama-spm", "qwen2"))]
            out.mkdir(parents=True, exist_ok=True)
            for m in members:
                (out / Path(m.name).name).write_bytes(tar.extractfile(m).read())  # type: ignore[union-attr]
    return out


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, value: int | float | bytes) -> bytes:
    key = _varint(num << 3 | wire)
    if wire == 0:
        return key + _varint(int(value))
    if wire == 5:
        return key + struct.pack("<f", value)
    return key + _varint(len(value)) + value  # type: ignore[arg-type]


def sentencepiece_model(vocab_gguf: Path) -> bytes:
    """Llama 2's tokenizer.model (a SentencePiece ModelProto) from llama.cpp's llama-spm vocabulary.

    Field numbers from sentencepiece's sentencepiece_model.proto: pieces (1: piece, score, type),
    trainer_spec (2: model_type BPE, vocab_size, split_digits, byte_fallback, unk/bos/eos/pad ids),
    normalizer_spec (3: identity, dummy prefix, whitespace escaping), as Llama 2's file sets them.
    """
    from gguf import GGUFReader

    r = GGUFReader(vocab_gguf)
    tokens, scores, types = (r.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
    pieces = b"".join(_field(1, 2, _field(1, 2, t.encode()) + _field(2, 5, s) + _field(3, 0, ty)) for t, s, ty in zip(tokens, scores, types, strict=True))
    trainer = b"".join(_field(n, 0, v) for n, v in ((3, 2), (4, len(tokens)), (25, 1), (35, 1), (40, 0), (41, 1), (42, 2), (43, -1)))
    normalizer = _field(1, 2, b"identity") + _field(3, 0, 1) + _field(4, 0, 0) + _field(5, 0, 1)
    return pieces + _field(2, 2, trainer) + _field(3, 2, normalizer)


def _cases(vocab_gguf: Path) -> list[tuple[str, list[int]]]:
    texts = Path(f"{vocab_gguf}.inp").read_text().split("\n__ggml_vocab_test__\n")
    ids = Path(f"{vocab_gguf}.out").read_text().split("\n")
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids, strict=False)]


LLAMA2_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": None, "legacy": False, "clean_up_tokenization_spaces": False, "model_max_length": 4096,
}  # fmt: skip


def write_tokenizer(shape: Shape, root: Path, cache: Path, converter_python: Path) -> None:
    """The model's real tokenizer files, checked against llama.cpp's test vectors."""
    vocab = vocab_dir(cache) / f"ggml-vocab-{shape.vocab}.gguf"
    if shape.vocab == "llama-spm":
        import sentencepiece as spm

        (root / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
        sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
        bad = [t for t, ids in _cases(vocab) if sp.encode(t) != ids]
        (root / "tokenizer_config.json").write_text(json.dumps(LLAMA2_TOKENIZER_CONFIG, indent=2))
        # tokenizer.json as the Hub repo has it: transformers' conversion needs protobuf, which the converter's venv has
        code = "import sys; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[1])"
        subprocess.run([str(converter_python), "-c", code, str(root)], check=True, capture_output=True)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(vocab.parent, gguf_file=vocab.name)
        bad = [t for t, ids in _cases(vocab) if tok.encode(t, add_special_tokens=False) != ids]
        tok.save_pretrained(root)
    if bad:
        raise SystemExit(f"the rebuilt {shape.vocab} tokenizer disagrees with llama.cpp's test vectors on {len(bad)} texts, e.g. {bad[0]!r}")


def build(shape: Shape, root: Path, cache: Path, converter_python: Path) -> int:
    """The whole checkpoint directory (written under a temporary name, renamed at the end)."""
    if (root / "config.json").is_file():
        return sum(p.stat().st_size for p in root.glob("*.safetensors"))
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    tmp.mkdir(parents=True)
    cfg = config(shape)
    write_tokenizer(shape, tmp, cache, converter_python)
    size = write_shards(tmp, tensor_shapes(cfg, shape.bias), shape.shard_bytes)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(root)
    return size
