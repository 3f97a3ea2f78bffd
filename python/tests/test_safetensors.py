"""phxfs.safetensors against the safetensors package (the reference)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

safetensors = pytest.importorskip("safetensors")
import safetensors.numpy as stnp  # noqa: E402

import phxfs  # noqa: E402
from phxfs.safetensors import (  # noqa: E402
    MAX_HEADER_SIZE,
    SafetensorError,
    load_file,
    numpy_dtype,
    safe_open,
    save_file,
)

from st_util import BITS, as_reference, build, from_raw_header, reference  # noqa: E402

NUMPY_NATIVE = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "F16": np.float16, "I32": np.int32, "U32": np.uint32, "F32": np.float32,
    "I64": np.int64, "U64": np.uint64, "F64": np.float64, "C64": np.complex64,
}


def sample(rng: np.random.Generator, dtype: Any, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape))
    raw = rng.integers(0, 256, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
    if np.dtype(dtype) == np.bool_:
        raw = (raw & 1).astype(np.uint8)
    return raw.view(dtype).reshape(shape)


def many_tensors(seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t: Dict[str, np.ndarray] = {}
    shapes = [(), (1,), (7,), (3, 5), (2, 3, 4), (0,), (4, 0, 2), (129,)]
    for code, dt in NUMPY_NATIVE.items():
        for i, shape in enumerate(shapes):
            t[f"{code.lower()}.{i}"] = sample(rng, dt, shape)
    return t


def test_numpy_parity_with_reference(tmp: Path) -> None:
    tensors = many_tensors()
    p = tmp / "ref.safetensors"
    stnp.save_file(tensors, str(p), metadata={"format": "np", "é": "ü"})
    ours = load_file(p)
    ref = stnp.load_file(str(p))
    assert ours.keys() == ref.keys() == tensors.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype, k
        assert ours[k].shape == ref[k].shape, k
        assert ours[k].tobytes() == ref[k].tobytes(), k
    with safe_open(p) as f, safetensors.safe_open(str(p), framework="np") as g:
        assert f.keys() == list(g.keys())
        assert f.metadata() == g.metadata()


def test_save_file_is_byte_identical(tmp: Path) -> None:
    tensors = many_tensors(1)
    a, b = tmp / "ours.safetensors", tmp / "ref.safetensors"
    # (one metadata key at most: the reference writes a Rust HashMap, whose
    # order differs from run to run)
    for meta in (None, {}, {"name": "x\n\"y\"\u00e9\t\x01/"}):
        save_file(tensors, a, metadata=meta)
        stnp.save_file(tensors, str(b), metadata=meta)
        assert a.read_bytes() == b.read_bytes()
    meta = {"k": "v", "name": "n", "z": ""}
    save_file(tensors, a, metadata=meta)
    with safetensors.safe_open(str(a), framework="np") as g:
        assert g.metadata() == meta


def test_save_non_contiguous_and_big_endian(tmp: Path) -> None:
    base = np.arange(100, dtype=np.float64).reshape(10, 10)
    tensors = {"t": base.T, "s": base[::2, 1::3], "be": np.arange(6, dtype=">i4")}
    p = tmp / "nc.safetensors"
    save_file(tensors, p)
    got = stnp.load_file(str(p))  # the reference reads what we wrote
    np.testing.assert_array_equal(got["t"], base.T)
    np.testing.assert_array_equal(got["s"], base[::2, 1::3])
    np.testing.assert_array_equal(got["be"], np.arange(6))
    with pytest.raises(ValueError, match="no safetensors dtype"):
        save_file({"x": np.zeros(2, np.float128 if hasattr(np, "float128") else "U3")}, p)
    with pytest.raises(ValueError, match="metadata"):
        save_file({"x": np.zeros(2)}, p, metadata={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        save_file({"x": [1, 2]}, p)


@pytest.mark.parametrize("code", ["BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F16", "BOOL", "C64"])
def test_dtypes_numpy_lacks_keep_their_bytes(tmp: Path, code: str) -> None:
    rng = np.random.default_rng(3)
    item = BITS[code] // 8
    shape = [3, 5]
    raw = rng.integers(0, 256, size=15 * item, dtype=np.uint8)
    if code == "BOOL":
        raw &= 1
    raw = raw.tobytes()
    blob = build([("x", code, shape, raw), ("y", "F32", [2], np.ones(2, np.float32).tobytes())])
    p = tmp / f"{code}.safetensors"
    p.write_bytes(blob)
    ours = load_file(p)
    assert as_reference(ours, {"x": code, "y": "F32"}) == reference(blob)
    assert ours["x"].dtype == numpy_dtype(code)
    assert ours["x"].dtype.itemsize == item


def test_sub_byte_dtypes_load_as_packed_bytes(tmp: Path) -> None:
    blob = build([("f4", "F4", [3, 4], bytes(range(6))), ("f6", "F6_E2M3", [4], bytes([1, 2, 3]))])
    p = tmp / "packed.safetensors"
    p.write_bytes(blob)
    t = load_file(p)
    assert t["f4"].shape == (3, 2) and t["f4"].tobytes() == bytes(range(6))
    assert t["f6"].shape == (3,) and t["f6"].tobytes() == bytes([1, 2, 3])
    assert {k: v[2] for k, v in reference(blob).items()} == {"f4": bytes(range(6)), "f6": bytes([1, 2, 3])}


def _root(a: np.ndarray) -> Any:
    while a.base is not None:
        a = a.base
    return a


def test_one_allocation_and_alignment(tmp: Path) -> None:
    tensors = many_tensors(2)
    p = tmp / "one.safetensors"
    save_file(tensors, p)
    t = load_file(p)
    # every tensor is a view into one allocation: no copy per tensor
    assert len({id(_root(a)) for a in t.values()}) == 1
    starts = [a.ctypes.data for a in t.values() if a.nbytes]
    assert min(starts) % 4096 == 0  # the allocation is page aligned
    for a in t.values():
        assert a.flags.aligned and a.ctypes.data % a.dtype.itemsize == 0


def test_misaligned_tensor_still_loads(tmp: Path) -> None:
    # Another writer's layout: an I8 of 1 byte, then an F32 at offset 1.
    f32 = np.array([1.5, -2.0, 3.25], np.float32)
    blob = build([("b", "I8", [1], b"\x07"), ("f", "F32", [3], f32.tobytes())])
    p = tmp / "mis.safetensors"
    p.write_bytes(blob)
    t = load_file(p)
    np.testing.assert_array_equal(t["f"], f32)
    assert t["b"].tolist() == [7]
    assert reference(blob)["f"][2] == t["f"].tobytes()


def test_safe_open_lazy(tmp: Path) -> None:
    rng = np.random.default_rng(4)
    tensors = {
        "w": sample(rng, np.float32, (50, 6)),
        "e": sample(rng, np.int16, (9,)),
        "s": np.array(3.5, np.float64),
        "z": np.zeros((0, 4), np.float32),
    }
    p = tmp / "lazy.safetensors"
    stnp.save_file(tensors, str(p), metadata={"a": "b"})
    with safe_open(p, framework="np") as f, safetensors.safe_open(str(p), framework="np") as g:
        assert f.keys() == sorted(tensors) == list(g.keys())
        assert f.metadata() == {"a": "b"}
        for k in tensors:
            np.testing.assert_array_equal(f.get_tensor(k), g.get_tensor(k))
            assert f.get_tensor(k).shape == g.get_tensor(k).shape
        sl, rs = f.get_slice("w"), g.get_slice("w")
        assert sl.get_shape() == [50, 6] and sl.get_dtype() == "F32"
        for key in [slice(10, 20), slice(None, None, 7), slice(3, 3), slice(0, 50)]:
            np.testing.assert_array_equal(sl[key], rs[key])
        # past the end and negative: numpy's meaning (the reference refuses both)
        np.testing.assert_array_equal(sl[45:100], tensors["w"][45:100])
        np.testing.assert_array_equal(sl[-5:], tensors["w"][-5:])
        np.testing.assert_array_equal(sl[2:40:3, 1:4], rs[2:40:3, 1:4])
        np.testing.assert_array_equal(sl[7], tensors["w"][7])
        np.testing.assert_array_equal(sl[-1, 2:], tensors["w"][-1, 2:])
        np.testing.assert_array_equal(sl[...], tensors["w"])
        np.testing.assert_array_equal(f.get_slice("s")[...], tensors["s"])
        with pytest.raises(IndexError):
            sl[50]
        with pytest.raises(KeyError):
            f.get_tensor("nope")
        all_ = f.get_tensors()
        assert all_.keys() == tensors.keys()
        assert f.offset_keys()[0] == "s"  # F64 first in safetensors' layout


def test_safe_open_reads_only_what_it_needs(tmp: Path) -> None:
    w = np.arange(1 << 16, dtype=np.float32).reshape(256, 256)
    p = tmp / "partial.safetensors"
    save_file({"w": w}, p)
    phxfs.reset_stats(0)
    with safe_open(p) as f:
        header_bytes = sum(x.read_bytes for x in phxfs.stats(0).paths.values())
        rows = f.get_slice("w")[100:110]
    np.testing.assert_array_equal(rows, w[100:110])
    read = sum(x.read_bytes for x in phxfs.stats(0).paths.values()) - header_bytes
    assert read == 10 * 256 * 4


def test_sharded_index(tmp: Path) -> None:
    rng = np.random.default_rng(5)
    shard1 = {"a.w": sample(rng, np.float32, (8, 8)), "a.b": sample(rng, np.float16, (8,))}
    shard2 = {"b.w": sample(rng, np.int64, (3, 3)), "b.u": sample(rng, np.uint8, (17,))}
    d = tmp / "ckpt"
    d.mkdir()
    stnp.save_file(shard1, str(d / "model-00001-of-00002.safetensors"))
    stnp.save_file(shard2, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in shard1}
    wm.update({k: "model-00002-of-00002.safetensors" for k in shard2})
    index = {"metadata": {"total_size": 1234}, "weight_map": wm}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    expect = {**shard1, **shard2}
    for target in (d / "model.safetensors.index.json", d):
        t = load_file(target)
        assert t.keys() == expect.keys()
        for k, v in expect.items():
            assert t[k].dtype == v.dtype and t[k].tobytes() == v.tobytes()
    # a tensor of the weight map missing from its shard
    wm2 = dict(wm, ghost="model-00002-of-00002.safetensors")
    (d / "bad.index.json").write_text(json.dumps({"weight_map": wm2}))
    with pytest.raises(SafetensorError, match="ghost"):
        load_file(d / "bad.index.json")
    (d / "escape.index.json").write_text(json.dumps({"weight_map": {"x": "../x.safetensors"}}))
    with pytest.raises(SafetensorError, match="outside"):
        load_file(d / "escape.index.json")
    (d / "nomap.index.json").write_text("{}")
    with pytest.raises(SafetensorError, match="weight_map"):
        load_file(d / "nomap.index.json")
    with pytest.raises(FileNotFoundError):
        (d / "gone.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
        load_file(d / "gone.index.json")


def test_device_and_framework_arguments(tmp: Path) -> None:
    p = tmp / "x.safetensors"
    save_file({"x": np.ones(3, np.float32)}, p)
    with pytest.raises(ValueError, match="device"):
        load_file(p, device="tpu")
    with pytest.raises(ValueError, match="framework"):
        load_file(p, framework="tf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host memory"):
        load_file(p, device="cuda:0", framework="np")


# ---------------------------------------------------------------------------
# Malformed files: each a SafetensorError (a ValueError) naming the problem.
# ---------------------------------------------------------------------------

F32x2 = np.ones(2, np.float32).tobytes()
OK_TENSOR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _bad_cases() -> Dict[str, Any]:
    return {
        "empty file": (b"", "too short"),
        "7 bytes": (b"\x10\x00\x00\x00\x00\x00\x00", "too short"),
        "length only": ((0).to_bytes(8, "little"), "length is 0"),
        "huge length": ((2**63).to_bytes(8, "little") + b"{}", "exceeds the limit"),
        "length past limit": ((MAX_HEADER_SIZE + 1).to_bytes(8, "little") + b"{}", "exceeds"),
        "length past eof": (from_raw_header(b'{"x":1}', b"", length=100), "past the end"),
        "not json": (from_raw_header(b"{not json}", b""), "not valid JSON"),
        "not utf-8": (from_raw_header(b'{"\xff":1}', b""), "UTF-8"),
        "not an object": (from_raw_header(b"[1, 2]", b""), "start with '{'"),
        "nan": (from_raw_header(b'{"__metadata__": {"a": NaN}}', b""), "NaN"),
        "duplicate key": (from_raw_header(b'{"x":%s,"x":%s}' % ((json.dumps(OK_TENSOR).encode(),) * 2), F32x2), "twice"),
        "metadata not str": (from_raw_header({"__metadata__": {"a": 1}}, b""), "__metadata__"),
        "entry not object": (from_raw_header({"x": [1]}, b""), "not a JSON object"),
        "missing key": (from_raw_header({"x": {"dtype": "F32", "shape": [2]}}, F32x2), "missing"),
        "extra key": (from_raw_header({"x": dict(OK_TENSOR, extra=1)}, F32x2), "unexpected"),
        "unknown dtype": (from_raw_header({"x": dict(OK_TENSOR, dtype="F128")}, F32x2), "unknown dtype"),
        "dtype not str": (from_raw_header({"x": dict(OK_TENSOR, dtype=5)}, F32x2), "unknown dtype"),
        "float shape": (from_raw_header({"x": dict(OK_TENSOR, shape=[2.0])}, F32x2), "shape"),
        "bool shape": (from_raw_header({"x": dict(OK_TENSOR, shape=[True, 2])}, F32x2), "shape"),
        "negative shape": (from_raw_header({"x": dict(OK_TENSOR, shape=[-2])}, F32x2), "shape"),
        "shape not list": (from_raw_header({"x": dict(OK_TENSOR, shape="2")}, F32x2), "shape"),
        "size mismatch": (from_raw_header({"x": dict(OK_TENSOR, shape=[3])}, F32x2), "12 bytes"),
        "offsets reversed": (from_raw_header({"x": dict(OK_TENSOR, data_offsets=[8, 0])}, F32x2), "end before"),
        "offsets one": (from_raw_header({"x": dict(OK_TENSOR, data_offsets=[0])}, F32x2), "data_offsets"),
        "offsets negative": (from_raw_header({"x": dict(OK_TENSOR, data_offsets=[-8, 0])}, F32x2), "data_offsets"),
        "offsets past data": (from_raw_header({"x": dict(OK_TENSOR, data_offsets=[8, 16])}, F32x2), "past the data"),
        "truncated data": (from_raw_header({"x": OK_TENSOR}, F32x2[:5]), "past the data"),
        "trailing bytes": (from_raw_header({"x": OK_TENSOR}, F32x2 + b"zz"), "trailing"),
        "overlap": (
            from_raw_header(
                {"x": OK_TENSOR, "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32x2
            ),
            "overlap",
        ),
        "gap": (
            from_raw_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32x2),
            "gap",
        ),
        "sub-byte remainder": (from_raw_header({"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"ab"), "whole number of bytes"),
        "deep json": (from_raw_header(b"{" + b'"a":[' * 100000 + b"]" * 100000 + b"}", b""), "JSON"),
    }


# The reference lets these through (serde keeps the last of duplicate keys
# and ignores unknown fields); phxfs refuses them: a duplicate key makes the
# file mean two things, and an unknown field is a writer phxfs cannot follow.
STRICTER_THAN_REFERENCE = {"duplicate key", "extra key"}


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_malformed_file(tmp: Path, case: str) -> None:
    blob, message = _bad_cases()[case]
    p = tmp / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(SafetensorError, match=message) as ei:
        load_file(p)
    assert isinstance(ei.value, ValueError)
    assert str(p) in str(ei.value)
    with pytest.raises(SafetensorError):
        safe_open(p)
    if case in STRICTER_THAN_REFERENCE:
        reference(blob)  # loads: phxfs refuses what the reference lets through
    else:
        with pytest.raises(Exception):  # the reference refuses these too
            reference(blob)
