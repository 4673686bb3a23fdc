"""Plan an HF -> GGUF export before a byte is written: tensor map, types and shards, naming,
hyperparameters, rope keys, vocabulary and output paths.

Only config.json, the safetensors headers and the tokenizer files are read. The rules follow
llama.cpp's converter (docs/gguf.md §5): sources that are not f16/f32 go through
f32, Llama Q/K rows are re-paired for ggml's NORM rope, 1-D tensors, norms and biases stay F32,
Q8_0 falls back to F16 where a row is not a multiple of 32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from gguf import GGML_QUANT_SIZES, MODEL_ARCH, SHARD_NAME_FORMAT, GGMLQuantizationType, LlamaFileType, get_tensor_name_map
from gguf.metadata import Metadata
from gguf.utility import naming_convention, size_label

from yarnconv.config import ConfigView, RopeBlock, read_config
from yarnconv.errors import YarnconvError
from yarnconv.gguf.keys import ROPE_FREQS_ARCHS, KeyPlan, plan_keys, unencodable
from yarnconv.gguf.vocab import VocabPlan, plan_vocab
from yarnconv.storage.atomic import check_writable_parent
from yarnconv.storage.files import read_json
from yarnconv.storage.weights import TensorInfo, scan_weights

Q = GGMLQuantizationType
OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPE = {
    Q.F32: LlamaFileType.ALL_F32,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
}
# HF model_type -> (GGUF arch, gguf-py arch enum, Llama Q/K re-pairing)
ARCHS = {
    "llama": ("llama", MODEL_ARCH.LLAMA, True),
    "mistral": ("llama", MODEL_ARCH.LLAMA, True),
    "qwen2": ("qwen2", MODEL_ARCH.QWEN2, False),
    "qwen3": ("qwen3", MODEL_ARCH.QWEN3, False),
}
SKIP_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
CHUNK_BYTES = 32 * 1024 * 1024  # f32 working set per chunk
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass
class OutTensor:
    """One GGUF tensor to write: its source, name, type and how to transform it."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    src: TensorInfo | None = None
    heads: int | None = None  # re-pair rows within groups of this many heads (Llama Q/K)
    data: np.ndarray | None = None  # generated tensors (rope_freqs)
    note: str | None = None

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block * size


@dataclass
class ExportPlan:
    """Everything decided before a byte is written."""

    arch: str
    outtype: GGMLQuantizationType
    tensors: list[OutTensor]
    keys: KeyPlan
    rope: RopeBlock
    context_length: int
    route: str
    name: str
    size_label: str
    n_params: int
    warnings: list[str] = field(default_factory=list)
    general: dict[str, str] = field(default_factory=dict)  # general.* naming, by gguf-py's add_<key> helpers
    hparams: dict[str, Any] = field(default_factory=dict)  # model hyperparameters, the same way
    vocab: VocabPlan | None = None
    shards: list[list[str]] = field(default_factory=list)  # tensor names per output file
    split_max_size: int = 0
    output_base: Path = Path()  # the name shard names derive from
    outputs: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for t in self.tensors:
            types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
        out: dict[str, Any] = {
            "architecture": self.arch,
            "outtype": self.outtype.name,
            "tensors": len(self.tensors),
            "tensor_types": types,
            "parameters": self.n_params,
            "size_label": self.size_label,
            "context_length": self.context_length,
            "rope": self.rope.to_dict(),
            "rope_route": self.route,
            "gguf_keys": self.keys.summary(),
            "bytes": sum(t.nbytes for t in self.tensors),
            "warnings": self.warnings,
        }
        if self.outputs:
            out.update(output=str(self.outputs[0]), outputs=[str(p) for p in self.outputs])
        if self.vocab is not None:
            out["vocab"] = self.vocab.info
        return out


def source_tensors(root: Path) -> list[tuple[str, TensorInfo]]:
    """Every safetensors tensor of the checkpoint, by name (headers validated, no data read)."""
    weights = scan_weights(root)
    if not weights.files:
        raise YarnconvError(f"no safetensors weights in {root}", "export needs model.safetensors (or an index and shards)")
    return sorted(weights.tensors.items())


def _outtype_for(name: str, shape: tuple[int, ...], outtype: GGMLQuantizationType) -> tuple[GGMLQuantizationType, str | None]:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32, None
    if outtype == Q.Q8_0 and shape[-1] % 32:
        return Q.F16, f"{name}: row length {shape[-1]} is not a multiple of 32, written as F16 (as llama.cpp's converter does)"
    return outtype, None


