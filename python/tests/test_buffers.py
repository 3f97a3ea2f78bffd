"""How phxfs reads an object's memory: buffer protocol, DLPack and
__cuda_array_interface__ parsing (host DLPack from numpy is real; CAI objects
here are dicts describing memory that is never touched: inspect_buffer does
no I/O)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest

import phxfs


class DLPackOnly:
    """Exposes an array through DLPack alone (no buffer protocol), as a CPU
    torch tensor does."""

    def __init__(self, arr: np.ndarray, legacy: bool = False) -> None:
        self._arr = arr
        self._legacy = legacy
        self.calls: list = []

    def __dlpack__(self, **kw: Any) -> Any:
        self.calls.append(kw)
        if self._legacy:
            if "max_version" in kw:
                raise TypeError("unexpected keyword argument 'max_version'")
            return self._arr.__dlpack__()
        return self._arr.__dlpack__(**kw)

    def __dlpack_device__(self) -> Any:
        return self._arr.__dlpack_device__()


class FakeCAI:
    def __init__(self, cai: Dict[str, Any]) -> None:
        self.__cuda_array_interface__ = cai


def cai(
    ptr: int = 0x7F0000000000,
    shape: tuple = (4, 8),
    typestr: str = "<f4",
    readonly: bool = False,
    strides: Optional[tuple] = None,
    **extra: Any,
) -> FakeCAI:
    d: Dict[str, Any] = {
        "shape": shape,
        "typestr": typestr,
        "data": (ptr, readonly),
        "version": 3,
        "strides": strides,
    }
    d.update(extra)
    return FakeCAI(d)


def test_dlpack_host_numpy() -> None:
    arr = np.arange(60, dtype=np.int32).reshape(3, 20)
    d = phxfs.inspect_buffer(arr, writable=True, via="dlpack")
    assert d == {
        "ptr": arr.ctypes.data,
        "size": 240,
        "kind": "host",
        "device": -1,
        "readonly": False,
        "via": "dlpack",
    }
    view = arr[1:]  # a byte offset into the same memory
    assert phxfs.inspect_buffer(view, via="dlpack")["ptr"] == arr.ctypes.data + 80


def test_dlpack_readonly_flag_and_contiguity() -> None:
    arr = np.zeros(16, np.float64)
    arr.flags.writeable = False
    d = phxfs.inspect_buffer(arr, writable=False, via="dlpack")
    assert d["readonly"] is True and d["size"] == 128
    with pytest.raises(TypeError, match="read-only"):
        phxfs.inspect_buffer(arr, writable=True, via="dlpack")
    with pytest.raises(ValueError, match="contiguous"):
        phxfs.inspect_buffer(np.zeros((4, 4))[:, 0], via="dlpack")
    # size-1 dimensions with any stride are still contiguous
    col = np.zeros((4, 1), np.float32)[:, :1]
    assert phxfs.inspect_buffer(col, via="dlpack")["size"] == 16


def test_dlpack_capsule_given_back() -> None:
    arr = np.zeros(1000, np.uint8)
    base = sys.getrefcount(arr)
    for _ in range(50):
        phxfs.inspect_buffer(arr, via="dlpack")
    assert sys.getrefcount(arr) == base  # the deleter ran each time


def test_dlpack_only_object_does_io(tmp: Path) -> None:
    p = tmp / "d.bin"
    payload = np.arange(1000, dtype=np.float32)
    src = DLPackOnly(payload)
    with phxfs.File(p, "w+") as f:
        assert f.write_from(src) == 4000
        out = np.zeros(1000, np.float32)
        dst = DLPackOnly(out)
        assert phxfs.inspect_buffer(dst)["via"] == "dlpack"
        assert f.read_into(dst, file_offset=4) == 3996
        assert f.pread(DLPackOnly(out[:10]), file_offset=0).result() == 40
    assert (out[10:999] == payload[11:]).all() and (out[:10] == payload[:10]).all()
    # a host producer is asked for no stream, and for a versioned capsule
    assert dst.calls[0] == {"max_version": (1, 0)}


def test_dlpack_legacy_producer() -> None:
    arr = np.zeros(8, np.int16)
    obj = DLPackOnly(arr, legacy=True)
    d = phxfs.inspect_buffer(obj, writable=True)
    assert (d["ptr"], d["size"], d["via"]) == (arr.ctypes.data, 16, "dlpack")
    assert obj.calls == [{"max_version": (1, 0)}, {}]


def test_buffer_protocol_preferred_for_host_numpy() -> None:
    arr = np.zeros(10)
    assert phxfs.inspect_buffer(arr)["via"] == "buffer"


def test_cai_parsing() -> None:
    d = phxfs.inspect_buffer(cai(), writable=True)
    assert d == {
        "ptr": 0x7F0000000000,
        "size": 128,
        "kind": "cuda",
        "device": -1,
        "readonly": False,
        "via": "cuda_array_interface",
    }
    # explicit C-order strides are fine; so are size-1 dims
    assert phxfs.inspect_buffer(cai(strides=(32, 4)))["size"] == 128
    assert phxfs.inspect_buffer(cai(shape=(4, 1), strides=(4, 999)))["size"] == 16
    assert phxfs.inspect_buffer(cai(shape=(0, 3), ptr=0))["size"] == 0
    assert phxfs.inspect_buffer(cai(typestr="|u1", shape=(7,)))["size"] == 7
    assert phxfs.inspect_buffer(cai(typestr="<c16", shape=(2,)))["size"] == 32
    assert phxfs.inspect_buffer(cai(stream=None))["size"] == 128  # v3: nothing to wait for


@pytest.mark.parametrize(
    "obj, exc, match",
    [
        (cai(readonly=True), TypeError, "read-only"),
        (cai(strides=(4, 16)), ValueError, "not C-contiguous"),
        (cai(typestr="f4"), ValueError, "typestr"),
        (cai(typestr="<fx"), ValueError, "typestr"),
        (cai(typestr="<f0"), ValueError, "typestr"),
        (cai(shape=(-1, 2)), ValueError, "negative"),
        (cai(shape=(2**40, 2**40)), ValueError, "overflow"),
        (cai(ptr=0), ValueError, "null"),
        (cai(mask=object()), ValueError, "masked"),
        (cai(stream=0), ValueError, "stream"),
        (FakeCAI({"shape": (1,), "typestr": "<f4", "version": 2}), ValueError, "'data'"),
        (FakeCAI([1, 2]), ValueError, "not a dict"),
    ],
)
def test_cai_malformed(obj: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        phxfs.inspect_buffer(obj, writable=True)


def test_cai_stream_is_synchronized() -> None:
    # A v3 stream must be waited for before I/O; without a CUDA driver that
    # is impossible, and phxfs says so instead of racing the producer.
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a CUDA driver is present: covered by the GPU tests")
    except OSError:
        pass
    with pytest.raises(OSError) as ei:
        phxfs.inspect_buffer(cai(stream=1))
    assert ei.value.errno == errno.ENODEV
    assert "libcuda" in str(ei.value)


def test_unsupported_objects() -> None:
    for obj in (None, 3, "text", [1, 2]):
        with pytest.raises(TypeError, match="needs a buffer"):
            phxfs.inspect_buffer(obj)
    with pytest.raises(ValueError, match="unknown buffer protocol"):
        phxfs.inspect_buffer(bytearray(1), via="magic")


class FailingCAI(DLPackOnly):
    """torch raises from __cuda_array_interface__ for dtypes CAI cannot name
    (float8) and for tensors that require grad; DLPack must then be used."""

    @property
    def __cuda_array_interface__(self) -> Any:
        raise KeyError("torch.float8_e4m3fn")


def test_failing_cai_falls_back_to_dlpack() -> None:
    arr = np.zeros(12, np.uint8)
    d = phxfs.inspect_buffer(FailingCAI(arr), writable=True)
    assert (d["via"], d["ptr"], d["size"]) == ("dlpack", arr.ctypes.data, 12)
