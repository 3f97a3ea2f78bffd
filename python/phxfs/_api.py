"""The phxfs API: files, futures, batches, devices, registrations, config, stats.

Everything here calls libphxfs through its C API (the ``_phxfs`` extension);
I/O runs with the GIL released. Failures of the library raise ``OSError``
(or the subclass Python picks for the errno, such as ``FileNotFoundError``)
whose ``errno`` is the library's and whose message is ``phxfs_last_error()``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from dataclasses import dataclass, field
from typing import (
    Any,
    Dict,
    Generator,
    Iterable,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from . import _phxfs

__all__ = [
    "Batch",
    "Completion",
    "Config",
    "Device",
    "DeviceInfo",
    "File",
    "Future",
    "PathStats",
    "Registration",
    "Stats",
    "device_count",
    "device_info",
    "get_config",
    "inspect_buffer",
    "open_device",
    "register",
    "release_devices",
    "reset_stats",
    "set_config",
    "stats",
]

#: Anything phxfs can read into or write from: an object with the buffer
#: protocol (numpy, bytearray, memoryview, mmap), ``__cuda_array_interface__``
#: (CuPy, Numba, torch CUDA tensors) or ``__dlpack__`` (torch, CuPy, JAX).
Buffer = Any
PathOrFd = Union[str, "os.PathLike[str]", bytes, int]
Op = Literal["read", "write"]

_OPS = {"read": _phxfs.OP_READ, "write": _phxfs.OP_WRITE}
_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


def _timeout_ns(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError("timeout must not be negative")
    return int(timeout * 1e9)


def _device_id(device: Union[int, "Device"]) -> int:
    if isinstance(device, Device):
        return device.id
    if isinstance(device, bool) or not isinstance(device, int):
        raise TypeError(f"device must be an int or a phxfs.Device, not {type(device).__name__}")
    return device


_Self = TypeVar("_Self", bound="_Closing")


class _Closing:
    """What ``close()``s on leaving a ``with`` block (subclasses define it)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClosingWhenCollected(_Closing):
    """A :class:`_Closing` that also closes when garbage collected."""

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------


class Device(_ClosingWhenCollected):
    """An open device (``phxfs_open``/``phxfs_close``), a context manager.

    Device ids are CUDA device ids where there are GPUs; a machine without
    GPUs or the kernel module has one device, 0, whose memory is host memory.

    >>> with phxfs.open_device(0) as dev:
    ...     print(dev.info().kind, dev.stats().paths["compat"].read_bytes)
    """

    def __init__(self, device_id: int = 0) -> None:
        self._id = _device_id(device_id)
        _phxfs.open_device(self._id)
        self._open = True

    @property
    def id(self) -> int:
        """The device id."""
        return self._id

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        """Undo this open (the last close of a device releases its registrations)."""
        if self._open:
            self._open = False
            _phxfs.close_device(self._id)

    def info(self) -> "DeviceInfo":
        """What the device is and whether the direct path can serve it."""
        return device_info(self._id)

    def stats(self) -> "Stats":
        """The device's counters: bytes, calls and time per path."""
        return stats(self._id)

    def register(self, buf: Buffer) -> "Registration":
        """Register ``buf`` (``phxfs_regmem``); see :func:`register`."""
        return Registration(self, buf)

    def __repr__(self) -> str:
        return f"<phxfs.Device {self._id}{' closed' if not self._open else ''}>"


def open_device(device_id: int = 0) -> Device:
    """Open a device; use as a context manager: ``with phxfs.open_device(0) as dev: ...``."""
    return Device(device_id)


# Files (and so the loaders) open their device through this: once per
# process, kept open until release_devices() or exit. The last close of a
# device frees its pinned staging memory, copy streams and threads; making
# them again for each file cost 20-25 ms a load on an H100 and halved the
# first read's speed (bench/results/2026-12-06-h100-session3.md).
_kept: Dict[int, Device] = {}
_kept_lock = threading.Lock()


def _kept_device(device_id: int) -> Device:
    with _kept_lock:
        dev = _kept.get(device_id)
        if dev is None or dev.closed:
            dev = _kept[device_id] = Device(device_id)
        return dev


def release_devices() -> None:
    """Close the devices that :class:`File` opened and keeps open for the
    process (with their staging memory, streams and threads, which stay warm
    from one file to the next). Called at exit; a later ``File`` opens its
    device again. Devices opened with :func:`open_device` are the caller's."""
    with _kept_lock:
        devs = list(_kept.values())
        _kept.clear()
    for dev in devs:
        dev.close()


