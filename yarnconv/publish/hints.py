"""Launch commands per runtime for an extended checkpoint or GGUF, sized to its context, with the
KV-cache memory that context needs.

What each runtime needs (docs/runtimes.md §1-2):

- transformers reads config.json as written; the versions that read it differently are inspect's
  runtime rows, repeated here as notes.
- vLLM sizes the context by ``max_position_embeddings`` (0.32 never multiplies it by a YaRN factor).
  Since 0.11.1 overrides go through ``--hf-overrides``; ``--rope-scaling`` is gone.
- SGLang reads ``rope_scaling`` only, and takes overrides as ``--json-model-override-args``.
- llama.cpp sizes by ``{arch}.context_length``; llama-server builds before PR #28030 cap every slot
  at it. A GGUF with YaRN keys needs no rope flags.
- ollama: ``num_ctx`` defaults to 2048. Its Go qwen3 engine reads the YaRN keys at magnitude 1, its
  gemma3 engine ignores them; llama and qwen2 run in its vendored llama.cpp unless OLLAMA_NEW_ENGINE
  is set, whose Go engines read only ``rope.freq_scale`` and ``rope_freqs.weight`` (from source).
- mlx-lm reads ``rope_scaling`` and sizes nothing by the config; exllamav3 sizes by
  ``max_position_embeddings`` and derives the factor from it.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarnconv import runtimes
from yarnconv.config import read_config
from yarnconv.config.block import ConfigView
from yarnconv.config.write import block_to_dict
from yarnconv.errors import YarnconvError
from yarnconv.storage.files import CONFIG, read_json

# bytes per cached element: 16-bit (every runtime's default), fp8 (vLLM/SGLang --kv-cache-dtype fp8),
# llama.cpp's q8_0 and q4_0 cache types (34 and 18 bytes per block of 32)
KV_BYTES = {"f16": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# SGLang has no CPU build to install here (its CPU backend is built from source for Intel AMX Xeons,
# docs.sglang.io/platforms/cpu_server.html; these machines have AVX2 only): its line is modelled.
SGLANG_UNRUN = "modelled from SGLang's source, not run by yarnconv's tests (no installable CPU build for AVX2 machines)"
KV_FLAGS = {"fp8": "vLLM/SGLang --kv-cache-dtype fp8", "q8_0": "llama.cpp -ctk q8_0 -ctv q8_0 -fa on", "q4_0": "llama.cpp -ctk q4_0 -ctv q4_0 -fa on"}
OLLAMA_READS_YARN = {"qwen3", "qwen3moe"}  # Go engines that read rope.scaling.* (model/models/qwen3/model.go)
OLLAMA_IGNORES_YARN = {"gemma3"}  # Go engines that read rope.freq_scale only (model/models/gemma3/model_text.go)


@dataclass(frozen=True)
class CacheShape:
    """What one token costs in the KV cache: K and V per layer, all KV heads."""

    layers: int
    kv_heads: int
    head_dim: int
    sliding_layers: int = 0  # layers whose cache stops at the window
    window: int | None = None

    def bytes(self, context: int, per_element: float) -> int:
        per_token_layer = 2 * self.kv_heads * self.head_dim * per_element
        full = self.layers - self.sliding_layers
        capped = min(context, self.window or context)
        return int(per_token_layer * (full * context + self.sliding_layers * capped))


def kv_cache(shape: CacheShape | None, context: int) -> dict[str, Any]:
    """Bytes per cache dtype. llama.cpp refuses its block-quantized cache types when the head size is
    not a multiple of their 32-element block, so those are left out then."""
    if shape is None or not context:
        return {}
    blocked = shape.head_dim % 32 != 0
    return {dtype: shape.bytes(context, b) for dtype, b in KV_BYTES.items() if not (blocked and dtype in ("q8_0", "q4_0"))}


def hints(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Commands and notes per runtime for the checkpoint directory or GGUF file at ``path``."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return _gguf_hints(p)
    if not (p / CONFIG).is_file():
        raise YarnconvError(f"{path} is neither a checkpoint directory (no {CONFIG}) nor a .gguf file", "pass an extend or export output")
    return _hf_hints(p, read_config(read_json(p / CONFIG, CONFIG)))


def _shape(view: ConfigView) -> CacheShape | None:
    text = view.text
    if not (view.num_layers and (view.num_kv_heads or view.num_heads) and view.head_dim):
        return None
    kinds = text.get("layer_types") or []
    sliding = sum(k == "sliding_attention" for k in kinds)
    window = text.get("sliding_window") if sliding else None
    return CacheShape(view.num_layers, view.num_kv_heads or view.num_heads or 1, view.head_dim, sliding, window)


def _hf_hints(root: Path, view: ConfigView) -> dict[str, Any]:
    context = view.max_position or 0
    block = view.rope
    q = shlex.quote(str(root))
    rows = runtimes.compare(view, runtimes.reference_specs(view)) if view.rope_head_dim else []
    off = {r["runtime"]: r for r in rows if r["verdict"] != "same"}
    scaling = {"rope_scaling": block_to_dict(block, "portable")}
    if "rope_theta" not in view.text:  # a rope_parameters-only config: the theta must travel with the block
        scaling["rope_theta"] = block.theta
    portable = json.dumps(scaling, separators=(",", ":"))
    has_scaling = "rope_scaling" in view.text
    out: list[dict[str, Any]] = []
    notes = [f"{name}: {_why(r)}" for name, r in off.items() if name.startswith("transformers")]
    out.append({"runtime": "transformers", "command": f"AutoModelForCausalLM.from_pretrained({json.dumps(str(root))})", "notes": ["no flags: the YaRN config is read from config.json", *notes]})
    vllm = f"vllm serve {q} --max-model-len {context}"
    vllm_notes = []
    if runtimes.VLLM in off:
        v5 = json.dumps({"rope_parameters": block_to_dict(block, "v5")}, separators=(",", ":"))
        vllm += f" --hf-overrides {shlex.quote(v5)}"
        vllm_notes.append(f"the config alone is read differently by {runtimes.VLLM} (see inspect): the override above is the rope_parameters form it reads")
    elif not has_scaling:
        vllm_notes.append(f"{runtimes.VLLM} reads this rope_parameters config as written (checked by running it); older vLLM that reads rope_scaling only takes --hf-overrides {shlex.quote(portable)}")
    out.append({"runtime": "vLLM", "command": vllm, "notes": vllm_notes or ["no rope flags: vLLM reads the YaRN config; --max-model-len sets the window"]})
    sglang = f"python -m sglang.launch_server --model-path {q} --context-length {context}"
    if not has_scaling:
        sglang += f" --json-model-override-args {shlex.quote(portable)}"
    sglang_notes = ["SGLang reads rope_scaling only" + ("; the config has rope_parameters alone, so the override carries it" if not has_scaling else ": this config has it")]
    sglang_notes.append(SGLANG_UNRUN)
    out.append({"runtime": "SGLang", "command": sglang, "notes": sglang_notes})
    gguf = f"{root.name}-Q4_K_M.gguf"
    out.append(
        {
            "runtime": "llama.cpp",
            "command": f"yarnconv export {q} --gguf --outtype q4_k_m -o {shlex.quote(gguf)} && llama-server -m {shlex.quote(gguf)} -c {context}",
            "notes": ["the GGUF carries the YaRN keys and context_length: no --rope-scaling flags, and builds that cap slots at the trained context see the extended one"],
        }
    )
    out.append(_ollama(gguf, context, view.model_type or "", rope_freqs=False, from_hf=True))
    out += _modelled(q, {r["runtime"]: r for r in rows})
    return _record(root, context, block.to_dict(), _shape(view), out)


def _modelled(q: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """mlx-lm, exllamav3 and mistral.rs: a launch line where the project has one, and what inspect's
    row (modelled from source) says about this config."""
    commands = {"mlx-lm": f"mlx_lm.server --model {q}", "exllamav3": None, "mistral.rs": None}
    out = []
    for name, command in commands.items():
        row = rows.get(name)
        if row is None:
            continue
        said = "reads the YaRN config as written" if row["verdict"] == "same" else _why(row)
        notes = [f"{name} {said} (modelled from its source, not run here)"]
        if command is None:
            notes.append(f"load the checkpoint directory in {name}; yarnconv knows no stable launch command for it")
        out.append({"runtime": name, "command": command, "notes": notes})
    return out


def _gguf_hints(path: Path) -> dict[str, Any]:
    from yarnconv.gguf.file import read_header, shard_paths
    from yarnconv.gguf.llama_rope import read_rope

    shards = [read_header(p) for p in shard_paths(path)]
    h = shards[0]
    arch = h.arch or "?"
    keys = read_rope(shards)
    context = keys.context_length or 0
    q = shlex.quote(str(path))
    yarn = keys.scaling_type == "yarn" or keys.applies_freqs
    if keys.applies_freqs:
        note = "the file's rope_freqs.weight and keys set the rope: no --rope-scaling flags"
    elif yarn:
        note = "the file's YaRN keys set the rope: no --rope-scaling flags"
    else:
        note = "no YaRN keys: llama.cpp runs plain RoPE (add them with yarnconv extend FILE --scale S)"
    out = [{"runtime": "llama.cpp", "command": f"llama-server -m {q} -c {context}", "notes": [note, f"context_length is {context}: llama-server builds before PR #28030 cap each slot at it"]}]
    out.append(_ollama(path.name, context, arch, rope_freqs=keys.has_rope_freqs, from_hf=False))
    out.append({"runtime": "vLLM / SGLang / transformers", "command": None, "notes": ["serve the HF checkpoint this file was exported from; `yarnconv hints DIR` prints those commands"]})
    heads = h.get(f"{arch}.attention.head_count")
    kv = h.get(f"{arch}.attention.head_count_kv", heads)
    dim = h.get(f"{arch}.attention.key_length") or (h.get(f"{arch}.embedding_length") // heads if heads else None)
    layers = h.get(f"{arch}.block_count")
    shape = CacheShape(layers, kv, dim) if layers and kv and dim else None
    block = (keys.recorded or {}).get("rope") or keys.block().to_dict()  # the plan yarnconv wrote, else llama.cpp's reading
    return _record(path, context, block, shape, out)


def _ollama(gguf: str, context: int, arch: str, *, rope_freqs: bool, from_hf: bool) -> dict[str, Any]:
    modelfile = f"FROM ./{gguf}\nPARAMETER num_ctx {context}\n"
    notes = ["num_ctx defaults to 2048 whatever the model's context; the Modelfile sets it"]
    if arch in OLLAMA_READS_YARN:
        notes.append("ollama's Go qwen3 engine reads the YaRN keys but passes attn_factor 1/(1 + 0.1 ln s), cancelling ggml's magnitude: YaRN's frequencies at magnitude 1 (from source; `yarnconv inspect` shows the row); llama.cpp runs the planned magnitude")
    elif arch in OLLAMA_IGNORES_YARN:
        notes.append(f"ollama's Go {arch} engine reads rope.freq_scale only, not the YaRN keys (from source): run it in llama.cpp")
    elif not rope_freqs:
        fix = "export with --gguf-rope freqs, which writes rope_freqs.weight" if arch in ("llama", "mistral") else "run it in llama.cpp"
        notes.append(
            f"ollama runs {arch} in its vendored llama.cpp by default, which reads the YaRN keys; its Go {arch} engine (OLLAMA_NEW_ENGINE=1) "
            f"reads rope.freq_scale and rope_freqs.weight only (from source): {fix} to be safe in both"
        )
    if from_hf:
        notes.append("make the GGUF first (the llama.cpp line)")
    return {"runtime": "ollama", "command": "ollama create NAME -f Modelfile", "modelfile": modelfile, "notes": notes}


def _why(row: dict[str, Any]) -> str:
    if row["verdict"] in ("fails", "unsupported", "unknown"):
        return f"{row['verdict']} ({row.get('error')})"
    fix = "; use transformers >= 4.56" if row["runtime"].startswith("transformers") else ""
    return f"reads it differently ({'; '.join(dict.fromkeys(row['notes'])) or 'inv_freq or magnitude differs'}){fix}"


def _record(path: Path, context: int, rope: dict[str, Any], shape: CacheShape | None, out: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "path": str(path),
        "context": context,
        "rope": rope,
        "kv_cache_bytes": kv_cache(shape, context),
        "kv_cache_flags": KV_FLAGS,
        "cache_shape": None if shape is None else shape.__dict__,
        "runtimes": out,
    }
