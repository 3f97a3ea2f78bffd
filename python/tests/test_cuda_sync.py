"""Waiting for a producer's CUDA stream before I/O, checked on a machine
without CUDA against a stand-in libcuda.so.1 (cuda_stub.c) that logs the
driver calls the binding makes. libphxfs itself is told to ignore CUDA
(PHXFS_NO_CUDA=1); only the binding's stream synchronization is exercised."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

HERE = Path(__file__).parent


def _real_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    _real_driver() or shutil.which("cc") is None,
    reason="needs a C compiler and no real CUDA driver",
)

PROGRAM = r"""
import os, sys, numpy as np, phxfs
sys.path.insert(0, {here!r})
from test_buffers import DLPackOnly, cai

what = sys.argv[1]
if what == "cai":
    phxfs.inspect_buffer(cai(ptr=0xABC000, stream=int(sys.argv[2])))
elif what == "dlpack":
    class CudaClaim(DLPackOnly):
        def __dlpack_device__(self):
            return (2, 0)  # says CUDA (the capsule is numpy's, on the host)
        def __dlpack__(self, **kw):
            self.calls.append(kw)
            return self._arr.__dlpack__(max_version=kw["max_version"])
    obj = CudaClaim(np.zeros(4))
    phxfs.inspect_buffer(obj)
    print("kwargs", obj.calls[0])
"""


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("custub")
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(HERE / "cuda_stub.c")],
        check=True,
    )
    return d


def run(stub: Path, tmp: Path, *args: str, **env: str) -> "tuple[subprocess.CompletedProcess[str], List[str]]":
    log = tmp / "calls.log"
    if log.exists():
        log.unlink()
    e = dict(os.environ, LD_LIBRARY_PATH=str(stub), PHXFS_NO_CUDA="1", CUSTUB_LOG=str(log), **env)
    prog = PROGRAM.format(here=str(HERE))
    p = subprocess.run([sys.executable, "-c", prog, *args], env=e, capture_output=True, text=True)
    calls = log.read_text().split("\n")[:-1] if log.exists() else []
    return p, calls


def test_cai_explicit_stream(stub: Path, tmp: Path) -> None:
    p, calls = run(stub, tmp, "cai", "77")
    assert p.returncode == 0, p.stderr
    assert calls == ["sync 77"]


def test_cai_default_stream_with_current_context(stub: Path, tmp: Path) -> None:
    p, calls = run(stub, tmp, "cai", "1", CUSTUB_CTX="1")
    assert p.returncode == 0, p.stderr
    assert calls == ["sync 1"]


def test_cai_default_stream_without_context(stub: Path, tmp: Path) -> None:
    # no current context: the pointer's GPU (3, from the stub) is found and
    # its primary context made current around the wait
    p, calls = run(stub, tmp, "cai", "2")
    assert p.returncode == 0, p.stderr
    assert calls == [f"ordinal-of {0xABC000}", "retain 3", f"push {0x2000}", "sync 2", "pop 0", "release 3"]


def test_failed_wait_raises(stub: Path, tmp: Path) -> None:
    p, calls = run(stub, tmp, "cai", "77", CUSTUB_FAIL="1")
    assert p.returncode != 0
    assert "OSError" in p.stderr and "cuStreamSynchronize(77)" in p.stderr and "700" in p.stderr


def test_dlpack_cuda_asks_for_stream_1_and_waits(stub: Path, tmp: Path) -> None:
    p, calls = run(stub, tmp, "dlpack")
    assert p.returncode == 0, p.stderr
    assert "kwargs {'stream': 1, 'max_version': (1, 0)}" in p.stdout
    assert calls == ["retain 0", f"push {0x2000}", "sync 1", "pop 0", "release 0"]