def _forget_kept_in_child() -> None:
    # A child of fork() starts with every device closed (libphxfs): what the
    # parent kept is not the child's to close.
    for dev in _kept.values():
        dev._open = False
    _kept.clear()


atexit.register(release_devices)
os.register_at_fork(after_in_child=_forget_kept_in_child)


def device_count() -> int:
    """How many devices phxfs sees (at least 1: host memory stands in for a GPU)."""
    return int(_phxfs.device_count())


@dataclass(frozen=True)
class DeviceInfo:
    """``phxfs_device_get_info``: ``kind`` is ``"host"``, ``"cuda"`` or ``"pcibar"``."""

    id: int
    kind: str
    direct: bool
    kmod_index: int
    name: str
    pci_bus_id: str
    why_not_direct: str
    page_type: str
    numa_node: int = -1  # where the device's staging memory comes from; -1: not known


def device_info(device_id: int = 0) -> DeviceInfo:
    """Describe a device (no need to open it first).

    >>> phxfs.device_info(0).why_not_direct
    'host memory is not device memory'
    """
    return DeviceInfo(**_phxfs.device_info(_device_id(device_id)))


class Registration(_Closing):
    """A buffer registered with ``phxfs_regmem`` (enables the direct path for it).

    A context manager: leaving it deregisters. The buffer is held (not freed,
    an mmap cannot be closed) while registered.

    >>> buf = np.empty(1 << 20, np.uint8)
    >>> with phxfs.open_device(0) as dev, phxfs.register(dev, buf) as reg:
    ...     reg.target   # the address phxfs_regmem returned
    """

    def __init__(self, device: Union[int, Device], buf: Buffer) -> None:
        self._reg = _phxfs.Registration(_device_id(device), buf)

    @property
    def device(self) -> int:
        return int(self._reg.device)

    @property
    def address(self) -> int:
        """The buffer's address."""
        return int(self._reg.address)

    @property
    def size(self) -> int:
        return int(self._reg.size)

    @property
    def target(self) -> int:
        """The host-mapped address ``phxfs_regmem`` returned (the address itself
        where the direct path cannot serve the device)."""
        return int(self._reg.target)

    @property
    def active(self) -> bool:
        return bool(self._reg.active)

    def close(self) -> None:
        """Deregister (``phxfs_deregmem``)."""
        self._reg.close()

def register(device: Union[int, Device], buf: Buffer) -> Registration:
    """Register ``buf`` on ``device``; use as a context manager.

    The device must be open (``phxfs.open_device``). Overlapping
    registrations fail with ``FileExistsError`` (``EEXIST``).
    """
    return Registration(device, buf)


def inspect_buffer(buf: Buffer, writable: bool = False, via: str = "auto") -> Dict[str, Any]:
    """What phxfs sees of ``buf`` without doing I/O: ``ptr``, ``size`` (bytes),
    ``kind`` (``host``, ``cuda``, ``cuda_host``, ``cuda_managed``), ``device``,
    ``readonly`` and ``via`` (``cuda_array_interface``, ``dlpack`` or ``buffer``).

    ``via`` forces one protocol (``"dlpack"``, ``"buffer"``,
    ``"cuda_array_interface"``). Raises as I/O on ``buf`` would: ``TypeError``
    for an unsupported or (``writable=True``) read-only object, ``ValueError``
    for a non-contiguous one.

    >>> phxfs.inspect_buffer(bytearray(16))["size"]
    16
    """
    return dict(_phxfs.inspect_buffer(buf, writable, via))


# --------------------------------------------------------------------------
# Futures
# --------------------------------------------------------------------------


class Future:
    """A read or write that runs in libphxfs's workers (``phxfs_future_t``).

    ``result()`` waits and returns the bytes moved (or raises the request's
    ``OSError``); ``done()`` polls. A future is awaitable::

        n = await f.pread(buf)

    The buffer is held until the request completes.
    """

    def __init__(self, fut: "_phxfs.Future", owner: "File") -> None:
        self._fut = fut
        self._owner = owner  # keeps the file (and its fd) open while this runs

    def done(self) -> bool:
        """True once the request has completed (successfully or not)."""
        return bool(self._fut.done())

    def result(self, timeout: Optional[float] = None) -> int:
        """Wait at most ``timeout`` seconds (None: no limit) and return the
        bytes moved. Raises ``TimeoutError`` while it still runs (wait again
        later), or the request's ``OSError``."""
        return int(self._fut.result(_timeout_ns(timeout)))

    def __await__(self) -> Generator[Any, None, int]:
        # Waiting blocks a thread (the library's wait is a condition
        # variable), so it runs in the loop's executor, not on the loop.
        if self.done():
            return self.result()
        loop = asyncio.get_running_loop()
        return (yield from loop.run_in_executor(None, self.result).__await__())

    def __repr__(self) -> str:
        return f"<phxfs.Future {'done' if self.done() else 'running'}>"


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


