"""GGUF key/value pairs in the wire format, for header rewrites (patch, split): scalars and
strings only, and the padding pair that keeps spare header room (docs/gguf.md §6)."""

from __future__ import annotations

import struct
from typing import Any

from yarnconv.gguf.file import _SCALAR, PAD_KEY, GGUFValueType


def _encode_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def encode_kv(key: str, vtype: GGUFValueType, value: Any) -> bytes:
    """One scalar or string pair in GGUF's wire format."""
    head = _encode_string(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        return head + _encode_string(value)
    if vtype in _SCALAR:
        return head + struct.pack(_SCALAR[vtype], value)
    raise ValueError(f"yarnconv only re-encodes scalars and strings, not {vtype.name}")


def pad_kv(total: int) -> bytes:
    """A ``PAD_KEY`` pair that is exactly ``total`` bytes long (its string holds spaces)."""
    n = total - len(encode_kv(PAD_KEY, GGUFValueType.STRING, ""))
    if n < 1:
        raise ValueError(f"a padding pair needs more than {total} bytes")
    return encode_kv(PAD_KEY, GGUFValueType.STRING, " " * n)


PAD_MIN = len(encode_kv(PAD_KEY, GGUFValueType.STRING, " "))
