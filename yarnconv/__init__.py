"""yarnconv: YaRN context extension for Hugging Face and GGUF checkpoints, proven with logits.

The package, by room:

* pure core (flat): :mod:`~yarnconv.rope` (the math), :mod:`~yarnconv.config` (any config layout
  -> one rope block -> per-runtime schemas, lint), :mod:`~yarnconv.families`,
  :mod:`~yarnconv.plan` (config in, new config out), :mod:`~yarnconv.runtimes` (what each
  runtime computes), :mod:`~yarnconv.options` (requests as data);
* :mod:`yarnconv.storage`: safetensors headers, files and links, atomic output, model sources;
* :mod:`yarnconv.hf`: extend and inspect HF checkpoints;
* :mod:`yarnconv.gguf`: GGUF headers, keys, vocab, export and patch;
* :mod:`yarnconv.verify`: what real runtimes build, compared with the plan;
* :mod:`yarnconv.api`: one entry per command (``yarnconv.extend``, ``yarnconv.export``,
  ``yarnconv.inspect``, ``yarnconv.demo``); :mod:`yarnconv.cli` parses and prints over it.
"""

from typing import Any

__version__ = "0.1.0"
_API = {"extend", "export", "inspect", "demo", "verify", "hints", "run", "push", "ExtendJob", "ExportJob", "GGUFOptions", "InspectJob", "DemoJob", "VerifyJob", "RunJob", "PushJob", "Result"}


def __getattr__(name: str) -> Any:
    """The API entries, imported on first use so ``import yarnconv`` stays cheap."""
    if name in _API:
        from yarnconv import api

        return getattr(api, name)
    if name == "ExtendRequest":
        from yarnconv.plan import ExtendRequest

        return ExtendRequest
    raise AttributeError(f"module 'yarnconv' has no attribute {name!r}")
