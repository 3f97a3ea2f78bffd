#!/usr/bin/env python3
"""kvikio's stream-ordered reads, beside phxfs-bench --stream (issue 12).

N requests of SIZE bytes at random SIZE-aligned offsets of FILE (seeded: the
same requests for both methods) are read into one CuPy device buffer of SIZE
bytes (every request into its start, as phxfs-bench --stream does):

- ``kvikio-stream``: ``CuFile.raw_read_async(buf, stream.ptr, SIZE, offset,
  0)`` for every request on one non-blocking ``cupy.cuda.Stream``, then one
  ``stream.synchronize()``; after it, ``check_bytes_done()`` of every future
  gives the bytes (a failed request raises there). Where kvikio has
  ``stream_register``, the stream is registered with flags 0 (sizes and
  offsets read when the stream gets to a request), as phxfs-bench -x cufile
  --stream does.
- ``kvikio-pread``: ``CuFile.pread(buf, SIZE, offset)`` for every request,
  all in flight on kvikio's thread pool (``KVIKIO_NTHREADS``), then
  ``.get()`` of every future.

The clock runs from the first request to the synchronize (stream) or the
last ``.get()`` (pread); one untimed request of each method goes first
(``--warmup``). Without GPUDirect Storage kvikio runs in its compatibility
mode, where ``raw_read_async`` synchronizes the stream and reads with POSIX
calls, request by request (also when cuFile lacks its stream API or has no
cufile.json); the remark column says which mode kvikio chose.

Prints one Markdown table row per method (``| size | path | GiB/s |
requests/s | remark |``; ``--header`` adds the header), or with ``--json``
one "LABEL {json}" line per method, as bench/batch_table.py's ``records()``
reads them (keys as phxfs-bench --json names them: io_size, ops, bytes,
total_time_s, throughput_gib_s; and error where a method failed).

    python3 bench/kvikio_stream.py -f FILE -s 4K -n 20000 [--json]

Needs kvikio (26.x) and cupy; exits 2 with a message where either is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple


def size_name(n: int) -> str:
    """4096 -> '4 KiB', as the table names sizes."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n >> 10} KiB" if n >= 1 << 10 and n % (1 << 10) == 0 else f"{n} B"


def parse_size(text: str) -> int:
    """'4K' -> 4096: K, M, G suffixes are powers of 1024 (as phxfs-bench's)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip()
    mult = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if mult > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (want N, NK, NM or NG, N > 0)")
    return int(digits) * mult


@dataclass
class Result:
    """One method's run, in phxfs-bench's JSON key names where they overlap."""

    label: str
    io_size: int
    ops: int = 0
    bytes: int = 0
    total_time_s: float = 0.0
    remark: str = ""
    error: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def gib_per_s(self) -> float:
        return self.bytes / self.total_time_s / (1 << 30) if self.total_time_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ops / self.total_time_s if self.total_time_s > 0 else 0.0

    def record(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {
            "path_option": "kvikio",
            "io_size": self.io_size,
            "ops": self.ops,
            "bytes": self.bytes,
            "total_time_s": self.total_time_s,
            "throughput_gib_s": self.gib_per_s,
            "requests_per_s": self.requests_per_s,
            "remark": self.remark,
            **self.extra,
        }
        if self.error:
            r["error"] = self.error
        return r

    def row(self) -> str:
        size = size_name(self.io_size)
        if self.error:
            return f"| {size} | {self.label} | failed | | {self.error} |"
        return (
            f"| {size} | {self.label} | {self.gib_per_s:.2f} | {self.requests_per_s:.0f} "
            f"| {self.remark} |"
        )


def fail(message: str) -> NoReturn:
    """Exits 2 with the message on stderr."""
    print(f"kvikio_stream.py: {message}", file=sys.stderr)
    sys.exit(2)


def import_deps() -> Tuple[ModuleType, ModuleType]:
    """kvikio and cupy, or exit 2 saying which is missing."""
    try:
        import cupy  # type: ignore[import-not-found]
        import kvikio  # type: ignore[import-not-found]
        import kvikio.defaults  # type: ignore[import-not-found]
    except ImportError as e:
        fail(
            f"needs kvikio and cupy ({e}); install them (e.g. pip install kvikio-cu12 "
            "cupy-cuda12x) or put them on PYTHONPATH"
        )
    except Exception as e:  # e.g. a CUDA library that cupy or kvikio cannot load
        fail(f"importing kvikio and cupy failed: {type(e).__name__}: {e}")
    return kvikio, cupy


def cufile_config_path() -> str:
    """cuFile's configuration file as kvikio finds it ('' where there is none)."""
    env = os.environ.get("CUFILE_ENV_PATH_JSON", "")
    if env:
        return env
    return "/etc/cufile.json" if os.path.exists("/etc/cufile.json") else ""


def kvikio_mode(kvikio: ModuleType) -> Tuple[bool, str, str]:
    """(compat mode preferred, how kvikio reads, what that means for raw_read_async)."""
    defaults = kvikio.defaults
    if hasattr(defaults, "is_compat_mode_preferred"):
        compat = bool(defaults.is_compat_mode_preferred())
    else:  # kvikio before 25.04
        compat = str(defaults.compat_mode()).endswith("ON")
    if compat:
        return True, "kvikio compat mode (POSIX reads)", "synchronous there"
    if not cufile_config_path():
        return False, "kvikio cuFile", "no cufile.json: synchronous"
    return False, "kvikio cuFile", "cuFileReadAsync"


