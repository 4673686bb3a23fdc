"""Hugging Face checkpoints: ``extend`` (a new directory whose weights are linked, never
rewritten), ``sidecar`` (precomputed rope buffers) and ``report`` (what ``inspect`` says)."""
