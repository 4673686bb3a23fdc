"""Run inside vLLM's own interpreter (its virtualenv pins its own transformers): never imports yarnconv.

Usage: ``python vllm_child.py JOB.json RESULT.json``. The job says what to do:

* ``{"mode": "run", "model": DIR, "max_model_len": N, "requests": [{"tokens": [...], "positions": [...] | null}]}``:
  load DIR as ``vllm serve DIR --max-model-len N`` would (float32, eager), read the rotary embedding
  vLLM built, and return each request's prompt logprobs (top ``logprobs`` per position plus the
  actual next token). A request with ``positions`` runs with those rope positions instead of
  0..n-1: the model's forward is wrapped in the worker to remap them, refused unless every position
  lies inside vLLM's cos/sin cache (its CPU kernel does not bounds-check).
* ``{"mode": "config", "dirs": [...]}``: for each config, without weights, vLLM's derived
  ``max_model_len`` and the rotary embedding its model class asks ``get_rope`` for and gets.
* ``{"mode": "serve_args", "args": [...]}``: parse a ``vllm serve`` command line with vLLM's own parser
  and return the context its engine config derives (or the error it raises).

The result file is JSON; errors are ``{"error": "..."}`` with exit status 0, tracebacks on stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from typing import Any


def _rope_facts(rotary: Any) -> dict[str, Any]:
    """What a vLLM rotary module computes: its class and parameters, and from its cos/sin cache the
    effective frequency of every pair (angle at the last row / that row) and the magnitude."""
    import numpy as np

    cache = rotary.cos_sin_cache.detach().float().cpu().numpy().astype(np.float64)
    half = cache.shape[1] // 2
    angles = np.unwrap(np.arctan2(cache[:, half:], cache[:, :half]), axis=0)
    last = cache.shape[0] - 1
    facts: dict[str, Any] = {
        "class": type(rotary).__name__,
        "cache_rows": int(cache.shape[0]),
        "rotary_dim": int(rotary.rotary_dim),
        "head_size": int(rotary.head_size),
        "base": float(rotary.base),
        "max_position_embeddings": int(rotary.max_position_embeddings),
        "is_neox_style": bool(rotary.is_neox_style),
        "inv_freq": (angles[last] / last).tolist() if last > 0 else [],
        "magnitude": float(np.hypot(cache[0, :half], cache[0, half:]).mean()),
    }
    for name in ("scaling_factor", "mscale", "beta_fast", "beta_slow", "truncate"):
        value = getattr(rotary, name, None)
        if isinstance(value, (int, float, bool)):
            facts[name] = value
    return facts


def _find_rotary(model: Any) -> Any:
    return next((m for m in model.modules() if hasattr(m, "cos_sin_cache")), None)


def run(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from vllm import SamplingParams

    default = serve_args({"args": [job["model"]]})  # what `vllm serve DIR` with no flags would serve
    try:
        llm = _llm(job)
    except Exception as exc:  # noqa: BLE001 - vLLM's refusal is the answer
        traceback.print_exc()
        return {"error": _message(exc), "default": default}

    def inspect(worker: Any) -> dict[str, Any]:
        return _rope_facts(_find_rotary(worker.model_runner.model))

    def remap(worker: Any, table: list[int] | None) -> None:
        model = worker.model_runner.model
        if table is None:
            model.__dict__.pop("forward", None)
            return
        lookup = torch.tensor(table, dtype=torch.long)
        inner = type(model).forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            pos = kwargs["positions"] if "positions" in kwargs else args[1]
            mapped = torch.where(pos < len(lookup), lookup[pos.clamp(max=len(lookup) - 1)], pos)
            if "positions" in kwargs:
                kwargs["positions"] = mapped
            else:
                args = (args[0], mapped, *args[2:])
            return inner(model, *args, **kwargs)

        model.forward = forward

    rope = llm.collective_rpc(inspect)[0]
    config = llm.llm_engine.model_config
    params = SamplingParams(max_tokens=1, prompt_logprobs=job.get("logprobs", 20), temperature=0.0)
    results = []
    for request in job["requests"]:
        positions = request.get("positions")
        if positions is not None and max(positions) >= rope["cache_rows"]:
            results.append({"error": f"position {max(positions)} is past vLLM's cos/sin cache ({rope['cache_rows']} rows): not remapped"})
            continue
        llm.collective_rpc(remap, args=(positions,))
        try:
            out = llm.generate([{"prompt_token_ids": request["tokens"]}], params, use_tqdm=False)[0]
        finally:
            llm.collective_rpc(remap, args=(None,))
        rows = []
        for i, entry in enumerate(out.prompt_logprobs or []):
            if entry is None or i == 0:
                continue
            rows.append({"token": request["tokens"][i], "top": {str(t): lp.logprob for t, lp in entry.items()}})
        results.append({"rows": rows})
    return {"vllm_version": _version(), "max_model_len": int(config.max_model_len), "default": default, "rope": rope, "requests": results}


def _llm(job: dict[str, Any]) -> Any:
    from vllm import LLM

    return LLM(
        model=job["model"],
        dtype=job.get("dtype", "float32"),
        max_model_len=job["max_model_len"],
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_logprobs=job.get("logprobs", 20),
        max_num_batched_tokens=job.get("batch_tokens", 2048),  # chunked prefill: prompt logprobs per chunk, memory bounded
        seed=0,
    )


def _version() -> str:
    import vllm

    return str(vllm.__version__)


def serve_args(job: dict[str, Any]) -> dict[str, Any]:
    """What ``vllm serve ARGS`` derives: ARGS through vLLM's own ``serve`` parser, then the model part
    of its engine config (the context it will serve and the rope parameters it will build from)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = ServeSubcommand().subparser_init(FlexibleArgumentParser().add_subparsers())
    args = parser.parse_args(job["args"])
    if getattr(args, "model_tag", None) is not None:  # as ServeSubcommand.cmd does
        args.model = args.model_tag
    try:
        config = AsyncEngineArgs.from_cli_args(args).create_model_config()
    except Exception as exc:  # noqa: BLE001 - vLLM's own refusal is the answer
        return {"error": _message(exc)}
    rope = _jsonable(getattr(config.hf_text_config, "rope_parameters", None))
    return {"vllm_version": _version(), "max_model_len": int(config.max_model_len), "rope_parameters": rope}


