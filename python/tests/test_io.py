"""Files, futures, batches, devices, registrations, config and stats."""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

import phxfs

EXPECTED = np.array([i % 251 for i in range(1 << 20)], dtype=np.uint8)


def test_version() -> None:
    assert phxfs.__version__ == ".".join(map(str, phxfs.library_version))
    assert phxfs.library_version >= (0, 2, 0)


def test_numpy_round_trip(tmp: Path) -> None:
    data = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    with phxfs.File(tmp / "f.bin", "w+") as f:
        assert f.write_from(data) == data.nbytes
        out = np.zeros_like(data)
        assert f.read_into(out) == data.nbytes
    np.testing.assert_array_equal(out, data)
    assert (tmp / "f.bin").read_bytes() == data.tobytes()


def test_bytearray_memoryview_mmap(tmp: Path, data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        ba = bytearray(1000)
        assert f.read_into(ba, file_offset=500) == 1000
        assert bytes(ba) == EXPECTED[500:1500].tobytes()
        big = bytearray(3000)
        mv = memoryview(big)[1000:2000]  # a view into the middle
        assert f.read_into(mv, file_offset=7) == 1000
        assert big[1000:2000] == EXPECTED[7:1007].tobytes()
        assert big[:1000] == bytes(1000) and big[2000:] == bytes(1000)
        with mmap.mmap(-1, 8192) as m:
            assert f.read_into(m, file_offset=4096) == 8192
            assert m[:] == EXPECTED[4096 : 4096 + 8192].tobytes()
    # writing from read-only objects is fine
    with phxfs.File(tmp / "w.bin", "w") as f:
        assert f.write_from(b"hello world", file_offset=3) == 11
    assert (tmp / "w.bin").read_bytes() == b"\0\0\0hello world"


def test_offsets_and_sizes(data_file: Path) -> None:
    buf = np.zeros(100, np.uint8)
    with phxfs.File(data_file) as f:
        assert f.read_into(buf, file_offset=1000, size=10, buf_offset=50) == 10
    assert (buf[50:60] == EXPECTED[1000:1010]).all()
    assert (buf[:50] == 0).all() and (buf[60:] == 0).all()


def test_numpy_slice_views(data_file: Path) -> None:
    arr = np.zeros(4096, np.uint8)
    with phxfs.File(data_file) as f:
        assert f.read_into(arr[1000:2000], file_offset=3) == 1000
    assert (arr[1000:2000] == EXPECTED[3:1003]).all()
    assert (arr[:1000] == 0).all() and (arr[2000:] == 0).all()


def test_short_read_at_eof(data_file: Path) -> None:
    buf = bytearray(4096)
    with phxfs.File(data_file) as f:
        assert f.read_into(buf, file_offset=(1 << 20) - 100) == 100
        assert f.read_into(buf, file_offset=(1 << 20) + 5) == 0


def test_buffer_range_errors(data_file: Path) -> None:
    buf = bytearray(100)
    with phxfs.File(data_file) as f:
        with pytest.raises(ValueError, match="past the buffer"):
            f.read_into(buf, size=101)
        with pytest.raises(ValueError, match="past the buffer"):
            f.read_into(buf, size=10, buf_offset=95)
        with pytest.raises(ValueError, match="buf_offset"):
            f.read_into(buf, buf_offset=101)
        with pytest.raises(ValueError, match="negative"):
            f.read_into(buf, buf_offset=-1)


def test_read_needs_writable_buffer(data_file: Path) -> None:
    ro = np.zeros(10, np.uint8)
    ro.flags.writeable = False
    with phxfs.File(data_file) as f:
        with pytest.raises(TypeError, match="writable"):
            f.read_into(b"0123456789")
        with pytest.raises(TypeError, match="writable"):
            f.read_into(ro)
        with pytest.raises(TypeError, match="writable"):
            f.pread(memoryview(bytearray(4)).toreadonly())
        with pytest.raises(TypeError, match="needs a buffer"):
            f.read_into([0] * 10)  # a list is no buffer


def test_non_contiguous_refused(data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        with pytest.raises(ValueError, match="contiguous"):
            f.read_into(np.zeros((10, 10), np.uint8)[:, 1])


def test_oserror_errno_and_message(tmp: Path, data_file: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        phxfs.File(tmp / "missing.bin")
    assert ei.value.errno == errno.ENOENT
    with phxfs.File(data_file, "r") as f:
        with pytest.raises(OSError) as ei:
            f.write_from(b"x")  # not open for writing
        assert ei.value.errno == errno.EBADF
        assert "phxfs_file_write" in str(ei.value)
        with pytest.raises(OSError) as ei:
            f.read_into(bytearray(4), file_offset=-4096)
        assert ei.value.errno == errno.EINVAL
        assert "negative offset" in str(ei.value)  # phxfs_last_error()'s text
    with pytest.raises(OSError) as ei:
        phxfs.File(data_file, device=99)
    assert ei.value.errno == errno.ENODEV


def test_pipe_refused() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as ei:
            phxfs.File(r)
        assert ei.value.errno == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)


def test_closed_file(data_file: Path) -> None:
    f = phxfs.File(data_file)
    f.close()
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.read_into(bytearray(1))
    f.close()  # twice is fine


def test_files_keep_their_device_warm(data_file: Path) -> None:
    """Closing a File leaves its device open (staging, streams and threads
    ready for the next file) until release_devices(); then a File opens it
    again."""
    phxfs.release_devices()
    with phxfs.File(data_file) as f:
        assert f.read_into(bytearray(1 << 20)) == 1 << 20
    held = phxfs.stats(0).staging_bytes
    assert held > 0, "the device's staging went with the file"
    with phxfs.File(data_file) as f:
        buf = bytearray(1 << 20)
        assert f.read_into(buf) == 1 << 20
        assert bytes(buf[:16]) == EXPECTED[:16].tobytes()
    assert phxfs.stats(0).staging_bytes == held, "staging made anew for the second file"
    phxfs.release_devices()
    phxfs.release_devices()  # twice is fine
    with phxfs.File(data_file) as f:
        assert f.read_into(bytearray(16), file_offset=251) == 16


def test_files_in_a_forked_child(data_file: Path) -> None:
    """A child of fork() opens the device for itself (the parent's kept one
    is not its), reads, and exits cleanly; the parent's stays warm."""
    with phxfs.File(data_file) as f:
        assert f.read_into(bytearray(4096)) == 4096
    held = phxfs.stats(0).staging_bytes
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit status
        code = 1
        try:
            with phxfs.File(data_file) as f:
                buf = bytearray(16)
                ok = f.read_into(buf, file_offset=251) == 16
                ok = ok and bytes(buf) == EXPECTED[251:267].tobytes()
            phxfs.release_devices()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert phxfs.stats(0).staging_bytes == held


def test_borrowed_fd_stays_open(data_file: Path) -> None:
    fd = os.open(data_file, os.O_RDONLY)
    try:
        with phxfs.File(fd) as f:
            buf = bytearray(16)
            assert f.read_into(buf, file_offset=251) == 16
            assert bytes(buf) == EXPECTED[251:267].tobytes()
            assert f.name is None
        assert os.fstat(fd)  # still open: ours
    finally:
        os.close(fd)


def test_modes(tmp: Path) -> None:
    p = tmp / "m.bin"
    with phxfs.File(p, "x") as f:
        f.write_from(b"abc")
    with pytest.raises(FileExistsError):
        phxfs.File(p, "x")
    with phxfs.File(p, "r+b") as f:
        f.write_from(b"Z", file_offset=1)
        buf = bytearray(3)
        f.read_into(buf)
        assert buf == b"aZc"
    with phxfs.File(p, "w") as f:
        assert f.size() == 0  # truncated
    with pytest.raises(ValueError, match="mode"):
        phxfs.File(p, "a")


def test_futures(data_file: Path) -> None:
    bufs = [np.zeros(65536, np.uint8) for _ in range(8)]
    with phxfs.File(data_file) as f:
        futs = [f.pread(b, file_offset=i * 65536) for i, b in enumerate(bufs)]
        assert [fu.result(timeout=30) for fu in futs] == [65536] * 8
        assert all(fu.done() for fu in futs)
        assert futs[0].result() == 65536  # again: the same result
    for i, b in enumerate(bufs):
        assert (b == EXPECTED[i * 65536 : (i + 1) * 65536]).all()


def test_future_error_and_write(tmp: Path, data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        fu = f.pwrite(b"nope")
        with pytest.raises(OSError) as ei:
            fu.result()
        assert ei.value.errno == errno.EBADF
        assert fu.done()
    with phxfs.File(tmp / "o.bin", "w+") as f:
        payload = np.arange(4096, dtype=np.uint16)
        assert f.pwrite(payload, file_offset=10).result() == payload.nbytes
        back = np.zeros_like(payload)
        assert f.pread(back, file_offset=10).result() == payload.nbytes
        assert (back == payload).all()


def test_future_keeps_buffer_alive(data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        fu = f.pread(bytearray(1 << 20))  # nothing else references the buffer
        assert fu.result() == 1 << 20


def test_asyncio(data_file: Path) -> None:
    bufs = [bytearray(4096) for _ in range(16)]

    async def main() -> list:
        with phxfs.File(data_file) as f:
            return await asyncio.gather(
                *(f.pread(b, file_offset=i * 4096) for i, b in enumerate(bufs))
            )

    assert asyncio.run(main()) == [4096] * 16
    for i, b in enumerate(bufs):
        assert bytes(b) == EXPECTED[i * 4096 : (i + 1) * 4096].tobytes()


def test_asyncio_error(data_file: Path) -> None:
    async def main() -> int:
        with phxfs.File(data_file) as f:
            return await f.pwrite(b"x")

    with pytest.raises(OSError) as ei:
        asyncio.run(main())
    assert ei.value.errno == errno.EBADF


def test_submit_batch(data_file: Path) -> None:
    bufs = [bytearray(4096) for _ in range(300)]
    with phxfs.File(data_file) as f:
        done = f.submit_batch([(b, i * 3000) for i, b in enumerate(bufs)], depth=64)
    assert [c.tag for c in done] == list(range(300))
    assert all(c.ok and c.check() == 4096 for c in done)
    for i, b in enumerate(bufs):
        assert bytes(b) == EXPECTED[i * 3000 : i * 3000 + 4096].tobytes()


def test_batch_bad_request_fails_alone(tmp: Path, data_file: Path) -> None:
    out = tmp / "out.bin"
    good = np.arange(1024, dtype=np.uint32)
    with phxfs.File(data_file, "r") as ro, phxfs.File(out, "w+") as rw:
        with phxfs.Batch(16) as b:
            reqs = [
                (rw, "write", good, 0),
                (ro, "write", b"not writable", 0),  # EBADF: read-only file
                (ro, "read", bytearray(100), 200),
                (ro, "read", bytearray(100), 2**63 - 10),  # range overflows: EINVAL
            ]
            done = b.run(reqs)
    assert [c.status for c in done] == ["done", "failed", "done", "failed"]
    assert done[3].errno == errno.EINVAL
    assert done[0].result == good.nbytes
    assert done[1].errno == errno.EBADF and done[1].error
    with pytest.raises(OSError) as ei:
        done[1].check()
    assert ei.value.errno == errno.EBADF
    assert out.read_bytes() == good.tobytes()


def test_batch_submit_reap_tags_and_eagain(data_file: Path) -> None:
    with phxfs.File(data_file) as f, phxfs.Batch(4) as b:
        bufs = [bytearray(16) for _ in range(5)]
        assert b.submit([(f, "read", bufs[i], i * 16) for i in range(4)], tags="abcd") == 4
        assert b.in_flight == 4
        with pytest.raises(BlockingIOError) as ei:  # all or none: no room for a fifth
            b.submit([(f, "read", bufs[4], 64)])
        assert ei.value.errno == errno.EAGAIN
        got = []
        while len(got) < 4:
            got += b.reap(min_nr=1, timeout=10)
        assert sorted(c.tag for c in got) == list("abcd")
        assert b.in_flight == 0
        with pytest.raises(ValueError, match="in flight"):
            b.reap(min_nr=1)
        with pytest.raises(ValueError, match="op must be"):
            b.submit([(f, "frobnicate", bufs[0], 0)])
        assert b.in_flight == 0


def test_batch_of_closed_file_refused_early(data_file: Path) -> None:
    f = phxfs.File(data_file)
    f.close()
    with phxfs.Batch(2) as b, pytest.raises(ValueError, match="closed"):
        b.submit([(f, "read", bytearray(1), 0)])


def test_device_and_registration() -> None:
    assert phxfs.device_count() >= 1
    info = phxfs.device_info(0)
    assert info.id == 0 and info.kind in ("host", "cuda", "pcibar")
    if info.direct:
        assert info.why_not_direct == ""
    else:
        assert info.why_not_direct
    buf = np.zeros(1 << 16, np.uint8)
    with phxfs.open_device(0) as dev:
        before = dev.stats().registrations
        with phxfs.register(dev, buf) as reg:
            assert reg.active and reg.size == buf.nbytes
            assert reg.address == buf.ctypes.data
            assert reg.target != 0
            assert dev.stats().registrations == before + 1
            with pytest.raises(FileExistsError):
                phxfs.register(dev, buf[100:200])  # overlaps
        assert not reg.active
        assert dev.stats().registrations == before
    with pytest.raises(OSError) as ei:
        phxfs.open_device(99)
    assert ei.value.errno == errno.ENODEV


def test_register_needs_open_device() -> None:
    with pytest.raises(OSError) as ei:
        phxfs.register(5, bytearray(4096))
    assert ei.value.errno in (errno.ENODEV, errno.EBADF)


def test_config_round_trip() -> None:
    old = phxfs.get_config()
    try:
        new = phxfs.set_config(mode="compat", threads=3, chunk_bytes=1 << 20)
        assert (new.mode, new.threads, new.chunk_bytes) == ("compat", 3, 1 << 20)
        assert new.staging_bytes == old.staging_bytes  # untouched
        with pytest.raises(ValueError, match="mode"):
            phxfs.set_config(mode="fast")
        with pytest.raises(OSError) as ei:
            phxfs.set_config(threads=0)
        assert ei.value.errno == errno.EINVAL
    finally:
        phxfs.set_config(**{k: getattr(old, k) for k in old.__dataclass_fields__})
    assert phxfs.get_config() == old


def test_stats_name_the_path(data_file: Path) -> None:
    phxfs.reset_stats(0)
    s0 = phxfs.stats(0)
    assert set(s0.paths) == {"direct", "compat"}
    assert s0.path_used() == []
    with phxfs.File(data_file) as f:
        f.read_into(bytearray(12345))
    s = phxfs.stats(0)
    total = sum(p.read_bytes for p in s.paths.values())
    assert total == 12345
    assert sum(p.read_calls for p in s.paths.values()) == 1
    # without the kernel module and a GPU, the compat path ran
    if not phxfs.device_info(0).direct:
        assert s.path_used() == ["compat"]


def test_inspect_reports_sizes() -> None:
    arr = np.zeros((3, 5), np.float64)
    d = phxfs.inspect_buffer(arr)
    assert (d["ptr"], d["size"], d["kind"], d["via"]) == (arr.ctypes.data, 120, "host", "buffer")


def test_registration_holds_the_buffer() -> None:
    with phxfs.open_device(0) as dev:
        m = mmap.mmap(-1, 1 << 16)
        reg = phxfs.register(dev, m)
        with pytest.raises(BufferError):
            m.close()  # phxfs still uses its memory
        reg.close()
        m.close()  # now it may go


def test_dropped_futures_finish_safely(data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        for i in range(32):
            f.pread(bytearray(1 << 18), file_offset=i * 4096)  # dropped at once
        buf = bytearray(16)
        assert f.read_into(buf, file_offset=251) == 16
    assert bytes(buf) == EXPECTED[251:267].tobytes()


def test_future_timeout_argument(data_file: Path) -> None:
    with phxfs.File(data_file) as f:
        fu = f.pread(bytearray(10))
        with pytest.raises(ValueError, match="timeout"):
            fu.result(timeout=-1)
        assert fu.result(timeout=30) == 10
        assert fu.result(timeout=0) == 10  # done: no wait needed


def test_threads_share_a_file(data_file: Path) -> None:
    import threading

    errors: list = []

    def worker(k: int) -> None:
        try:
            buf = np.zeros(4096, np.uint8)
            for i in range(50):
                off = ((k * 50 + i) * 4096) % (1 << 20)
                assert f.read_into(buf, file_offset=off) == 4096
                assert (buf == EXPECTED[off : off + 4096]).all()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with phxfs.File(data_file) as f:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
