"""GPU tests (``pytest -m gpu``): device memory through
__cuda_array_interface__ (torch, CuPy) and DLPack, futures and batches into
device memory, and safetensors loaded straight into GPU memory. Skipped
without a CUDA GPU and torch (conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import phxfs

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


class DLPackOnly:
    """A tensor seen through DLPack alone (as JAX arrays are)."""

    def __init__(self, t: Any) -> None:
        self._t = t

    def __dlpack__(self, **kw: Any) -> Any:
        return self._t.__dlpack__(**kw)

    def __dlpack_device__(self) -> Any:
        return self._t.__dlpack_device__()


def test_torch_cuda_round_trip(tmp: Path) -> None:
    x = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    p = tmp / "t.bin"
    with phxfs.File(p, "w+") as f:
        assert f.write_from(x) == x.numel() * 4
        y = torch.empty_like(x)
        assert f.read_into(y) == x.numel() * 4
    torch.cuda.synchronize()
    assert torch.equal(x, y)
    assert p.read_bytes() == x.cpu().numpy().tobytes()
    d = phxfs.inspect_buffer(y, writable=True)
    assert (d["kind"], d["via"], d["ptr"], d["size"]) == (
        "cuda", "cuda_array_interface", y.data_ptr(), y.numel() * 4)


def test_offsets_into_device_memory(tmp: Path) -> None:
    p = tmp / "o.bin"
    payload = np.arange(4096, dtype=np.uint8)
    p.write_bytes(payload.tobytes())
    y = torch.zeros(4096, dtype=torch.uint8, device="cuda")
    with phxfs.File(p) as f:
        assert f.read_into(y[100:200], file_offset=7) == 100
        assert f.read_into(y, file_offset=0, size=10, buf_offset=1000) == 10
    host = y.cpu().numpy()
    assert (host[100:200] == payload[7:107]).all()
    assert (host[1000:1010] == payload[:10]).all()
    assert host[:100].sum() == 0 and host[200:1000].sum() == 0 and host[1010:].sum() == 0


def test_dlpack_cuda(tmp: Path) -> None:
    p = tmp / "d.bin"
    src = torch.randn(1000, device="cuda")
    dst = torch.zeros(1000, device="cuda")
    d = phxfs.inspect_buffer(DLPackOnly(dst), writable=True)
    assert (d["kind"], d["via"], d["device"], d["ptr"]) == ("cuda", "dlpack", 0, dst.data_ptr())
    with phxfs.File(p, "w+") as f:
        # produced on a side stream: DLPack orders it before our read
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            src.mul_(2)
            assert f.write_from(DLPackOnly(src)) == 4000
        assert f.read_into(DLPackOnly(dst)) == 4000
    torch.cuda.synchronize()
    assert torch.equal(src, dst)


def test_cupy_cai_with_stream(tmp: Path) -> None:
    cupy = pytest.importorskip("cupy")
    a = cupy.arange(10000, dtype=cupy.int32)
    assert "stream" in a.__cuda_array_interface__ or True  # v3 streams synchronized if named
    p = tmp / "c.bin"
    with phxfs.File(p, "w+") as f:
        assert f.write_from(a) == 40000
        b = cupy.zeros_like(a)
        assert f.read_into(b) == 40000
    assert bool((a == b).all())


def test_futures_and_batches_into_device_memory(tmp: Path) -> None:
    p = tmp / "b.bin"
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    p.write_bytes(data.tobytes())
    y = torch.zeros(1 << 20, dtype=torch.uint8, device="cuda")
    with phxfs.File(p) as f:
        futs = [f.pread(y[i << 16 : (i + 1) << 16], file_offset=i << 16) for i in range(8)]
        assert [fu.result(timeout=60) for fu in futs] == [1 << 16] * 8
        reqs = [(y, 4096 * i, 4096, 4096 * i) for i in range(8 << 4, 256)]
        done = f.submit_batch(reqs, depth=64)
        assert all(c.check() == 4096 for c in done)
    torch.cuda.synchronize()
    assert (y.cpu().numpy() == data).all()


def test_register_device_memory() -> None:
    t = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
    with phxfs.open_device(0) as dev, phxfs.register(dev, t) as reg:
        assert reg.active and reg.address == t.data_ptr() and reg.size == 1 << 20
        assert dev.info().kind == "cuda"


def _tensors(device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    t = {
        "f32": torch.randn(33, 7, generator=g),
        "f16": torch.randn(5, 3, generator=g).half(),
        "bf16": torch.randn(64, generator=g).bfloat16(),
        "i64": torch.arange(10),
        "u8": torch.arange(255, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "c64": torch.randn(4, 2, dtype=torch.complex64, generator=g),
    }
    if hasattr(torch, "float8_e4m3fn"):
        t["fp8"] = torch.randn(16, generator=g).to(torch.float8_e4m3fn)
        t["fp8b"] = torch.randn(16, generator=g).to(torch.float8_e5m2)
    return {k: v.to(device) for k, v in t.items()}


def _same(a: Any, b: Any) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_safetensors_into_gpu_memory(tmp: Path) -> None:
    import safetensors.torch as st

    from phxfs.safetensors import load_file, safe_open

    p = tmp / "m.safetensors"
    st.save_file(_tensors("cpu"), str(p), metadata={"a": "b"})
    ref = st.load_file(str(p), device="cuda:0")
    ours = load_file(p, device="cuda:0")
    assert ours.keys() == ref.keys()
    for k in ref:
        _same(ours[k], ref[k])
    # one device allocation for the file: every tensor's storage is the same
    ptrs = {v.untyped_storage().data_ptr() for v in ours.values() if v.numel()}
    assert len(ptrs) == 1
    with safe_open(p, framework="pt", device="cuda:0") as f:
        assert f.metadata() == {"a": "b"}
        _same(f.get_tensor("bf16"), ref["bf16"])
        _same(f.get_slice("f32")[3:9], ref["f32"][3:9])
    cpu = load_file(p, device="cpu", framework="pt")
    for k, v in st.load_file(str(p)).items():
        _same(cpu[k], v)


def test_save_file_from_gpu(tmp: Path) -> None:
    import safetensors.torch as st

    from phxfs.safetensors import save_file

    a, b = tmp / "ours.safetensors", tmp / "ref.safetensors"
    t = _tensors("cuda")
    save_file(t, a, metadata={"k": "v"})
    st.save_file({k: v.cpu() for k, v in t.items()}, str(b), metadata={"k": "v"})
    assert a.read_bytes() == b.read_bytes()