class File(_ClosingWhenCollected):
    """A file open for phxfs on a device (a ``phxfs_file_t`` handle).

    ``path_or_fd``: a path, opened with ``mode`` (``"r"``, ``"r+"``, ``"w"``,
    ``"w+"``, ``"x"``, ``"x+"``; a ``"b"`` is ignored) and closed by
    :meth:`close`; or an open fd, borrowed (it stays yours and must stay open
    until this file is closed). ``direct=True`` opens with ``O_DIRECT``
    (phxfs handles O_DIRECT alignment itself, so any offset and length still
    work; the file system must support it). The device is opened for the
    file's lifetime.

    >>> import numpy as np, phxfs
    >>> data = np.arange(1024, dtype=np.float32)
    >>> with phxfs.File("x.bin", "w+") as f:
    ...     f.write_from(data)
    ...     out = np.empty_like(data)
    ...     f.read_into(out)                 # bytes read: 4096
    ...     fut = f.pread(out[512:], file_offset=2048)
    ...     fut.result()                     # 2048
    """

    def __init__(
        self,
        path_or_fd: PathOrFd,
        mode: str = "r",
        device: Union[int, Device] = 0,
        direct: bool = False,
        perm: int = 0o644,
    ) -> None:
        self._fd = -1
        self._owns_fd = False
        self._handle: Optional[_phxfs.Handle] = None
        self._device: Optional[Device] = None
        self._path: Optional[str] = None
        dev_id = _device_id(device)
        if isinstance(path_or_fd, bool):
            raise TypeError("path_or_fd must be a path or an int fd")
        if isinstance(path_or_fd, int):
            fd = path_or_fd
        else:
            m = mode.replace("b", "")
            if m not in _MODES:
                raise ValueError(
                    f"mode must be one of {', '.join(repr(k) for k in _MODES)}, not {mode!r}"
                )
            flags = _MODES[m] | os.O_CLOEXEC
            if direct:
                flags |= os.O_DIRECT
            self._path = os.fsdecode(path_or_fd)
            fd = os.open(path_or_fd, flags, perm)
            self._owns_fd = True
        self._fd = fd
        try:
            self._device = _kept_device(dev_id)
            self._handle = _phxfs.Handle(fd, dev_id)
        except BaseException:
            self.close()
            raise

    # -- properties -------------------------------------------------------

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def device(self) -> int:
        assert self._device is not None
        return self._device.id

    @property
    def name(self) -> Optional[str]:
        """The path this file was opened with (None for a borrowed fd)."""
        return self._path

    @property
    def closed(self) -> bool:
        return self._handle is None or bool(self._handle.closed)

    def size(self) -> int:
        """The file's size now (``fstat``)."""
        return os.fstat(self._fd).st_size

    def _h(self) -> "_phxfs.Handle":
        if self._handle is None or self._handle.closed:
            raise ValueError("I/O operation on a closed phxfs.File")
        return self._handle

    # -- synchronous I/O --------------------------------------------------

    def read_into(
        self, buf: Buffer, file_offset: int = 0, size: Optional[int] = None, buf_offset: int = 0
    ) -> int:
        """Read into ``buf[buf_offset : buf_offset + size]`` (bytes; size
        defaults to the rest of the buffer) from ``file_offset``. Returns the
        bytes read, short only at end of file. ``buf`` must be writable.
        """
        return int(self._h().read(buf, file_offset, -1 if size is None else size, buf_offset))

    def write_from(
        self, buf: Buffer, file_offset: int = 0, size: Optional[int] = None, buf_offset: int = 0
    ) -> int:
        """Write ``buf[buf_offset : buf_offset + size]`` (bytes) at
        ``file_offset``. Returns the bytes written."""
        return int(self._h().write(buf, file_offset, -1 if size is None else size, buf_offset))

    # -- futures ----------------------------------------------------------

    def pread(
        self, buf: Buffer, file_offset: int = 0, size: Optional[int] = None, buf_offset: int = 0
    ) -> Future:
        """As :meth:`read_into`, returning a :class:`Future` at once."""
        f = self._h().read_async(buf, file_offset, -1 if size is None else size, buf_offset)
        return Future(f, self)

    def pwrite(
        self, buf: Buffer, file_offset: int = 0, size: Optional[int] = None, buf_offset: int = 0
    ) -> Future:
        """As :meth:`write_from`, returning a :class:`Future` at once."""
        f = self._h().write_async(buf, file_offset, -1 if size is None else size, buf_offset)
        return Future(f, self)

    # -- batches ----------------------------------------------------------

    def submit_batch(
        self,
        requests: Iterable[Union[Tuple[Buffer, int], Tuple[Buffer, int, int, int]]],
        op: Op = "read",
        depth: int = 1024,
        timeout: Optional[float] = None,
    ) -> List["Completion"]:
        """Run many requests on this file with up to ``depth`` in flight
        (``phxfs_batch_*``) and return their :class:`Completion` s in request
        order. Each request is ``(buf, file_offset)`` or ``(buf, file_offset,
        size, buf_offset)``. A bad request fails alone: check
        ``Completion.ok`` or call ``Completion.check()``.

        >>> bufs = [bytearray(4096) for _ in range(64)]
        >>> done = f.submit_batch([(b, i * 4096) for i, b in enumerate(bufs)])
        >>> sum(c.check() for c in done)
        """
        with Batch(depth) as b:
            return b.run([(self, op) + tuple(r) for r in requests], timeout=timeout)

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Close the handle (waits for its running requests), then the fd
        if this file opened it. The device stays open for the next file
        (:func:`release_devices`)."""
        h, self._handle = self._handle, None
        try:
            if h is not None:
                h.close()
        finally:
            if self._owns_fd and self._fd >= 0:
                os.close(self._fd)
            self._owns_fd = False

    def __repr__(self) -> str:
        what = repr(self._path) if self._path is not None else f"fd {self._fd}"
        return f"<phxfs.File {what}{' closed' if self.closed else ''}>"


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------


@dataclass
class Completion:
    """One finished batch request.

    ``result``: bytes moved, or ``-errno``; ``status``: ``"done"``,
    ``"failed"`` or ``"canceled"``; ``error``: the library's reason ("" when
    done); ``tag``: what was submitted with it (its index for
    :meth:`Batch.run` and :meth:`File.submit_batch`).
    """

    tag: Any
    result: int
    status: str
    error: str

    @property
    def ok(self) -> bool:
        return self.status == "done"

    @property
    def errno(self) -> int:
        """The request's errno (0 when it succeeded)."""
        return 0 if self.ok else -self.result

    def check(self) -> int:
        """The bytes moved, or raise the request's ``OSError``."""
        if self.ok:
            return self.result
        raise OSError(-self.result, f"batch request {self.tag!r}: {self.error or self.status}")


