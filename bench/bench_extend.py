"""Benchmark `yarnconv extend` against `cp -r` of the same checkpoint, in one run.

Targets (issue #2): extend wall time <= 2% of the copy's, peak RSS <= 150 MB, flat in model size
when hardlinks work. Each command runs as its own process; peak RSS comes from os.wait4 per child.
Issue #8: the config-only route as a process in <= ~85 ms; the import breakdown (python -X
importtime, cumulative ms of the top-level imports) shows where start-up goes. Children run with
bytecode caching on (as an installed package does), whatever PYTHONDONTWRITEBYTECODE says here.

    python bench/bench_extend.py                   # 0.3 GB and 1.5 GB checkpoints under bench/out
    python bench/bench_extend.py --sizes-gb 1.5 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_checkpoint(root: Path, size_gb: float) -> Path:
    """A Llama-shaped sharded bf16 checkpoint of about ``size_gb`` GB (random bytes).

    Runs in a child process so this (measuring) process never holds torch or tensors: a forked
    child's ru_maxrss would otherwise include the parent's pages.
    """
    if (root / "config.json").is_file():
        return root
    subprocess.run([sys.executable, __file__, "--make", str(root), str(size_gb)], check=True)
    return root


def _generate(root: Path, size_gb: float) -> None:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(1, int((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": layers, "vocab_size": vocab,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps(config, indent=2))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + n: (hidden, hidden)
                for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight")
            }
        )
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
        shapes.update(
            {
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
            }
        )
    shard, shard_bytes, weight_map, n = {}, 0, {}, 0
    names = list(shapes)

    def flush() -> None:
        nonlocal shard, shard_bytes, n
        n += 1
        fname = f"model-{n:05d}.safetensors"
        save_file(shard, str(root / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
        shard, shard_bytes = {}, 0

    for name in names:
        t = torch.empty(shapes[name], dtype=torch.bfloat16).uniform_(-0.02, 0.02)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        shard[name] = t
        shard_bytes += t.numel() * 2
        if shard_bytes >= 500e6:
            flush()
    if shard:
        flush()
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))


_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def import_breakdown(src: Path, out: Path) -> dict[str, float]:
    """Cumulative ms of each top-level import of `yarnconv extend` (median of 5 runs of -X importtime)."""
    runs: dict[str, list[float]] = {}
    for _ in range(5):
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-X", "importtime", "-m", "yarnconv", "extend", str(src), "-o", str(out), "--scale", "16", "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_ENV, check=True)
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
                runs.setdefault(parts[2].strip(), []).append(int(parts[1]) / 1000)
    shutil.rmtree(out, ignore_errors=True)
    top = {name: statistics.median(ms) for name, ms in runs.items()}
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:8])


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def bench(size_gb: float, out: Path, repeat: int) -> dict:
    src = make_checkpoint(out / f"src-{size_gb:g}gb", size_gb)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).parent.parent / "yarnconv")], env=_ENV, check=True)
    size = sum(p.stat().st_size for p in src.iterdir())
    rows: dict[str, list] = {"cp -r": [], "yarnconv extend": [], "python -c pass": [], "extend() in-process": []}
    inproc = (
        "import sys, time; from yarnconv.hf.extend import extend; from yarnconv.plan import ExtendRequest; "
        "t = time.perf_counter(); extend(sys.argv[1], sys.argv[2], ExtendRequest(scale=16.0), progress=False); "
        "print(time.perf_counter() - t)"
    )
    for _ in range(repeat):
        for name, dst, cmd in (
            ("cp -r", out / "cp", ["cp", "-r", str(src), str(out / "cp")]),
            (
                "yarnconv extend",
                out / "ext",
                [sys.executable, "-m", "yarnconv", "extend", str(src), "-o", str(out / "ext"), "--scale", "16", "-q"],
            ),
            ("python -c pass", None, [sys.executable, "-c", "pass"]),
        ):
            if dst is not None:
                shutil.rmtree(dst, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            rows[name].append(timed(cmd))
        shutil.rmtree(out / "ext", ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", inproc, str(src), str(out / "ext")], capture_output=True, text=True, check=True)
        rows["extend() in-process"].append((float(done.stdout.strip()), 0.0))
    result = {"size_gb": round(size / 1e9, 3), "imports_ms": import_breakdown(src, out / "ext")}
    for name, samples in rows.items():
        result[name] = {"wall_s_median": statistics.median(w for w, _ in samples), "peak_rss_mb_max": max(r for _, r in samples)}
    result["extend_over_cp"] = result["yarnconv extend"]["wall_s_median"] / result["cp -r"]["wall_s_median"]
    result["extend_inprocess_over_cp"] = result["extend() in-process"]["wall_s_median"] / result["cp -r"]["wall_s_median"]
    shutil.rmtree(out / "cp", ignore_errors=True)
    shutil.rmtree(out / "ext", ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.3, 1.5])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--make", nargs=2, metavar=("DIR", "GB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return _generate(Path(args.make[0]), float(args.make[1]))
    args.out.mkdir(parents=True, exist_ok=True)
    results = [bench(s, args.out, args.repeat) for s in args.sizes_gb]
    for r in results:
        e, c = r["yarnconv extend"], r["cp -r"]
        print(
            f"{r['size_gb']:.2f} GB: cp -r {c['wall_s_median']:.3f} s | extend {e['wall_s_median']:.3f} s "
            f"({100 * r['extend_over_cp']:.1f}% of cp), peak RSS {e['peak_rss_mb_max']:.0f} MB (cp {c['peak_rss_mb_max']:.0f} MB) "
            f"| extend() in-process {1000 * r['extend() in-process']['wall_s_median']:.1f} ms ({100 * r['extend_inprocess_over_cp']:.2f}% of cp) "
            f"| bare python startup {r['python -c pass']['wall_s_median']:.3f} s"
        )
        print("  imports (cumulative ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["imports_ms"].items()))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
