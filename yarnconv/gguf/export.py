"""HF checkpoint -> GGUF with YaRN metadata llama.cpp honours, streamed one row-chunk at a time.

Tensor bytes follow llama.cpp's converter exactly (shared/reference/gguf.md §5, §8): sources
that are not f16/f32 go through f32, Llama Q/K rows are re-paired for ggml's NORM rope, 1-D
tensors, norms and biases stay F32, everything else is encoded with gguf-py's ``quants`` (Q8_0
falls back to F16 where a row is not a multiple of 32). Rows are encoded in chunks, which gives
the same bytes because every output type is per-element or per-32-element block within a row,
and keeps peak memory near one chunk whatever the tensor size. Inputs are read with ``pread``
so nothing stays mapped (or counted in RSS) after a chunk is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    GGMLQuantizationType,
    GGUFValueType,
    GGUFWriter,
    LlamaFileType,
    QuantError,
    get_tensor_name_map,
    quant_shape_to_byte_shape,
    quants,
)
from gguf.metadata import Metadata
from gguf.utility import naming_convention, size_label

from yarnconv import __version__
from yarnconv.config import RopeBlock, read_config
from yarnconv.errors import YarnconvError
from yarnconv.gguf.file import PAD_KEY, RESERVE, read_header
from yarnconv.gguf.keys import ROPE_FREQS_ARCHS, KeyPlan, plan_keys, unencodable
from yarnconv.gguf.vocab import add_vocab
from yarnconv.storage.atomic import check_writable_parent, made_dirs, remove_empty, require_space, scratch_path, sweep_stale
from yarnconv.storage.files import CONFIG, read_json
from yarnconv.storage.progress import progress_bar
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

    def summary(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for t in self.tensors:
            types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
        return {
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


def plan_export(root: Path, config: dict[str, Any], outtype: str = "auto", *, route: str = "auto", name: str | None = None) -> ExportPlan:
    """Decide tensor names, types and keys from config.json and the safetensors headers alone."""
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
    first2d = next((t for _, t in tensors if len(t.shape) >= 2), None)
    if outtype == "auto":
        qtype = Q.BF16 if first2d is not None and first2d.dtype == "BF16" else Q.F16
    elif outtype in OUTTYPES:
        qtype = OUTTYPES[outtype]
    else:
        raise YarnconvError(f"unknown outtype {outtype!r}", f"choose one of {', '.join([*OUTTYPES, 'auto'])}")
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
    name_map = get_tensor_name_map(arch_enum, n_layers)
    out: list[OutTensor] = []
    if keys.rope_freqs is not None:
        out.append(OutTensor("rope_freqs.weight", Q.F32, keys.rope_freqs.shape, data=keys.rope_freqs))
    n_params = 0
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
        heads = None
        if repair and new.startswith("blk.") and (".attn_q." in new or ".attn_k." in new):
            heads = n_head if ".attn_q." in new else n_kv
        qt, note = _outtype_for(new, t.shape, qtype)
        if note:
            warnings.append(note)
        out.append(OutTensor(new, qt, t.shape, src=t, heads=heads))
        n_params += int(np.prod(t.shape))
    return ExportPlan(arch, qtype, out, keys, block, length, chosen, name or root.name, size_label(n_params, 0, 0, 0), n_params, warnings)


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


# ---------------------------------------------------------------------------------------- data


def _read_rows(t: TensorInfo, fd: int, row0: int, row1: int) -> np.ndarray:
    """Rows [row0, row1) of a tensor as f16 or f32 (the converter's working dtypes)."""
    cols = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    np_dtype = _ST_DTYPES[t.dtype]
    width = np.dtype(np_dtype).itemsize
    start = t.offset + row0 * cols * width
    raw = os.pread(fd, (row1 - row0) * cols * width, start)
    arr = np.frombuffer(raw, dtype=np_dtype)
    if t.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif t.dtype == "F64":
        arr = arr.astype(np.float32)
    rows_shape = (row1 - row0, *t.shape[1:]) if len(t.shape) > 1 else (row1 - row0,)
    return arr.reshape(rows_shape)


def _repair(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Llama Q/K: GGUF row 2j+a of each head is HF row a*(d/2)+j (gguf.md §5)."""
    n = rows.shape[0] // head_dim
    return rows.reshape(n, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _encode(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    try:
        return quants.quantize(rows, qtype)
    except QuantError as exc:  # planned types avoid this; keep the converter's behaviour if it happens
        raise AssertionError(f"yarnconv bug: {exc}") from None


def _chunks(t: OutTensor) -> list[tuple[int, int]]:
    assert t.src is not None
    rows = t.src.shape[0] if t.src.shape else 1
    row_bytes = 4 * (int(np.prod(t.src.shape[1:])) if len(t.src.shape) > 1 else 1)
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if t.heads:
        head_dim = rows // t.heads
        step = max(head_dim, step // head_dim * head_dim)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def _write_tensor(fout: Any, t: OutTensor, fds: dict[Path, int], bar: Any, alignment: int) -> None:
    pos = fout.tell()
    fout.write(b"\0" * (-pos % alignment))
    written = 0
    if t.data is not None:
        data = _encode(t.data, t.qtype)
        fout.write(data.tobytes())
        written = data.nbytes
    else:
        assert t.src is not None
        assert t.src.path is not None
        if t.src.path not in fds:
            fds[t.src.path] = os.open(t.src.path, os.O_RDONLY)
        fd = fds[t.src.path]
        for r0, r1 in _chunks(t):
            rows = _read_rows(t.src, fd, r0, r1)
            if t.heads:
                rows = _repair(rows, t.src.shape[0] // t.heads)
            data = _encode(rows, t.qtype)
            fout.write(data.tobytes())
            written += data.nbytes
            bar.update((r1 - r0) * (t.src.nbytes // max(t.src.shape[0] if t.src.shape else 1, 1)))
    if written != t.nbytes:
        raise AssertionError(f"yarnconv bug: {t.name} wrote {written} bytes, planned {t.nbytes}")
    fout.write(b"\0" * (-written % alignment))


# --------------------------------------------------------------------------------------- write


def _hparams(w: GGUFWriter, arch: str, text: dict[str, Any], plan: ExportPlan, view: Any) -> None:
    w.add_type("model")
    w.add_block_count(view.num_layers)
    w.add_embedding_length(text["hidden_size"])
    w.add_feed_forward_length(text["intermediate_size"])
    w.add_head_count(text["num_attention_heads"])
    w.add_head_count_kv(text.get("num_key_value_heads") or text["num_attention_heads"])
    w.add_rope_freq_base(plan.rope.theta)
    w.add_layer_norm_rms_eps(text.get("rms_norm_eps", 1e-6))
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    w.add_key_length(head_dim)  # the converter writes these from AutoConfig, which always has head_dim
    w.add_value_length(head_dim)
    if arch == "llama":
        w.add_vocab_size(text["vocab_size"])
        w.add_rope_dimension_count(view.rotary_dim)
    w.add_file_type(FILE_TYPE[plan.outtype])
    w.add_quantization_version(2)


def name_parts(plan: ExportPlan) -> dict[str, str | None]:
    """general.* naming fields, split from the model name the way llama.cpp's converter does."""
    _, _, basename, finetune, version, size = Metadata.get_model_id_components(plan.name, plan.n_params)
    if plan.rope.rope_type == "yarn":
        ctx = plan.context_length
        yarn = f"YaRN-{ctx // 1024}k" if ctx % 1024 == 0 else "YaRN"
        finetune = f"{finetune}-{yarn}" if finetune else yarn
    return {"basename": basename, "finetune": finetune, "version": version, "size_label": size or plan.size_label}


def default_filename(plan: ExportPlan) -> str:
    """llama.cpp's naming convention: <BaseName>-<SizeLabel>[-<FineTune>][-<Version>]-<Encoding>.gguf."""
    p = name_parts(plan)
    return naming_convention(plan.name, p["basename"], p["finetune"], p["version"], p["size_label"], plan.outtype.name) + ".gguf"


def export_gguf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    outtype: str = "auto",
    config: dict[str, Any] | None = None,
    route: str = "auto",
    pre_tokenizer: str | None = None,
    split_max_size: int = 0,
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the HF checkpoint at ``source`` to GGUF. ``config`` replaces config.json (extend --gguf)."""
    from yarnconv.storage.sources import resolve

    src = resolve(source)
    root = src.path
    raw = config if config is not None else read_json(root / CONFIG, CONFIG)
    view = read_config(raw)
    label = name or _model_name(root)
    plan = plan_export(root, raw, outtype, route=route, name=label)
    out = Path(output)
    if out.is_dir() or str(output).endswith(os.sep) or out.suffix != ".gguf":
        out = out / default_filename(plan)
    if out.absolute().parent.resolve() == root.resolve() or root.resolve() in out.absolute().resolve().parents:
        raise YarnconvError(f"the output {out} would be written into the input checkpoint {root}", "choose an -o outside the model directory")
    check_writable_parent(out)
    record: dict[str, Any] = {"source": str(root), **plan.summary()}
    w = GGUFWriter(None, plan.arch, split_max_size=split_max_size)
    w.add_name(label)
    for key, value in name_parts(plan).items():
        if value:
            getattr(w, f"add_{key}")(value)
    _hparams(w, plan.arch, view.text, plan, view)
    for k, (vtype, value) in plan.keys.sets.items():
        w.add_key_value(k, value, GGUFValueType(int(vtype)))
    n_vocab = int(view.text.get("vocab_size") or 0)
    record["vocab"] = add_vocab(w, root, n_vocab, pre_tokenizer=pre_tokenizer)
    w.add_string("yarnconv.version", __version__)
    w.add_string(PAD_KEY, " " * RESERVE)  # spare header room: later YaRN edits fit in place
    for t in plan.tensors:
        shape = quant_shape_to_byte_shape(t.shape, t.qtype) if t.qtype not in (Q.F32, Q.F16) else t.shape
        dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(t.qtype, np.uint8)
        w.add_tensor_info(t.name, shape, np.dtype(dtype), t.nbytes, raw_dtype=t.qtype)
    names = w.format_shard_names(out)
    record.update(output=str(names[0]), outputs=[str(p) for p in names])
    for p in names:
        if p.exists() and not force:
            raise YarnconvError(f"{p} already exists", "choose another -o or pass --force")
    if dry_run:
        return record
    created = made_dirs(out.parent)
    fds: dict[Path, int] = {}
    scratch = scratch_path(out.parent, "export")
    ok = False
    try:
        sweep_stale(out.parent)
        require_space(out.parent, sum(t.nbytes for t in plan.tensors) + 2 * RESERVE, "the GGUF file")
        scratch.mkdir()
        w.open_output_file(scratch / out.name)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        shard_of = [list(d) for d in w.tensors]
        by_name = {t.name: t for t in plan.tensors}
        with progress_bar(sum(t.src.nbytes for t in plan.tensors if t.src), progress, "export") as bar:
            for fout, names_in_shard in zip(w.fout, shard_of, strict=True):
                for tname in names_in_shard:
                    _write_tensor(fout, by_name[tname], fds, bar, w.data_alignment)
                fout.flush()
        w.close()
        for p in names:
            read_header(scratch / p.name)  # re-read what was written before it gets its final name
        for p in names[1:] + names[:1]:  # the first shard last: it is what users open
            os.replace(scratch / p.name, p)
        ok = True
    finally:
        for fd in fds.values():
            os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
        if not ok:
            remove_empty(created)
    return record


def _model_name(root: Path) -> str:
    source = root / "SOURCE.json"
    if source.is_file():
        data = read_json(source, "SOURCE.json")
        if isinstance(data, dict) and data.get("hub_id"):
            return str(data["hub_id"]).split("/")[-1]
    return root.name