_STATUS = {
    _phxfs.IO_DONE: "done",
    _phxfs.IO_FAILED: "failed",
    _phxfs.IO_CANCELED: "canceled",
}

BatchRequest = Tuple[Any, ...]


class Batch(_Closing):
    """Many reads and writes in flight at once (``phxfs_batch_t``), of any files.

    ``depth`` is how many may be in flight (submitted, not yet reaped). A
    request is ``(file, op, buf, file_offset)`` or ``(file, op, buf,
    file_offset, size, buf_offset)`` with ``op`` ``"read"`` or ``"write"``.

    >>> with phxfs.Batch(256) as b:
    ...     b.submit([(f, "read", buf, 0, 4096, 0)], tags=["first"])
    ...     for c in b.reap(min_nr=1):
    ...         print(c.tag, c.check())

    :meth:`run` does both for any number of requests.
    """

    def __init__(self, depth: int = 1024) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._b = _phxfs.Batch(depth)
        self._files: Dict[int, File] = {}

    @property
    def depth(self) -> int:
        return int(self._b.depth)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet reaped."""
        return int(self._b.in_flight)

    @staticmethod
    def _request(req: BatchRequest, tag: Any) -> Tuple[Any, ...]:
        if len(req) == 4:
            file, op, buf, file_offset = req
            size, buf_offset = None, 0
        elif len(req) == 6:
            file, op, buf, file_offset, size, buf_offset = req
        else:
            raise ValueError(
                "a batch request is (file, op, buf, file_offset[, size, buf_offset]), "
                f"not a tuple of {len(req)}"
            )
        if not isinstance(file, File):
            raise TypeError(f"a batch request's file must be a phxfs.File, not {type(file)}")
        if op not in _OPS:
            raise ValueError(f"op must be 'read' or 'write', not {op!r}")
        handle = file._handle
        if handle is None:
            raise ValueError("batch request on a closed phxfs.File")
        return (
            handle,
            _OPS[op],
            buf,
            file_offset,
            -1 if size is None else size,
            buf_offset,
            tag,
        )

    def submit(self, requests: Sequence[BatchRequest], tags: Optional[Sequence[Any]] = None) -> int:
        """Queue all of ``requests`` (all or none: ``BlockingIOError``
        (``EAGAIN``) when fewer places than that are free). ``tags`` are
        handed back in the completions (default: the index in ``requests``).
        A malformed request raises before anything is queued."""
        if tags is not None and len(tags) != len(requests):
            raise ValueError("tags must be as many as requests")
        reqs = [
            self._request(r, i if tags is None else tags[i]) for i, r in enumerate(requests)
        ]
        return int(self._b.submit(reqs))

    def reap(
        self, min_nr: int = 1, max_nr: Optional[int] = None, timeout: Optional[float] = None
    ) -> List[Completion]:
        """Wait for at least ``min_nr`` completions (fewer only when
        ``timeout`` seconds pass; None: no limit) and take at most ``max_nr``
        (default: the depth)."""
        got = self._b.reap(min_nr, 0 if max_nr is None else max_nr, _timeout_ns(timeout))
        return [Completion(tag, int(res), _STATUS.get(st, str(st)), err) for tag, res, st, err in got]

    def run(self, requests: Sequence[BatchRequest], timeout: Optional[float] = None) -> List[Completion]:
        """Submit every request (keeping up to ``depth`` in flight), wait
        for all and return their completions in request order (tags: the
        indices). ``timeout`` bounds each wait for completions."""
        reqs = list(requests)
        out: List[Optional[Completion]] = [None] * len(reqs)
        nxt = 0
        while nxt < len(reqs) or self.in_flight:
            free = self.depth - self.in_flight
            if nxt < len(reqs) and free > 0:
                chunk = reqs[nxt : nxt + free]
                self.submit(chunk, tags=list(range(nxt, nxt + len(chunk))))
                nxt += len(chunk)
            got = self.reap(min_nr=1, timeout=timeout)
            if not got:
                running = self.in_flight
                self.cancel()
                raise TimeoutError(f"{running} batch requests still running after {timeout} s")
            for c in got:
                out[c.tag] = c
        return [c for c in out if c is not None]

    def cancel(self) -> int:
        """Cancel the requests not yet started (they complete as canceled)."""
        return int(self._b.cancel())

    def close(self) -> None:
        """Cancel what has not started, wait for the rest, free the batch."""
        self._b.close()


# --------------------------------------------------------------------------
# Configuration and counters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """``struct phxfs_config``: ``mode`` is ``"auto"``, ``"direct"`` or ``"compat"``."""

    mode: str
    threads: int
    trace: bool
    chunk_bytes: int
    staging_bytes: int


def get_config() -> Config:
    """The library's configuration now (environment defaults, then set_config)."""
    return Config(**_phxfs.get_config())


