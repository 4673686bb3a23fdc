"""yarnconv: YaRN context extension for Hugging Face and GGUF checkpoints, proven with logits.

Library entry points (the CLI is a thin layer over these):

* :func:`yarnconv.extend.extend` - write an extended checkpoint directory;
* :func:`yarnconv.inspect.inspect_model` - report on a checkpoint and lint its rope config;
* :mod:`yarnconv.rope` - the YaRN / linear / dynamic-NTK math;
* :mod:`yarnconv.config` - read any config layout, write per-runtime schemas.
"""

__version__ = "0.1.0"
