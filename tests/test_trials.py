"""Crash, disk-full and hostile-environment trials, run as a user would: the real CLI in a
subprocess, real signals, a real full filesystem (a small tmpfs), a closed stdout, a broken pipe.

Each trial checks the same promises: one ``Error:`` line and a non-zero exit, no traceback, no
"internal error", nothing half-written under a final name, no scratch left behind (at once after
SIGTERM, on the next run after kill -9), and the input unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tiny_config, write_checkpoint

CLI = [sys.executable, "-m", "yarnconv"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def yarnconv(*args: object, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, env=ENV, **kw)  # type: ignore[call-overload]


def one_error_line(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    return lines[0]


def scratch(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".yarnconv-"))


def big_checkpoint(root: Path, nbytes: int) -> Path:
    """A valid single-file checkpoint whose one tensor is ``nbytes`` of zeros (sparse on disk)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(tiny_config("llama")))
    header = json.dumps({"big": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes // 4 * 4]}}).encode()
    with open(root / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + nbytes // 4 * 4)
    return root


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB filesystem that fills up for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full trial: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def exportable(root: Path, tok: Path, **over: object) -> Path:
    """A tiny Llama with SmolLM2's real tokenizer files: something `export --gguf` accepts."""
    import shutil

    src = write_checkpoint(root, tiny_config("llama", vocab_size=49152, **over), shards=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok / name, src / name)
    return src


def _run_and_signal(args: list[object], sig: int, parent: Path) -> subprocess.CompletedProcess[str]:
    """Start the CLI and signal it as soon as its copy of the weights is under way (a partial file
    in its scratch directory), so the signal always lands mid-write whatever the disk speed."""
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.stat().st_size > 0 for p in parent.glob(".yarnconv-tmp-*/model.safetensors")):
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_mid_copy_leaves_nothing(tmp_path: Path) -> None:
    src = big_checkpoint(tmp_path / "src", 3_000_000_000)
    before = sorted(p.name for p in src.iterdir())
    out = tmp_path / "out"
    done = _run_and_signal(["extend", src, "-o", out, "--scale", "2", "--link", "copy", "-q"], signal.SIGTERM, tmp_path)
    assert done.returncode == 143, done.stderr
    assert "terminated by SIGTERM" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and scratch(tmp_path) == []
    assert sorted(p.name for p in src.iterdir()) == before


def test_kill_9_leftovers_are_swept_by_the_next_run(tmp_path: Path) -> None:
    src = big_checkpoint(tmp_path / "src", 3_000_000_000)
    done = _run_and_signal(["extend", src, "-o", tmp_path / "out", "--scale", "2", "--link", "copy", "-q"], signal.SIGKILL, tmp_path)
    assert done.returncode == -signal.SIGKILL
    assert scratch(tmp_path), "the killed run should have left its scratch directory"
    assert not (tmp_path / "out").exists()
    small = write_checkpoint(tmp_path / "small", tiny_config("llama"), shards=1)
    assert yarnconv("extend", small, "-o", tmp_path / "out2", "--scale", "2", "-q").returncode == 0
    assert scratch(tmp_path) == []


def test_a_recipe_run_killed_with_9_is_swept_by_the_next_run(tmp_path: Path) -> None:
    src = big_checkpoint(tmp_path / "src", 3_000_000_000)
    recipe = tmp_path / "big.toml"  # [hf] dtype: extended into the run's scratch, then cast into the output's
    recipe.write_text(f'[source]\nmodel = "{src}"\n[extend]\nscale = 2.0\n[hf]\ndtype = "bf16"\n')
    done = _run_and_signal(["run", recipe, "-o", tmp_path / "out", "-q"], signal.SIGKILL, tmp_path)
    assert done.returncode == -signal.SIGKILL
    assert {name.split("-")[1] for name in scratch(tmp_path)} == {"run", "tmp"}, scratch(tmp_path)
    small = write_checkpoint(tmp_path / "small", tiny_config("llama"), shards=1)
    assert yarnconv("extend", small, "-o", tmp_path / "out2", "--scale", "2", "-q").returncode == 0
    assert scratch(tmp_path) == []


@pytest.mark.needs("llama_cpp")  # the ladder runs llama.cpp's quantizer
@pytest.mark.parametrize("outtypes", ["q4_k_m,q5_k_m,q6_k", "f16,q8_0,q4_k_m"])  # the second writes its Q8_0 beside the quantizer
def test_sigterm_mid_ladder_kills_the_quantizers_and_leaves_nothing(tmp_path: Path, smollm2_dir: Path, outtypes: str) -> None:
    src = exportable(tmp_path / "src", smollm2_dir, hidden_size=512, intermediate_size=1536, num_hidden_layers=8)
    out = tmp_path / "gguf"
    proc = subprocess.Popen([*CLI, "export", str(src), "--gguf", "--outtype", outtypes, "-o", f"{out}/", "-q"], stderr=subprocess.PIPE, text=True, env=ENV)
    deadline, children = time.monotonic() + 120, []
    while proc.poll() is None and time.monotonic() < deadline:  # signal once llama.cpp's quantizers write
        if any(p.stat().st_size > 0 for p in out.glob(".yarnconv-*/*-Q4_K_M.gguf")):
            children = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and children, (proc.returncode, err)
    assert "Traceback" not in err and "terminated by SIGTERM" in err
    assert scratch(tmp_path) == [] and not out.exists()  # not even the directory it would have made
    for pid in children:  # no quantizer outlives the command
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid


def _children(pid: int) -> list[int]:
    """Child processes started by any thread of ``pid`` (the ladder starts them from a thread)."""
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found += [int(x) for x in path.read_text().split()]
    return found


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path: Path, tmpfs: Path, smollm2_dir: Path) -> None:
    src = big_checkpoint(tmp_path / "src", 60_000_000)
    planned = one_error_line(yarnconv("extend", src, "-o", tmpfs / "a" / "b", "--scale", "2", "--link", "copy"))
    assert "not enough space" in planned and "needs" in planned and "free" in planned
    # auto mode tries links first; across filesystems it copies and runs out of room mid-write
    midway = one_error_line(yarnconv("extend", src, "-o", tmpfs / "out", "--scale", "2", "--link", "auto"))
    assert "space" in midway, midway
    wide = exportable(tmp_path / "wide", smollm2_dir, hidden_size=256, intermediate_size=256)
    gguf = one_error_line(yarnconv("export", wide, "--gguf", "--outtype", "f32", "-o", str(tmpfs / "g") + "/"))
    assert "space" in gguf
    assert os.listdir(tmpfs) == [], os.listdir(tmpfs)  # not even the directories it would have made


def test_in_place_patch_on_a_full_disk_keeps_the_file_and_no_backup(tmp_path: Path, tmpfs: Path, smollm2_dir: Path) -> None:
    src = exportable(tmp_path / "src", smollm2_dir)
    assert yarnconv("export", src, "--gguf", "--outtype", "f32", "-o", tmpfs / "m.gguf", "-q").returncode == 0
    filler = tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the filesystem to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    before = (tmpfs / "m.gguf").read_bytes()
    line = one_error_line(yarnconv("extend", tmpfs / "m.gguf", "--scale", "2", "--in-place"))
    assert "space" in line
    assert (tmpfs / "m.gguf").read_bytes() == before
    assert sorted(os.listdir(tmpfs)) == ["filler", "m.gguf"]


def test_user_errors_are_one_line_not_internal(tmp_path: Path, smollm2_dir: Path) -> None:
    src = exportable(tmp_path / "src", smollm2_dir)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a file" in one_error_line(yarnconv("extend", src, "-o", a_file, "--scale", "2", "--force"))
    assert "is a file" in one_error_line(yarnconv("extend", src, "-o", a_file / "sub", "--scale", "2"))
    assert "is a file" in one_error_line(yarnconv("export", src, "--gguf", "-o", a_file / "m.gguf"))
    assert "into the input" in one_error_line(yarnconv("export", src, "--gguf", "-o", src))
    assert not list(src.glob("*.gguf"))
    long_name = tmp_path / ("m" * 240)
    assert yarnconv("extend", src, "-o", long_name, "--scale", "2", "-q").returncode == 0
    assert long_name.is_dir() and scratch(tmp_path) == []
    gguf = tmp_path / "m.gguf"
    assert yarnconv("export", src, "--gguf", "-o", gguf, "-q").returncode == 0
    for flag in (["--schema", "v5"], ["--outtype", "f16"], ["--precompute-inv-freq"], ["--gguf-rope", "freqs"]):
        line = one_error_line(yarnconv("extend", gguf, "--scale", "2", "-o", tmp_path / "p.gguf", *flag), code=2)
        assert "does not apply" in line
    assert "does not apply" in one_error_line(yarnconv("extend", src, "--scale", "2", "-o", tmp_path / "x", "--outtype", "f16"), code=2)
    assert "exactly one of" in one_error_line(yarnconv("extend", src, "-o", tmp_path / "y"), code=2)


def test_read_only_output_is_one_line(tmp_path: Path, tmpfs: Path) -> None:
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    line = one_error_line(yarnconv("extend", src, "-o", tmpfs / "out", "--scale", "2"))
    assert "read-only" in line or "cannot write" in line or "permission" in line, line


def test_closed_stdout_and_broken_pipe(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    cmd = " ".join([*map(str, CLI[:2]), repr(CLI[2]), "inspect", str(src), "--json"])
    closed = subprocess.run(["bash", "-c", f"{cmd} >&-"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in closed.stderr and "internal error" not in closed.stderr, closed.stderr
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 10"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in piped.stderr and "Exception ignored" not in piped.stderr, piped.stderr


def test_in_place_edit_killed_midway_is_restored_by_the_next_run(tmp_path: Path, smollm2_dir: Path) -> None:
    """A kill -9 between writing the new header and removing the backup: the next in-place run puts
    the old header back before it plans, so the file is always old-or-new."""
    from yarnconv.gguf.file import read_header
    from yarnconv.gguf.patch import _backup_path

    src = exportable(tmp_path / "src", smollm2_dir)
    gguf = tmp_path / "m.gguf"
    assert yarnconv("export", src, "--gguf", "--outtype", "f32", "-o", gguf, "-q").returncode == 0
    good = gguf.read_bytes()
    header_len = read_header(gguf).data_offset
    _backup_path(gguf).write_bytes(good[:header_len])  # what a killed run leaves: the backup ...
    with open(gguf, "r+b") as f:  # ... and a header it was half-way through overwriting
        f.write(b"\xff" * 64)
    assert yarnconv("extend", gguf, "--scale", "2", "--in-place", "-q").returncode == 0
    assert read_header(gguf).get("llama.rope.scaling.type") == "yarn"
    assert gguf.read_bytes()[header_len:] == good[header_len:]
    assert not _backup_path(gguf).exists()


def test_click_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    """Click's own parsing errors (unknown option or command, missing argument, bad choice) are one line
    naming the help to read, exit 2; a failed check is 3 and bad input 1 (docs: README, errors.py)."""
    for args, message in [
        (["extend", "--bogus", "x"], "No such option '--bogus'"),
        (["extend"], "Missing argument 'MODEL'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["extend", "x", "--link", "sideways"], "'sideways' is not one of"),
    ]:
        line = one_error_line(yarnconv(*args), code=2)
        assert message in line and "--help)" in line, line
    assert "no such model directory" in one_error_line(yarnconv("inspect", tmp_path / "missing"), code=1)
    assert yarnconv("--version").returncode == 0 and yarnconv("extend", "--help").returncode == 0