def set_config(
    *,
    mode: Optional[str] = None,
    threads: Optional[int] = None,
    trace: Optional[bool] = None,
    chunk_bytes: Optional[int] = None,
    staging_bytes: Optional[int] = None,
) -> Config:
    """Change some settings, keep the others; returns the new configuration.

    >>> phxfs.set_config(mode="compat", threads=4)
    """
    cur = get_config()
    _phxfs.set_config(
        cur.mode if mode is None else mode,
        cur.threads if threads is None else threads,
        cur.trace if trace is None else trace,
        cur.chunk_bytes if chunk_bytes is None else chunk_bytes,
        cur.staging_bytes if staging_bytes is None else staging_bytes,
    )
    return get_config()


@dataclass(frozen=True)
class PathStats:
    read_bytes: int
    read_calls: int
    read_ns: int
    write_bytes: int
    write_calls: int
    write_ns: int


@dataclass(frozen=True)
class Stats:
    """``phxfs_get_stats``: ``paths`` maps ``phxfs_path_name()`` (``"direct"``,
    ``"compat"``) to its counters; :meth:`path_used` says which ran."""

    paths: Dict[str, PathStats] = field(default_factory=dict)
    errors: int = 0
    registrations: int = 0
    fallbacks: int = 0
    staging_bytes: int = 0

    def path_used(self) -> List[str]:
        """Names of the paths that moved any bytes."""
        return [
            name for name, p in self.paths.items() if p.read_bytes or p.write_bytes
        ]


def stats(device: Union[int, Device] = 0) -> Stats:
    """Counters of a device since load or the last :func:`reset_stats`.

    >>> phxfs.stats(0).paths["compat"].read_bytes
    """
    d = _phxfs.get_stats(_device_id(device))
    paths = {k: PathStats(**v) for k, v in d.pop("paths").items()}
    return Stats(paths=paths, **d)


def reset_stats(device: Union[int, Device] = 0) -> None:
    """Zero a device's counters."""
    _phxfs.reset_stats(_device_id(device))