def plan_export(
    root: Path,
    config: dict[str, Any],
    outtype: str = "auto",
    *,
    route: str = "auto",
    name: str | None = None,
    pre_tokenizer: str | None = None,
    split_max_size: int = 0,
    output: str | os.PathLike[str] | None = None,
) -> ExportPlan:
    """Decide everything from config.json, the safetensors headers and the tokenizer files alone:
    tensor names, types and shards, naming, hyperparameters, rope keys, vocabulary, output paths."""
    view = read_config(config)
    mt = view.model_type or "?"
    if mt not in ARCHS:
        raise YarnconvError(
            f"yarnconv exports llama, mistral, qwen2 and qwen3 checkpoints, not {mt!r}",
            "convert with llama.cpp's convert_hf_to_gguf.py, then patch YaRN in with: yarnconv extend FILE.gguf --scale S -o NEW.gguf",
        )
    arch, arch_enum, repair = ARCHS[mt]
    text = view.text
    if view.nested:
        raise YarnconvError("per-layer-type rope_parameters cannot be exported", "export a model with a single rope block")
    n_layers = view.num_layers or 0
    n_head, n_kv = text.get("num_attention_heads"), text.get("num_key_value_heads") or text.get("num_attention_heads")
    if not n_layers or not n_head:
        raise YarnconvError("config.json lacks num_hidden_layers or num_attention_heads", "is this a decoder-only transformer config?")
    tensors = source_tensors(root)
    qtype = _qtype(outtype, tensors)
    block = view.rope
    if block.rope_type not in ("default", "yarn", "linear"):
        raise YarnconvError(
            f"{block.rope_type!r} RoPE scaling has no GGUF encoding in yarnconv", "export a yarn, linear or unscaled config"
        )
    dim = view.rotary_dim or view.head_dim or 0
    length = view.max_position or 0
    warnings: list[str] = []
    if block.rope_type == "yarn" and block.factor and block.original_context:
        want = round(block.original_context * block.factor)
        if length != want:
            warnings.append(f"max_position_embeddings is {length} but original x factor is {want}; context_length written as {want}")
        length = want
    chosen = _route(arch, block, route, warnings)
    keys = plan_keys(arch, block, length, dim, route=chosen)
    warnings += keys.warnings
    out = [OutTensor("rope_freqs.weight", Q.F32, keys.rope_freqs.shape, data=keys.rope_freqs)] if keys.rope_freqs is not None else []
    out += _out_tensors(tensors, get_tensor_name_map(arch_enum, n_layers), arch, qtype, (n_head, n_kv) if repair else None, warnings)
    n_params = sum(int(np.prod(t.shape)) for t in out if t.src is not None)
    plan = ExportPlan(arch, qtype, out, keys, block, length, chosen, name or _model_name(root), size_label(n_params, 0, 0, 0), n_params, warnings)
    plan.general = {"name": plan.name, **{k: v for k, v in name_parts(plan).items() if v}}
    plan.hparams = _hparams(arch, text, plan, view)
    plan.vocab = plan_vocab(root, int(text.get("vocab_size") or 0), pre_tokenizer=pre_tokenizer)
    plan.shards, plan.split_max_size = [[t.name for t in s] for s in shard_groups(out, split_max_size)], split_max_size
    if output is not None:
        plan.output_base = _output_path(root, output, plan)
        plan.outputs = shard_names(plan.output_base, len(plan.shards))
    return plan


def _qtype(outtype: str, tensors: list[tuple[str, Any]]) -> Any:
    """The GGUF type of the matrices: ``auto`` keeps bf16 weights bf16, else f16."""
    first2d = next((t for _, t in tensors if len(t.shape) >= 2), None)
    if outtype == "auto":
        return Q.BF16 if first2d is not None and first2d.dtype == "BF16" else Q.F16
    if outtype in OUTTYPES:
        return OUTTYPES[outtype]
    raise YarnconvError(f"unknown outtype {outtype!r}", f"choose one of {', '.join([*OUTTYPES, 'auto'])}")


