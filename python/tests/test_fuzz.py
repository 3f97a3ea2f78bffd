"""Random mutations of valid safetensors files: every outcome is either a
correct load (the bytes the header describes, as the reference reads them)
or a SafetensorError (a ValueError); never a crash, another exception or an
out-of-bounds read."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

pytest.importorskip("safetensors")

from phxfs.safetensors import SafetensorError, load_file, safe_open  # noqa: E402

from st_util import build, reference  # noqa: E402

ITERATIONS = 600


def seeds() -> List[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(4):
        tensors = []
        for i in range(1 + k * 2):
            code, dt = [("F32", np.float32), ("I8", np.int8), ("F16", np.float16),
                        ("BF16", np.uint16), ("I64", np.int64), ("BOOL", np.uint8)][(i + k) % 6]
            shape = [int(x) for x in rng.integers(0, 5, size=(i % 3) + 1)]
            n = int(np.prod(shape)) * np.dtype(dt).itemsize
            raw = rng.integers(0, 2, size=n, dtype=np.uint8).tobytes() if code == "BOOL" else rng.bytes(n)
            tensors.append((f"t{i}", code, shape, raw))
        out.append(build(tensors, metadata={"seed": str(k)} if k % 2 else None))
    return out


def _header(blob: bytes) -> Dict[str, Any]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n])


def _rebuild(blob: bytes, header: Dict[str, Any]) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + blob[8 + n :]


def mutate(rng: random.Random, blob: bytes) -> bytes:
    kind = rng.randrange(9)
    b = bytearray(blob)
    if kind == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        return bytes(b)
    if kind == 1:  # flip bytes of the length
        i = rng.randrange(8)
        b[i] = rng.randrange(256)
        return bytes(b)
    if kind == 2:  # truncate
        return bytes(b[: rng.randrange(len(b) + 1)])
    if kind == 3:  # append junk
        return bytes(b) + rng.randbytes(rng.randint(1, 16))
    if kind == 4:  # flip bytes inside the JSON
        n = int.from_bytes(blob[:8], "little")
        for _ in range(rng.randint(1, 3)):
            i = 8 + rng.randrange(max(min(n, len(b) - 8), 1))
            if i >= len(b):
                break
            b[i] = rng.choice(b'{}[]",:0123456789-eE. \\x')
        return bytes(b)
    try:
        h = _header(blob)
    except ValueError:  # an earlier mutation broke it already
        return bytes(b[:-1])
    if not isinstance(h, dict):
        return bytes(b)
    names = [k for k in h if k != "__metadata__" and isinstance(h[k], dict)]
    if not names:
        return bytes(b)
    t = h[rng.choice(names)]
    if kind == 5:  # change an offset
        j = rng.randrange(2)
        t["data_offsets"][j] = rng.choice(
            [t["data_offsets"][j] + rng.randint(-9, 9), -1, 2**64, 2**63 - 1, 0, 1.5, "7", None]
        )
    elif kind == 6:  # change the shape
        choice = rng.randrange(4)
        if choice == 0 and t["shape"]:
            t["shape"][rng.randrange(len(t["shape"]))] = rng.choice([0, 1, 2, 3, -1, 2**40, 2.0, True, None])
        elif choice == 1:
            t["shape"].append(rng.randint(0, 3))
        elif choice == 2:
            t["shape"] = t["shape"][:-1]
        else:
            t["shape"] = rng.choice([None, "3", {}, [[1]]])
    elif kind == 7:  # change the dtype
        t["dtype"] = rng.choice(["F32", "F64", "I8", "U8", "BF16", "F8_E4M3", "F4", "X", 3, None, "f32"])
    else:  # swap two tensors' offsets, or drop one
        if len(names) > 1 and rng.random() < 0.5:
            a, c = rng.sample(names, 2)
            h[a]["data_offsets"], h[c]["data_offsets"] = h[c]["data_offsets"], h[a]["data_offsets"]
        else:
            del h[rng.choice(names)]
    return _rebuild(blob, h)


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except SafetensorError as e:
        assert isinstance(e, ValueError)
        assert str(e)
        return e


def test_fuzz_headers(tmp: Path) -> None:
    rng = random.Random(1234)
    base = seeds()
    p = tmp / "fuzz.safetensors"
    loaded = refused = 0
    for it in range(ITERATIONS):
        blob = mutate(rng, rng.choice(base))
        if rng.random() < 0.3:
            blob = mutate(rng, blob)
        p.write_bytes(blob)
        got = outcome(lambda: load_file(p))
        try:
            ref = reference(blob)
        except Exception:
            ref = None
        if isinstance(got, SafetensorError):
            refused += 1
            continue
        loaded += 1
        # a load must be exactly what the file says, as the reference reads it
        assert ref is not None, f"iteration {it}: phxfs loaded what the reference refuses"
        hdr = _header(blob)
        assert got.keys() == ref.keys(), it
        for name, (code, shape, raw) in ref.items():
            assert hdr[name]["dtype"] == code
            assert list(got[name].shape) == shape, (it, name)
            assert got[name].tobytes() == raw, (it, name)
        # the lazy path agrees
        with safe_open(p) as f:
            for name in f.keys():
                assert f.get_tensor(name).tobytes() == ref[name][2]
    # the mutations exercise both outcomes
    assert loaded > 20 and refused > 200, (loaded, refused)
