"""Helpers for the safetensors tests: building files by hand and comparing
with the reference implementation (safetensors.deserialize gives every
tensor's dtype code, shape and raw bytes, whatever the dtype)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}


def build(
    tensors: List[Tuple[str, str, List[int], bytes]],
    metadata: Optional[Dict[str, str]] = None,
    pad: bool = True,
) -> bytes:
    """A safetensors file of raw tensors, in the given order."""
    header: Dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    pos = 0
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        pos += len(raw)
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((-len(h)) % 8)
    return len(h).to_bytes(8, "little") + h + data


def from_raw_header(header: Any, data: bytes, length: Optional[int] = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if length is None else length
    return n.to_bytes(8, "little") + h + data


def reference(raw: bytes) -> Dict[str, Tuple[str, List[int], bytes]]:
    import safetensors

    return {n: (d["dtype"], list(d["shape"]), bytes(d["data"])) for n, d in safetensors.deserialize(raw)}


def as_reference(loaded: Dict[str, Any], header_dtypes: Dict[str, str]) -> Dict[str, Tuple[str, List[int], bytes]]:
    """Our numpy tensors in reference() form (sub-byte kinds excepted)."""
    out = {}
    for n, a in loaded.items():
        assert isinstance(a, np.ndarray)
        out[n] = (header_dtypes[n], list(a.shape), a.tobytes())
    return out
