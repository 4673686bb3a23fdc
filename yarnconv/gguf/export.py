"""Write a planned HF -> GGUF export through gguf-py's public writer API, one row-chunk at a time.

:mod:`yarnconv.gguf.export_plan` decides everything first; here the plan's metadata goes through
``GGUFWriter``'s ``add_*`` helpers and each tensor is handed to ``add_tensor`` as a streamed
array whose ``tofile`` reads, re-pairs and encodes its rows in chunks (the way llama.cpp's
converter hands over lazy tensors). Encoding in chunks gives the same bytes, because every output
type is per-element or per-32-element block within a row, and keeps peak memory near one chunk
whatever the tensor size. Inputs are read with ``pread`` so nothing stays mapped (or counted in
RSS) after a chunk is written.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, QuantError, quant_shape_to_byte_shape, quants

from yarnconv import __version__
from yarnconv.errors import UsageError, YarnconvError
from yarnconv.gguf.export_plan import _ST_DTYPES, ExportPlan, OutTensor, Q, plan_export
from yarnconv.gguf.file import PAD_KEY, RESERVE, read_header
from yarnconv.gguf.keys import check_written_keys
from yarnconv.storage.atomic import atomic_files, check_new_files, require_space
from yarnconv.storage.files import CONFIG, read_json
from yarnconv.storage.progress import progress_bar
from yarnconv.storage.weights import TensorInfo

CHUNK_BYTES = 32 * 1024 * 1024  # f32 working set per chunk


def _read_rows(t: TensorInfo, fd: int, row0: int, row1: int, *, raw: bool = False) -> np.ndarray:
    """Rows [row0, row1) of a tensor as f16 or f32 (the converter's working dtypes), or with ``raw``
    as stored (bf16 as uint16 bits)."""
    cols = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    np_dtype = _ST_DTYPES[t.dtype]
    width = np.dtype(np_dtype).itemsize
    start = t.offset + row0 * cols * width
    data = os.pread(fd, (row1 - row0) * cols * width, start)
    arr = np.frombuffer(data, dtype=np_dtype)
    if raw:
        pass
    elif t.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif t.dtype == "F64":
        arr = arr.astype(np.float32)
    rows_shape = (row1 - row0, *t.shape[1:]) if len(t.shape) > 1 else (row1 - row0,)
    return arr.reshape(rows_shape)


def _repair(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Llama Q/K: GGUF row 2j+a of each head is HF row a*(d/2)+j (docs/gguf.md §5)."""
    n = rows.shape[0] // head_dim
    return rows.reshape(n, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


# source dtype -> the GGUF type that stores it unchanged: such tensors are copied, not re-encoded
SAME = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}


def _quiet_nans(bits: np.ndarray) -> np.ndarray:
    """bf16 bits as gguf-py's BF16 encoder leaves them: a signalling NaN gets its quiet bit, all else
    is unchanged (bf16 -> f32 -> bf16 rounds nothing)."""
    magnitude = bits & np.uint16(0x7FFF)
    if bits.size == 0 or magnitude.max() <= 0x7F80:  # no NaN at all: the common case, one pass
        return bits
    return np.where(magnitude > 0x7F80, bits | np.uint16(0x0040), bits)


@functools.cache
def _bf16_f16_table() -> np.ndarray:
    """numpy's f16 for every bf16 bit pattern (bf16 -> f32 is exact, f32 -> f16 rounds to nearest even)."""
    with np.errstate(over="ignore"):  # bf16 beyond f16's range becomes inf, as in the converter
        return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32).astype(np.float16)


def _bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    """bf16 bits -> f16 with numpy's bytes (NaN payloads too), by table: one gather instead of a
    shift and a conversion through f32, which at 7B was the F16 write's CPU time (docs/gguf.md §8)."""
    return _bf16_f16_table()[bits]


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


