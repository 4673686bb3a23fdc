"""HF -> GGUF export as steps: plan every file, check the outputs, write (the float file first,
then llama.cpp's quantizer from it while yarnconv writes its other direct types beside it), split
the quantized files, and describe what was written.

:mod:`yarnconv.gguf.export_plan` decides each file's metadata and tensors and
:mod:`yarnconv.gguf.stream` writes one; this module runs one ``export --gguf`` call, which may make
several files (``--outtype q4_k_m,q5_k_m,q8_0``). :func:`exporting` stops before the files take
their names, so a caller can measure the quantized files against the float one while it still
exists (``--verify``), with nothing written when that fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarnconv.errors import UsageError, YarnconvError
from yarnconv.gguf.export_plan import ExportPlan, plan_export
from yarnconv.gguf.file import RESERVE, read_header
from yarnconv.gguf.keys import check_written_keys
from yarnconv.gguf.stream import SAME, write_plan
from yarnconv.storage.atomic import atomic_files, check_new_files, require_space
from yarnconv.storage.files import CONFIG, read_json
from yarnconv.storage.progress import progress_bar

FLOATS = ("auto", "f32", "f16", "bf16")


@dataclass
class GGUFExport:
    """Every file one export call writes, decided before any byte is."""

    root: Path
    types: list[str]  # in --outtype order
    plans: dict[str, ExportPlan]  # the types yarnconv writes itself
    base: ExportPlan  # the float file the quantizer reads: a requested output, or a scratch intermediate
    base_type: str
    quantized: dict[str, Path]  # the types llama.cpp's quantizer makes from ``base``
    outputs: list[Path]  # final paths, in --outtype order (split sets expanded once known)
    split_max_size: int = 0
    measured: list[str] = field(default_factory=list)  # lossy types measured against the float file
    imatrix: Any = None
    covered: int = 0

    def path_of(self, outtype: str) -> Path:
        return self.plans[outtype].outputs[0] if outtype in self.plans else self.quantized[outtype]

    def writes_base(self) -> bool:
        """The float file is written when it is an output, or the quantizer or a measurement needs it."""
        return self.base_type in self.plans or bool(self.quantized) or bool(self.measured)


@dataclass
class Staged:
    """An export written in scratch, before its files take their names (see :func:`exporting`)."""

    float_file: Path
    measured: dict[str, Path]  # lossy type -> its file in scratch (a split set by its first file)
    record: dict[str, Any]
    against: str

    def add_losses(self, losses: dict[str, dict[str, Any]]) -> None:
        """Each quantized type's loss against the float file, into its variant's record."""
        for v in self.record.get("variants", []):
            if v["outtype"] in losses:
                v["vs_float"] = {"against": self.against, **losses[v["outtype"]]}


def plan_gguf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    outtype: str = "auto",
    config: dict[str, Any] | None = None,
    route: str = "auto",
    pre_tokenizer: str | None = None,
    split_max_size: int = 0,
    imatrix: str | os.PathLike[str] | None = None,
    name: str | None = None,
    measure: bool = False,
) -> GGUFExport:
    """Plan the export of the HF checkpoint at ``source``, one file (or split set) per type in
    ``outtype``; ``config`` replaces config.json (extend --gguf); ``measure``: keep the float file
    for measuring each lossy type against it."""
    from yarnconv.gguf.quantize import DIRECT, FTYPES, parse_outtypes
    from yarnconv.storage.sources import resolve

    root = resolve(source).path
    raw = config if config is not None else read_json(root / CONFIG, CONFIG)
    types = parse_outtypes(outtype, imatrix=imatrix is not None)
    out_dir = _output_dir(types, output, outtype, imatrix)
    floats = [t for t in types if t in FLOATS]
    base_type = floats[0] if floats else "auto"
    settings: dict[str, Any] = {"route": route, "name": name, "pre_tokenizer": pre_tokenizer}
    plans = {t: plan_export(root, raw, t, split_max_size=split_max_size, output=out_dir, **settings) for t in types if t in DIRECT or t == "auto"}
    base = plans.get(base_type) or plan_export(root, raw, base_type, output=None, **settings)
    quantized = {t: _ladder_path(root, out_dir, base, t) for t in types if t in FTYPES}
    if quantized and "q8_0" in plans and _lossless(base):
        # llama.cpp's Q8_0 of an intermediate that holds the source's own values has the converter's
        # tensor bytes (checked), and its C quantizer is faster than encoding Q8_0 here
        quantized = {t: quantized[t] if t != "q8_0" else plans.pop("q8_0").outputs[0] for t in types if t in quantized or t == "q8_0"}
    x = GGUFExport(root, types, plans, base, base_type, quantized, [], split_max_size)
    x.outputs = [p for t in types for p in (plans[t].outputs if t in plans else [quantized[t]])]
    x.measured = [t for t in types if t in FTYPES or t == "q8_0"] if measure else []
    if imatrix is not None:
        from yarnconv.gguf.imatrix import check_fits, read_imatrix

        x.imatrix = read_imatrix(imatrix)
        x.covered = check_fits(x.imatrix, [(t.name, t.shape) for t in base.tensors], str(root))
    return x


def _output_dir(types: list[str], output: str | os.PathLike[str], outtype: str, imatrix: Any) -> str | os.PathLike[str]:
    """Where the files go: ``output`` itself, or as a directory when several types are asked for."""
    from yarnconv.gguf.quantize import FTYPES, require_quantizer

    ladder = [t for t in types if t in FTYPES]
    if imatrix is not None and not ladder:
        raise UsageError(f"--imatrix applies to llama.cpp's quantized types, and --outtype {outtype} has none", "add a type such as q4_k_m, or drop --imatrix")
    several = len(types) > 1
    if several and os.fspath(output).endswith(".gguf"):
        raise UsageError(f"--outtype {outtype} makes {len(types)} files, and -o {output} names one", "pass a directory: -o gguf/")
    if ladder:
        require_quantizer(imatrix=imatrix is not None)
    return output if not several or os.fspath(output).endswith(os.sep) else os.path.join(os.fspath(output), "")


def export_record(x: GGUFExport) -> dict[str, Any]:
    """What the export will write, as ``--json`` prints it (the dry run's answer)."""
    first = x.plans.get(x.types[0], x.base)
    record: dict[str, Any] = {"source": str(x.root), **first.summary(), "outputs": [str(p) for p in x.outputs], "output": str(x.outputs[0])}
    if len(x.types) > 1 or x.quantized or x.measured:
        record["variants"] = [{"outtype": t, "output": str(x.path_of(t))} for t in x.types]
        if x.split_max_size:  # shard names are known once llama.cpp's quantizer has written the file
            for v in record["variants"]:
                if v["outtype"] in x.quantized:
                    v["split_max_size"] = x.split_max_size
    if x.imatrix is not None:
        im = x.imatrix
        record["imatrix"] = {"path": im.path, "entries": len(im.entries), "matrices_covered": x.covered, "datasets": im.datasets, "chunks": im.chunks}
    return record


def check_outputs(x: GGUFExport, *, force: bool) -> None:
    """Refuse to overwrite a file (or a split set from an earlier run) without ``force``."""
    check_new_files(x.outputs, force=force)
    if x.split_max_size and not force:
        for path in x.quantized.values():
            if old := sorted(path.parent.glob(f"{glob.escape(path.name.removesuffix('.gguf'))}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf")):
                raise YarnconvError(f"{old[0]} already exists", "pass --force to overwrite it, or choose another -o")


@contextlib.contextmanager
def exporting(x: GGUFExport, record: dict[str, Any], *, progress: bool = True) -> Iterator[Staged]:
    """Write every file in scratch and yield them staged; then split the quantized files, give
    every file its name at once, and describe them in ``record``. Leaving the block with an error
    (or SIGTERM) leaves no output."""
    with atomic_files(x.outputs, "export") as scratch:
        float_file = scratch / (x.base.outputs[0].name if x.base_type in x.plans else f".intermediate-{x.base.outtype.name}.gguf")
        _write_files(x, scratch, float_file, progress)
        yield Staged(float_file, {t: scratch / x.path_of(t).name for t in x.measured}, record, x.base.outtype.name)
        if x.split_max_size and x.quantized:
            _split_quantized(x.quantized, x.outputs, scratch, x.split_max_size, progress)
            record["outputs"], record["output"] = [str(p) for p in x.outputs], str(x.outputs[0])
            for v in record["variants"]:
                if v["outtype"] in x.quantized:
                    v["output"] = str(x.quantized[v["outtype"]])
    for v in record.get("variants", []):
        v.update(_described(Path(v["output"])))
    if x.types[0] in x.quantized:  # the record describes the first file, as llama.cpp's quantizer wrote it
        record.update(outtype=x.types[0].upper(), **_described(x.quantized[x.types[0]]))


def _write_files(x: GGUFExport, scratch: Path, float_file: Path, progress: bool) -> None:
    """The float file first, then llama.cpp's quantizer on it while yarnconv writes its other types."""
    from yarnconv.gguf.quantize import quantizing

    need = sum(sum(t.nbytes for t in plan.tensors) for plan in x.plans.values()) + (0 if x.base_type in x.plans else sum(t.nbytes for t in x.base.tensors))
    quant = sum(t.nbytes for t in x.base.tensors) // 2 * (len(x.quantized) + (1 if x.split_max_size and x.quantized else 0))
    require_space(scratch, need + quant + 2 * RESERVE, "the GGUF files")
    if x.writes_base():
        write_plan(x.base, scratch / x.base.output_base.name if x.base_type in x.plans else float_file, progress)
    with progress_bar(len(x.quantized), progress and bool(x.quantized), "quantize", unit="file") as bar:

        def finished(t: str) -> None:
            check_written_keys(read_header(scratch / x.quantized[t].name), x.base.keys)
            bar.update(1)

        targets = {t: scratch / path.name for t, path in x.quantized.items()}
        im = x.imatrix
        with quantizing(float_file, targets, imatrix=lambda t: None if im is None or t == "q8_0" else im.path, done=finished) as wait:
            for t, plan in x.plans.items():
                if t != x.base_type:
                    write_plan(plan, scratch / plan.output_base.name, progress)
            wait()


def export_gguf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Convert the HF checkpoint at ``source`` to GGUF and return the record (settings: as
    :func:`plan_gguf`); quant-ladder types are made by llama.cpp's quantizer from one f16/bf16/f32
    file written once."""
    x = plan_gguf(source, output, **settings)
    record = export_record(x)
    check_outputs(x, force=force)
    if not dry_run:
        with exporting(x, record, progress=progress):
            pass
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
