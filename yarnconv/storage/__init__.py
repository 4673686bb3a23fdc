"""Bytes on disk: safetensors headers (``weights``), files and links (``files``), output that
appears whole or not at all (``atomic``), progress bars, and where a model comes from (``sources``)."""