def _out_tensors(tensors: list[tuple[str, Any]], name_map: Any, arch: str, qtype: Any, heads: tuple[int, int] | None, warnings: list[str]) -> list[OutTensor]:
    """Each source tensor under its GGUF name and type; ``heads`` (query, key-value) when Q/K rows are re-paired."""
    out = []
    for src_name, t in tensors:
        if src_name.endswith(SKIP_SUFFIXES):
            continue
        if t.dtype not in _ST_DTYPES:
            raise YarnconvError(f"tensor {src_name} has dtype {t.dtype}", "export needs F32, F16, BF16 or F64 weights (dequantise first)")
        new = name_map.get_name(src_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise YarnconvError(
                f"cannot map tensor {src_name} to a GGUF name for {arch}",
                "this checkpoint has parts yarnconv does not export; convert with llama.cpp, then patch with yarnconv",
            )
        n = None
        if heads and new.startswith("blk.") and (".attn_q." in new or ".attn_k." in new):
            n = heads[0] if ".attn_q." in new else heads[1]
        qt, note = _outtype_for(new, t.shape, qtype)
        if note:
            warnings.append(note)
        out.append(OutTensor(new, qt, t.shape, src=t, heads=n))
    return out


def _route(arch: str, block: RopeBlock, route: str, warnings: list[str]) -> str:
    """keys (llama.cpp's YaRN keys) or freqs (an exact rope_freqs.weight tensor, llama-family graphs only)."""
    if route not in ("auto", "keys", "freqs"):
        raise YarnconvError(f"unknown rope route {route!r}", "choose auto, keys or freqs")
    lost = unencodable(arch, block)
    if route == "freqs":
        if arch not in ROPE_FREQS_ARCHS:
            raise YarnconvError(f"llama.cpp's {arch} graph does not read rope_freqs.weight", "use --gguf-rope keys")
        if block.rope_type != "yarn":
            raise YarnconvError("--gguf-rope freqs needs a YaRN config", "extend the model first, or use --gguf-rope keys")
        return "freqs"
    if route == "auto" and lost and arch in ROPE_FREQS_ARCHS:
        warnings.append(f"{'; '.join(lost)} cannot be written as YaRN keys; wrote an exact rope_freqs.weight tensor instead")
        return "freqs"
    return "keys"


def _hparams(arch: str, text: dict[str, Any], plan: ExportPlan, view: ConfigView) -> dict[str, Any]:
    """Hyperparameters in the order llama.cpp's converter writes them (keyed by gguf-py's add_<name>)."""
    out: dict[str, Any] = {
        "type": "model",
        "block_count": view.num_layers,
        "embedding_length": text["hidden_size"],
        "feed_forward_length": text["intermediate_size"],
        "head_count": text["num_attention_heads"],
        "head_count_kv": text.get("num_key_value_heads") or text["num_attention_heads"],
        "rope_freq_base": plan.rope.theta,
        "layer_norm_rms_eps": text.get("rms_norm_eps", 1e-6),
        "key_length": view.head_dim,  # the converter writes these from AutoConfig, which always has head_dim
        "value_length": view.head_dim,
    }
    if arch == "llama":
        out["vocab_size"] = text["vocab_size"]
        out["rope_dimension_count"] = view.rotary_dim
    out["file_type"] = FILE_TYPE[plan.outtype]
    out["quantization_version"] = 2
    return out


class _HasBytes(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=_HasBytes)


def shard_groups(tensors: Sequence[T], split_max_size: int) -> list[list[T]]:
    """Tensors per file, split the way gguf-py's writer splits: a new file when the next tensor would
    pass the limit (one larger than the limit gets a file of its own); 0: one file."""
    shards: list[list[T]] = [[]]
    for t in tensors:
        if shards[-1] and split_max_size and sum(x.nbytes for x in shards[-1]) + t.nbytes > split_max_size:
            shards.append([])
        shards[-1].append(t)
    return shards


def shard_names(base: Path, count: int) -> list[Path]:
    """llama.cpp's names for ``count`` files of ``base`` (``base`` itself when there is one)."""
    return [base] if count == 1 else [base.with_name(SHARD_NAME_FORMAT.format(base.stem, i + 1, count)) for i in range(count)]


def _output_path(root: Path, output: str | os.PathLike[str], plan: ExportPlan) -> Path:
    """The file, or a llama.cpp-named file in a directory; never inside the input."""
    out = Path(output)
    if out.is_dir() or os.fspath(output).endswith(os.sep) or out.suffix != ".gguf":
        out = out / default_filename(plan)
    if out.absolute().parent.resolve() == root.resolve() or root.resolve() in out.absolute().resolve().parents:
        raise YarnconvError(f"the output {out} would be written into the input checkpoint {root}", "choose an -o outside the model directory")
    check_writable_parent(out)
    return out


def name_parts(plan: ExportPlan) -> dict[str, str | None]:
    """general.* naming fields, split from the model name the way llama.cpp's converter does."""
    _, _, basename, finetune, version, size = Metadata.get_model_id_components(plan.name, plan.n_params)
    if plan.rope.rope_type == "yarn":
        ctx = plan.context_length
        yarn = f"YaRN-{ctx // 1024}k" if ctx % 1024 == 0 else "YaRN"
        finetune = f"{finetune}-{yarn}" if finetune else yarn
    return {"basename": basename, "finetune": finetune, "version": version, "size_label": size or plan.size_label}


def default_filename(plan: ExportPlan, encoding: str | None = None) -> str:
    """llama.cpp's naming convention: <BaseName>-<SizeLabel>[-<FineTune>][-<Version>]-<Encoding>.gguf."""
    p = name_parts(plan)
    return naming_convention(plan.name, p["basename"], p["finetune"], p["version"], p["size_label"], encoding or plan.outtype.name) + ".gguf"


def _model_name(root: Path) -> str:
    source = root / "SOURCE.json"
    if source.is_file():
        data = read_json(source, "SOURCE.json")
        if isinstance(data, dict) and data.get("hub_id"):
            return str(data["hub_id"]).split("/")[-1]
    return root.name