def configs(job: dict[str, Any]) -> dict[str, Any]:
    """vLLM's reading of each config: derived max_model_len, and the ropes its model class builds.

    The model class is constructed on the meta device (no weights, no memory) with ``get_rope``
    recorded; each distinct call is replayed on the CPU to read the rotary module it returns."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers import rotary_embedding as re
    from vllm.model_executor.model_loader.utils import get_model_architecture

    if not ps.model_parallel_is_initialized():
        port = 29000 + os.getpid() % 1000
        with set_current_vllm_config(VllmConfig()):
            ps.init_distributed_environment(world_size=1, rank=0, distributed_init_method=f"tcp://127.0.0.1:{port}", local_rank=0, backend="gloo")
            ps.initialize_model_parallel(1, 1)

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    original = re.get_rope

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        with torch.device("cpu"):  # the rest of the model stays on the meta device
            return original(*args, **kwargs)

    out: dict[str, Any] = {"vllm_version": _version(), "dirs": {}}
    for d in job["dirs"]:
        calls.clear()
        entry: dict[str, Any] = {}
        try:
            vconfig = EngineArgs(model=d, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, load_format="dummy").create_engine_config()
            entry["max_model_len"] = int(vconfig.model_config.max_model_len)
            text = vconfig.model_config.hf_text_config
            entry["rope_parameters"] = _jsonable(getattr(text, "rope_parameters", None))
            model_class, _ = get_model_architecture(vconfig.model_config)
            entry["model_class"] = model_class.__name__  # TransformersForCausalLM: transformers' own modeling code runs the rope
            patched = [m for name, m in list(sys.modules.items()) if name.startswith("vllm.") and vars(m).get("get_rope") is original]
            for m in patched:
                m.get_rope = recording
            try:
                with set_current_vllm_config(vconfig), torch.device("meta"):
                    model_class(vllm_config=vconfig, prefix="")
            finally:
                for m in patched:
                    m.get_rope = original
            ropes: dict[str, Any] = {}
            for args, kwargs in calls:  # one entry per distinct rotary embedding (Gemma 3: local and global)
                key = json.dumps(_jsonable({"args": list(args), "kwargs": {k: v for k, v in kwargs.items() if k != "dtype"}}), sort_keys=True)
                if key not in ropes:
                    with set_current_vllm_config(vconfig):
                        ropes[key] = {"get_rope": json.loads(key), **_rope_facts(original(*args, **kwargs))}
            entry["ropes"] = list(ropes.values())  # empty: no rotary embedding (ALiBi, learned positions)
        except Exception as exc:  # noqa: BLE001 - what vLLM raises is the answer
            entry = {"error": _message(exc)}
            traceback.print_exc()
        out["dirs"][d] = entry
    return out


def _message(exc: BaseException) -> str:
    """An exception in one line (pydantic's ValidationError puts vLLM's reason on its later lines)."""
    return f"{type(exc).__name__}: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:600]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def main() -> None:
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    try:
        result = {"run": run, "config": configs, "serve_args": serve_args}[job["mode"]](job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which words it
        traceback.print_exc()
        result = {"error": _message(exc)}
    with open(result_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)


if __name__ == "__main__":
    main()
