"""The proof: what real runtimes build from an artifact, compared with yarnconv's plan.

``check`` holds the verdict type and its thresholds, ``rotary`` asks transformers for the
rotary buffers it builds, ``logits`` compares two runtimes' logits on the same tokens, and
``demo`` strings them together on the built-in model.
"""