class StreamedTensor:
    """What ``GGUFWriter.add_tensor`` needs of an array (dtype, shape, nbytes, tofile), with the
    data produced chunk by chunk from the source file when the writer asks for it."""

    def __init__(self, t: OutTensor, bar: Any) -> None:
        self.t, self.bar = t, bar
        self.dtype = np.dtype({Q.F32: np.float32, Q.F16: np.float16}.get(t.qtype, np.uint8))
        self.shape = quant_shape_to_byte_shape(t.shape, t.qtype) if self.dtype == np.uint8 else t.shape
        self.nbytes = t.nbytes

    def tofile(self, fout: Any) -> None:
        t, written = self.t, 0
        if t.data is not None:
            data = _encode(t.data, t.qtype)
            fout.write(data.tobytes())
            written = data.nbytes
        else:
            assert t.src is not None and t.src.path is not None
            fd = os.open(t.src.path, os.O_RDONLY)
            try:
                same = SAME.get(t.src.dtype) == t.qtype
                halve = t.src.dtype == "BF16" and t.qtype == Q.F16
                for r0, r1 in _chunks(t):
                    rows = _read_rows(t.src, fd, r0, r1, raw=same or halve)
                    if t.heads:
                        rows = _repair(rows, t.src.shape[0] // t.heads)
                    if halve:
                        data = _bf16_to_f16(rows)
                    else:
                        data = (_quiet_nans(rows) if t.src.dtype == "BF16" else rows) if same else _encode(rows, t.qtype)
                    fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))  # no copy
                    written += data.nbytes
                    self.bar.update((r1 - r0) * (t.src.nbytes // max(t.src.shape[0] if t.src.shape else 1, 1)))
            finally:
                os.close(fd)
        if written != t.nbytes:
            raise AssertionError(f"yarnconv bug: {t.name} wrote {written} bytes, planned {t.nbytes}")


def writer_for(plan: ExportPlan, bar: Any) -> GGUFWriter:
    """A gguf-py writer holding the plan's metadata and (streamed) tensors; no file is opened."""
    w = GGUFWriter(None, plan.arch, split_max_size=plan.split_max_size)
    for key, value in [*plan.general.items(), *plan.hparams.items()]:
        getattr(w, f"add_{key}")(value)
    for k, (vtype, value) in plan.keys.sets.items():
        w.add_key_value(k, value, GGUFValueType(int(vtype)))
    if plan.vocab is not None:
        plan.vocab.add_to(w)
    w.add_string("yarnconv.version", __version__)
    w.add_string(PAD_KEY, " " * RESERVE)  # spare header room: later YaRN edits fit in place
    for t in plan.tensors:
        stream = StreamedTensor(t, bar)
        w.add_tensor(t.name, stream, raw_shape=stream.shape, raw_dtype=t.qtype)  # type: ignore[arg-type]
    return w


def export_gguf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    outtype: str = "auto",
    config: dict[str, Any] | None = None,
    route: str = "auto",
    pre_tokenizer: str | None = None,
    split_max_size: int = 0,
    imatrix: str | os.PathLike[str] | None = None,
    quant_loss: Callable[[Path, dict[str, Path]], dict[str, dict[str, Any]]] | None = None,
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the HF checkpoint at ``source`` to GGUF, one file (or split set) per type in
    ``outtype`` (``q4_k_m,q5_k_m,q8_0``); quant-ladder types are made by llama.cpp's quantizer from
    one f16/bf16/f32 file written once, with ``imatrix`` if given. ``quant_loss(float_file, {type:
    file})`` measures each quantized file against that float file while it still exists (verify's
    measure, passed in from above). ``config`` replaces config.json (extend --gguf)."""
    from yarnconv.gguf.quantize import DIRECT, FTYPES, parse_outtypes, require_quantizer
    from yarnconv.storage.sources import resolve

    root = resolve(source).path
    raw = config if config is not None else read_json(root / CONFIG, CONFIG)
    types = parse_outtypes(outtype, imatrix=imatrix is not None)
    ladder = [t for t in types if t in FTYPES]
    if imatrix is not None and not ladder:
        raise UsageError(f"--imatrix applies to llama.cpp's quantized types, and --outtype {outtype} has none", "add a type such as q4_k_m, or drop --imatrix")
    several = len(types) > 1
    if several and os.fspath(output).endswith(".gguf"):
        raise UsageError(f"--outtype {outtype} makes {len(types)} files, and -o {output} names one", "pass a directory: -o gguf/")
    if ladder:
        require_quantizer(imatrix=imatrix is not None)
    floats = [t for t in types if t in ("auto", "f32", "f16", "bf16")]
    base_type = floats[0] if floats else "auto"
    out_dir = output if not several or os.fspath(output).endswith(os.sep) else os.path.join(os.fspath(output), "")
    # the file yarnconv writes itself for the ladder: a requested float output, else a scratch one
    plans = {t: plan_export(root, raw, t, route=route, name=name, pre_tokenizer=pre_tokenizer, split_max_size=split_max_size, output=out_dir) for t in types if t in DIRECT or t == "auto"}
    base = plans.get(base_type) or plan_export(root, raw, base_type, route=route, name=name, pre_tokenizer=pre_tokenizer, output=None)
    quantized = {t: _ladder_path(root, out_dir, base, t) for t in ladder}
    if ladder and "q8_0" in plans and _lossless(base):
        # llama.cpp's Q8_0 of an intermediate that holds the source's own values has the converter's
        # tensor bytes (checked), and its C quantizer is faster than encoding Q8_0 here
        quantized = {t: quantized[t] if t != "q8_0" else plans.pop("q8_0").outputs[0] for t in types if t in quantized or t == "q8_0"}
    im = None
    if imatrix is not None:
        from yarnconv.gguf.imatrix import check_fits, read_imatrix

        im = read_imatrix(imatrix)
        covered = check_fits(im, [(t.name, t.shape) for t in base.tensors], str(root))
    outputs = [p for t in types for p in (plans[t].outputs if t in plans else [quantized[t]])]  # in --outtype order
    first = plans.get(types[0], base)
    record: dict[str, Any] = {"source": str(root), **first.summary(), "outputs": [str(p) for p in outputs], "output": str(outputs[0])}
    lossy = [t for t in types if t in FTYPES or t == "q8_0"] if quant_loss is not None else []  # measured against the float file
    if several or ladder or lossy:
        record["variants"] = [{"outtype": t, "output": str(plans[t].outputs[0] if t in plans else quantized[t])} for t in types]
    if im is not None:
        record["imatrix"] = {"path": im.path, "entries": len(im.entries), "matrices_covered": covered, "datasets": im.datasets, "chunks": im.chunks}
    check_new_files(outputs, force=force)
    if split_max_size and not force:  # a split set from an earlier run, which the shards would overwrite
        for path in quantized.values():
            if old := sorted(path.parent.glob(f"{glob.escape(path.name.removesuffix('.gguf'))}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf")):
                raise YarnconvError(f"{old[0]} already exists", "pass --force to overwrite it, or choose another -o")
    if split_max_size and quantized:  # shard names are known once llama.cpp's quantizer has written the file
        for v in record["variants"]:
            if v["outtype"] in quantized:
                v["split_max_size"] = split_max_size
    if dry_run:
        return record
    with atomic_files(outputs, "export") as scratch:
        need = sum(sum(t.nbytes for t in plan.tensors) for plan in plans.values()) + (0 if base_type in plans else sum(t.nbytes for t in base.tensors))
        quant = sum(t.nbytes for t in base.tensors) // 2 * (len(quantized) + (1 if split_max_size and quantized else 0))
        require_space(scratch, need + quant + 2 * RESERVE, "the GGUF files")
        measured = {t: scratch / (quantized[t] if t in quantized else plans[t].outputs[0]).name for t in lossy}  # a split set by its first file
        intermediate = scratch / (base.outputs[0].name if base_type in plans else f".intermediate-{base.outtype.name}.gguf")
        if base_type in plans or ladder or measured:  # the quantizers' input first, then the rest beside them
            _write(base, scratch / base.output_base.name if base_type in plans else intermediate, progress)
        from yarnconv.gguf.quantize import quantizing

        with progress_bar(len(quantized), progress and bool(quantized), "quantize", unit="file") as bar:

            def finished(t: str) -> None:
                check_written_keys(read_header(scratch / quantized[t].name), base.keys)
                bar.update(1)

            targets = {t: scratch / path.name for t, path in quantized.items()}
            with quantizing(intermediate, targets, imatrix=lambda t: None if im is None or t == "q8_0" else im.path, done=finished) as wait:
                for t, plan in plans.items():
                    if t != base_type:
                        _write(plan, scratch / plan.output_base.name, progress)
                wait()
        if ladder or measured:
            if measured and quant_loss is not None:
                losses = quant_loss(intermediate, measured)
                for v in record["variants"]:
                    if v["outtype"] in losses:
                        v["vs_float"] = {"against": base.outtype.name, **losses[v["outtype"]]}
            if split_max_size and quantized:
                _split_quantized(quantized, outputs, scratch, split_max_size, progress)
                record["outputs"], record["output"] = [str(p) for p in outputs], str(outputs[0])
                for v in record["variants"]:
                    if v["outtype"] in quantized:
                        v["output"] = str(quantized[v["outtype"]])
    for v in record.get("variants", []):
        v.update(_described(Path(v["output"])))
    if types[0] in quantized:  # the record describes the first file, as llama.cpp's quantizer wrote it
        record.update(outtype=types[0].upper(), **_described(quantized[types[0]]))
    return record


def _split_quantized(quantized: dict[str, Path], outputs: list[Path], scratch: Path, max_bytes: int, progress: bool) -> None:
    """llama.cpp's quantizer writes one file per type: split each into shards of ``max_bytes``,
    in ``scratch`` and in ``outputs`` (which atomic_files renames at the end) alike."""
    from yarnconv.gguf.split import split_gguf

    total = sum((scratch / p.name).stat().st_size for p in quantized.values())
    with progress_bar(total, progress, "split") as bar:
        for t, path in list(quantized.items()):
            shards = split_gguf(scratch / path.name, scratch / path.name, max_bytes, bar)
            finals = [path.with_name(s.name) for s in shards]
            i = outputs.index(path)
            outputs[i : i + 1] = finals
            quantized[t] = finals[0]


def _lossless(plan: ExportPlan) -> bool:
    """Every matrix of ``plan`` is stored in its source's own dtype (bf16 weights in a BF16 file)."""
    return all(SAME.get(t.src.dtype) == t.qtype for t in plan.tensors if t.src is not None and len(t.shape) > 1)


def _described(path: Path) -> dict[str, Any]:
    """Tensor types and bytes of a GGUF file, or of the whole split set it begins."""
    from yarnconv.gguf.file import shard_paths

    types: dict[str, int] = {}
    nbytes = 0
    shards = shard_paths(path)
    for shard in shards:
        for t in read_header(shard).tensors:
            types[t.type_name] = types.get(t.type_name, 0) + 1
            nbytes += t.nbytes
    return {"tensor_types": types, "bytes": nbytes} | ({"shards": len(shards)} if len(shards) > 1 else {})


def _ladder_path(root: Path, output: str | os.PathLike[str], plan: ExportPlan, outtype: str) -> Path:
    from yarnconv.gguf.export_plan import default_filename
    from yarnconv.storage.atomic import check_writable_parent

    out = Path(output)
    if out.suffix != ".gguf" or out.is_dir():
        out = out / default_filename(plan, outtype.upper())
    if root.resolve() in out.absolute().resolve().parents:
        raise YarnconvError(f"the output {out} would be written into the input checkpoint {root}", "choose an -o outside the model directory")
    check_writable_parent(out)
    return out


def _write(plan: ExportPlan, base: Path, progress: bool) -> None:
    """One planned GGUF (or split set) written under ``base``'s name, then read back."""
    try:
        _write_unchecked(plan, base, progress)
    except OSError as exc:
        if exc.filename is None:  # gguf-py's writes do not say which file; the disk-full line should
            exc.filename = str(base)
        raise
    names = [p.name for p in plan.outputs] or [base.name]
    for n in names:
        read_header(base.parent / n)  # re-read what was written before it gets its final name
    check_written_keys(read_header(base.parent / names[0]), plan.keys)


def _write_unchecked(plan: ExportPlan, base: Path, progress: bool) -> None:
    with progress_bar(sum(t.src.nbytes for t in plan.tensors if t.src), progress, "export") as bar:
        w = writer_for(plan, bar)
        if [p.name for p in w.format_shard_names(base)] != [p.name for p in plan.outputs] and plan.outputs:
            raise AssertionError("yarnconv bug: gguf-py would split the file differently from the plan")
        w.write_header_to_file(base)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