def offsets(file_size: int, size: int, n: int, seed: int) -> List[int]:
    """n request-aligned offsets in the first file_size bytes, at random."""
    slots = file_size // size
    if slots == 0:
        fail(f"the file is smaller than one request ({size} B)")
    rng = random.Random(seed)
    return [rng.randrange(slots) * size for _ in range(n)]


def timed(label: str, size: int, run: Callable[[], Tuple[int, float]]) -> Result:
    """Runs run() -> (bytes, seconds) into a Result; an exception is its error."""
    res = Result(label=label, io_size=size)
    try:
        res.bytes, res.total_time_s = run()
    except Exception as e:  # kvikio raises RuntimeError / CUfileException subclasses
        res.error = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return res


def stream_reads(
    kvikio: ModuleType,
    cupy: ModuleType,
    compat: bool,
    f: Any,
    buf: Any,
    size: int,
    offs: List[int],
    warmup: int,
) -> Tuple[Result, str]:
    """kvikio-stream: raw_read_async on one stream, one synchronize."""
    stream = cupy.cuda.Stream(non_blocking=True)
    note = "stream not registered (kvikio has no stream_register)"
    registered = False
    if compat:
        note = "stream not registered (compat mode)"
    elif hasattr(kvikio, "stream_register"):
        try:
            kvikio.stream_register(stream.ptr, 0)
            registered = True
            note = "stream registered, flags 0"
        except Exception as e:
            note = f"stream_register failed ({e})"

    def run() -> Tuple[int, float]:
        for off in offs[:warmup]:
            f.raw_read_async(buf, stream.ptr, size, off, 0).check_bytes_done()
        futures = []
        t0 = time.perf_counter()
        for off in offs:
            futures.append(f.raw_read_async(buf, stream.ptr, size, off, 0))
        stream.synchronize()
        secs = time.perf_counter() - t0
        return sum(fu.check_bytes_done() for fu in futures), secs

    try:
        res = timed("kvikio-stream", size, run)
    finally:
        if registered:
            kvikio.stream_deregister(stream.ptr)
    res.ops = len(offs)
    return res, note


def pread_reads(f: Any, buf: Any, size: int, offs: List[int], warmup: int) -> Result:
    """kvikio-pread: pread futures, all in flight, then .get() of each."""

    def run() -> Tuple[int, float]:
        for off in offs[:warmup]:
            f.pread(buf, size, off).get()
        t0 = time.perf_counter()
        futures = [f.pread(buf, size, off) for off in offs]
        done = sum(fu.get() for fu in futures)
        return done, time.perf_counter() - t0

    res = timed("kvikio-pread", size, run)
    res.ops = len(offs)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--file", required=True, help="the data file (read only)")
    ap.add_argument("-s", "--size", type=parse_size, default=parse_size("4K"),
                    help="request size, K M G suffixes (default 4K)")
    ap.add_argument("-n", "--requests", type=int, default=20000, help="requests per method")
    ap.add_argument("--seed", type=int, default=42, help="seed of the offsets (default 42)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed requests before each method's run (default 1)")
    ap.add_argument("--methods", default="stream,pread",
                    help="comma-separated: stream (raw_read_async), pread (futures)")
    ap.add_argument("--no-register", action="store_true",
                    help="leave the buffer unregistered (default: kvikio.memory_register)")
    ap.add_argument("--json", action="store_true", help='print "LABEL {json}" lines')
    ap.add_argument("--header", action="store_true", help="print the Markdown table header")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error("--requests must be at least 1")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in ("stream", "pread") for m in methods):
        ap.error("--methods takes stream and/or pread")

    kvikio, cupy = import_deps()
    size: int = args.size
    offs = offsets(os.path.getsize(args.file), size, args.requests, args.seed)
    compat, mode, stream_mode = kvikio_mode(kvikio)
    buf = cupy.empty(size, dtype=cupy.uint8)
    registered = False
    if not args.no_register and not compat and hasattr(kvikio, "memory_register"):
        kvikio.memory_register(buf)
        registered = True
    extra = {
        "kvikio_version": getattr(kvikio, "__version__", "?"),
        "compat_mode": compat,
        "buffer_registered": registered,
        "nthreads": kvikio.defaults.get("num_threads")
        if hasattr(kvikio.defaults, "get")
        else kvikio.defaults.get_num_threads(),
    }
    labels = {"stream": "kvikio-stream", "pread": "kvikio-pread"}
    results: List[Result] = []
    try:
        with kvikio.CuFile(args.file, "r") as f:
            for m in methods:
                if m == "stream":
                    res, note = stream_reads(kvikio, cupy, compat, f, buf, size, offs, args.warmup)
                    res.remark = f"{mode}, raw_read_async {stream_mode}; {note}"
                else:
                    res = pread_reads(f, buf, size, offs, args.warmup)
                    res.remark = f"{mode}; {extra['nthreads']} threads"
                res.extra = dict(extra)
                results.append(res)
    except Exception as e:  # opening the file (cuFile's handle registration) failed
        error = f"CuFile({args.file!r}): {type(e).__name__}: {e}".replace("\n", " ")
        done = {r.label for r in results}
        results += [
            Result(label=labels[m], io_size=size, error=error, extra=dict(extra))
            for m in methods
            if labels[m] not in done
        ]
    finally:
        if registered:
            kvikio.memory_deregister(buf)

    if args.header and not args.json:
        print("| size | path | GiB/s | requests/s | remark |")
        print("| --- | --- | ---: | ---: | --- |")
    for res in results:
        print(f"{res.label} {json.dumps(res.record())}" if args.json else res.row())
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
