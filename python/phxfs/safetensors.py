"""Safetensors checkpoints through phxfs: every read of a file in flight at once.

A drop-in for the loading side of the ``safetensors`` package, for numpy
(``framework="np"``) and torch (``framework="pt"``)::

    from phxfs.safetensors import load_file, safe_open, save_file

    tensors = load_file("model.safetensors")                    # numpy, host memory
    tensors = load_file("model.safetensors", device="cuda:0")   # torch, GPU 0
    tensors = load_file("model.safetensors.index.json", device="cuda:0")  # sharded

    with safe_open("model.safetensors", framework="pt", device="cuda:0") as f:
        f.keys(), f.metadata()
        w = f.get_tensor("lm_head.weight")           # reads this tensor only
        rows = f.get_slice("embed.weight")[1000:2000]  # reads these rows only

    save_file({"w": np.ones((2, 2), np.float32)}, "out.safetensors", metadata={"k": "v"})

    # tensor parallel: this rank's shard of each tensor, reading only its bytes
    shard = load_file("model.safetensors.index.json", device=f"cuda:{rank}",
                      tp_plan=LLAMA_TP_PLAN, tp_rank=rank, tp_size=world)

How a file is loaded: its header is read and validated once (strictly: any
malformed header raises :class:`SafetensorError`, a ``ValueError``, naming
the problem, before a byte of tensor data is read); then one allocation of
the data section's size is made, in host memory or straight in device
memory (``device="cuda:N"``: no host copy of the model is ever made), and
all its reads are submitted together as one phxfs batch (the data section
in pieces of ``chunk_bytes``; the shards of an index go in the same batch).
Tensors are views into that allocation.

Tensor parallelism (``load_file(..., tp_plan=, tp_rank=, tp_size=)`` or
``process_group=``): a :class:`TPPlan` says which tensors split along which
dimension (glob patterns, first match wins, the rest replicated;
:data:`LLAMA_TP_PLAN` for Llama-style names); each rank gets
``ceil(n / tp_size)`` indices of a split dimension (the last ranks fewer)
and reads only those bytes: one range for a dim-0 split, one per row for a
dim-1 split, all in the one batch, into one compact allocation per file in
which each shard is C-contiguous (the geometry is in ``phxfs._tp``).

Alignment: the allocation starts on a 4096-byte boundary, so a tensor whose
offset in the data section is a multiple of its element size is a view
without a copy. Files written by ``safetensors`` (and by :func:`save_file`)
always are: tensors are sorted by element size, largest first, and the header
is padded to 8 bytes. A misaligned tensor (another writer's file) is a copy
for torch, which cannot view misaligned storage (``torch.Tensor.view(dtype)``
refuses it), on the same device; numpy views it in place (an unaligned
array, which numpy handles).

dtypes numpy lacks (BF16 and the FP8 kinds): with ``ml_dtypes`` installed
(JAX's), arrays of its dtypes; otherwise raw bytes, as a numpy void dtype of
the element size (``np.dtype("V2")`` for BF16) with the header's shape, so
that no bytes are lost. The packed sub-byte kinds (F4, F6_*) load for numpy
as uint8 arrays of the packed bytes (last dimension scaled by bits/8).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from ._api import Batch, File
from ._tp import LLAMA_TP_PLAN, PlanLike, TPPlan, resolve_tp, shard_bounds, shard_layout

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "SafetensorError",
    "TensorInfo",
    "Header",
    "read_header",
    "parse_header",
    "load_file",
    "load",
    "safe_open",
    "save_file",
    "MAX_HEADER_SIZE",
    "TPPlan",
    "LLAMA_TP_PLAN",
    "shard_bounds",
]

#: The reference implementation's limit on the JSON header (100 MB).
MAX_HEADER_SIZE = 100_000_000
#: Each file's data section is read in requests of at most this many bytes.
#: The engine cuts requests into staging-sized pieces and keeps every lane
#: busy across them, so the size matters little (on an H100, 16 GB cached:
#: 64 MiB requests 38.2 GB/s, 1 GiB 40.0;
#: bench/results/2026-12-06-h100-session3.md); large ones keep the batch short.
CHUNK_BYTES = 1 << 30
_ALIGN = 4096

Framework = Literal["np", "numpy", "pt", "torch"]
PathLike = Union[str, "os.PathLike[str]"]


class SafetensorError(ValueError):
    """A malformed safetensors file or index (the message names the problem)."""


# Element sizes in bits. The order is the reference implementation's Dtype
# enum; save_file sorts by it (largest first) as safetensors does, so that
# files come out byte for byte the same.
_DTYPE_ORDER: Tuple[Tuple[str, int], ...] = (
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("F8_E4M3FNUZ", 8),
    ("F8_E5M2FNUZ", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
)
DTYPE_BITS: Dict[str, int] = dict(_DTYPE_ORDER)
_DTYPE_RANK: Dict[str, int] = {name: i for i, (name, _) in enumerate(_DTYPE_ORDER)}

_NP_NATIVE: Dict[str, Any] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "F16": np.float16,
    "I32": np.int32,
    "U32": np.uint32,
    "F32": np.float32,
    "I64": np.int64,
    "U64": np.uint64,
    "F64": np.float64,
    "C64": np.complex64,
}
# dtypes numpy lacks, by their ml_dtypes names.
_ML_DTYPES: Dict[str, str] = {
    "BF16": "bfloat16",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
_TORCH: Dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "C64": "complex64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


def numpy_dtype(code: str) -> "np.dtype[Any]":
    """The numpy dtype phxfs loads a safetensors dtype code as (see the module doc)."""
    if code in _NP_NATIVE:
        dt: "np.dtype[Any]" = np.dtype(_NP_NATIVE[code])
        return dt
    if code in _ML_DTYPES:
        try:
            import ml_dtypes

            dt = np.dtype(getattr(ml_dtypes, _ML_DTYPES[code]))
            return dt
        except (ImportError, AttributeError):
            return np.dtype(f"V{DTYPE_BITS[code] // 8}")
    if code in DTYPE_BITS:  # packed sub-byte kinds
        return np.dtype(np.uint8)
    raise SafetensorError(f"unknown dtype {code!r}")


def _torch_dtype(code: str) -> "torch.dtype":
    import torch

    name = _TORCH.get(code)
    dt = getattr(torch, name, None) if name else None
    if dt is None:
        raise SafetensorError(f"dtype {code} has no torch dtype in torch {torch.__version__}")
    return dt


# --------------------------------------------------------------------------
# The header
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a header; ``begin``/``end`` are offsets in the data section."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Header:
    """A validated header: tensors in file order, metadata, where data starts."""

    tensors: Dict[str, TensorInfo]
    metadata: Optional[Dict[str, str]]
    data_start: int
    data_size: int


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    d: Dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise SafetensorError(f"header has the key {k!r} twice")
        d[k] = v
    return d


def _no_constants(name: str) -> Any:
    raise SafetensorError(f"header holds {name}, which is not JSON")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw: bytes, file_size: int) -> Header:
    """Validate a header's JSON bytes (what follows the 8-byte length) for a
    file of ``file_size`` bytes. Raises :class:`SafetensorError`."""
    n = len(raw)
    if n == 0:
        raise SafetensorError("header length is 0: the JSON header is empty")
    if raw[:1] != b"{":
        raise SafetensorError("header does not start with '{': not a safetensors JSON header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorError(f"header is not valid UTF-8: {e}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except SafetensorError:
        raise
    except (ValueError, RecursionError) as e:
        raise SafetensorError(f"header is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise SafetensorError("header is not a JSON object")

    metadata = obj.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise SafetensorError("__metadata__ must map strings to strings")

    data_start = 8 + n
    data_size = file_size - data_start
    tensors: List[TensorInfo] = []
    for name, info in obj.items():
        if not isinstance(info, dict):
            raise SafetensorError(f"tensor {name!r}: its entry is not a JSON object")
        keys = set(info)
        if keys != {"dtype", "shape", "data_offsets"}:
            missing = {"dtype", "shape", "data_offsets"} - keys
            extra = keys - {"dtype", "shape", "data_offsets"}
            raise SafetensorError(
                f"tensor {name!r}: "
                + (f"missing {sorted(missing)}" if missing else f"unexpected keys {sorted(extra)}")
            )
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise SafetensorError(f"tensor {name!r}: unknown dtype {dtype!r}")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorError(
                f"tensor {name!r}: shape must be a list of non-negative integers, not {shape!r}"
            )
        offs = info["data_offsets"]
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_int(o) and o >= 0 for o in offs)
        ):
            raise SafetensorError(
                f"tensor {name!r}: data_offsets must be two non-negative integers, not {offs!r}"
            )
        begin, end = offs
        if begin > end:
            raise SafetensorError(f"tensor {name!r}: data_offsets {offs} end before they begin")
        if end > data_size:
            raise SafetensorError(
                f"tensor {name!r}: data_offsets {offs} run past the data section "
                f"({max(data_size, 0)} bytes)"
            )
        numel = 1
        for d in shape:
            numel *= d
        bits = numel * DTYPE_BITS[dtype]
        if bits % 8:
            raise SafetensorError(
                f"tensor {name!r}: {numel} elements of {dtype} are not a whole number of bytes"
            )
        if bits // 8 != end - begin:
            raise SafetensorError(
                f"tensor {name!r}: shape {shape} of {dtype} is {bits // 8} bytes but "
                f"data_offsets {offs} hold {end - begin}"
            )
        tensors.append(TensorInfo(name, dtype, tuple(shape), begin, end))

    # The data section must be exactly the tensors, back to back.
    ordered = sorted(tensors, key=lambda t: (t.begin, t.end))
    pos = 0
    prev: Optional[TensorInfo] = None
    for t in ordered:
        if t.begin != pos:
            if t.begin < pos:
                raise SafetensorError(
                    f"tensors {prev.name if prev else '?'!r} and {t.name!r} overlap "
                    f"(data_offsets ending at {pos} and beginning at {t.begin})"
                )
            raise SafetensorError(
                f"gap in the data section before tensor {t.name!r}: it begins at {t.begin}, "
                f"the previous tensor ends at {pos}"
            )
        pos = t.end
        prev = t
    if pos != data_size:
        raise SafetensorError(
            f"the tensors cover {pos} bytes but the data section is {data_size} bytes "
            "(file truncated or trailing bytes)"
        )
    return Header({t.name: t for t in ordered}, metadata, data_start, data_size)


def _read_exact(f: File, buf: Any, offset: int, what: str) -> None:
    n = f.read_into(buf, file_offset=offset)
    if n != len(buf):
        raise SafetensorError(f"{f.name}: file truncated while reading {what}")


def read_header(f: File) -> Header:
    """Read and validate the header of an open :class:`phxfs.File`."""
    size = f.size()
    if size < 8:
        raise SafetensorError(
            f"{f.name}: file is {size} bytes, too short for the 8-byte header length"
        )
    prefix = bytearray(8)
    _read_exact(f, prefix, 0, "the header length")
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_SIZE:
        raise SafetensorError(f"{f.name}: header length {n} exceeds the limit {MAX_HEADER_SIZE}")
    if 8 + n > size:
        raise SafetensorError(
            f"{f.name}: header length {n} runs past the end of the file ({size} bytes)"
        )
    raw = bytearray(n)
    if n:
        _read_exact(f, raw, 8, "the header")
    try:
        return parse_header(bytes(raw), size)
    except SafetensorError as e:
        raise SafetensorError(f"{f.name}: {e}") from None


# --------------------------------------------------------------------------
# Devices, frameworks, allocations
# --------------------------------------------------------------------------


def _parse_device(device: Any) -> Tuple[str, int]:
    """("cpu", 0) or ("cuda", N) from "cpu", "cuda", "cuda:N", N or a torch.device."""
    if isinstance(device, bool):
        raise ValueError(f"bad device {device!r}")
    if isinstance(device, int):
        return ("cuda", device)
    s = str(device)
    if s == "cpu":
        return ("cpu", 0)
    if s == "cuda":
        return ("cuda", 0)
    if s.startswith("cuda:") and s[5:].isdigit():
        return ("cuda", int(s[5:]))
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")


def _parse_framework(framework: Optional[str], kind: str) -> str:
    if framework is None:
        return "pt" if kind == "cuda" else "np"
    fw = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt", "pytorch": "pt"}.get(framework)
    if fw is None:
        raise ValueError(f"framework must be 'np' or 'pt', not {framework!r}")
    if fw == "np" and kind == "cuda":
        raise ValueError("framework 'np' loads into host memory; use framework='pt' for cuda")
    return fw


class _Target:
    """Where tensors go: a framework and a device, and how to allocate there."""

    def __init__(self, framework: Optional[str], device: Any) -> None:
        self.kind, self.index = _parse_device(device)
        self.framework = _parse_framework(framework, self.kind)
        # phxfs device ids are CUDA ids; host memory goes through device 0
        # (libphxfs tells host from device memory by the pointer).
        self.phxfs_device = self.index if self.kind == "cuda" else 0

    def alloc(self, nbytes: int) -> Any:
        """One byte buffer of nbytes, 4096-aligned on the host."""
        if self.framework == "np":
            raw = np.empty(nbytes + _ALIGN, np.uint8)
            skip = (-raw.ctypes.data) % _ALIGN
            return raw[skip : skip + nbytes]
        import torch

        if self.kind == "cuda":
            # The CUDA caching allocator's blocks start 512-byte aligned.
            return torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{self.index}")
        raw = torch.empty(nbytes + _ALIGN, dtype=torch.uint8)
        skip = (-raw.data_ptr()) % _ALIGN
        return raw[skip : skip + nbytes]

    def view(self, buf: Any, start: int, t: TensorInfo) -> Any:
        """Tensor t of buf, whose byte start is t.begin - start."""
        b, e = t.begin - start, t.end - start
        if self.framework == "np":
            dt = numpy_dtype(t.dtype)
            piece = buf[b:e]
            if DTYPE_BITS[t.dtype] % 8:
                shape = t.shape
                if shape and (shape[-1] * DTYPE_BITS[t.dtype]) % 8 == 0:
                    return piece.reshape(shape[:-1] + (shape[-1] * DTYPE_BITS[t.dtype] // 8,))
                return piece
            return piece.view(dt).reshape(t.shape)
        import torch

        dt = _torch_dtype(t.dtype)
        piece = buf[b:e]
        item = DTYPE_BITS[t.dtype] // 8
        if (piece.data_ptr() % item) != 0:
            piece = piece.clone()  # misaligned for torch: one copy, same device
        if dt.is_complex:  # view(dtype) does not change complex sizes: go through pairs
            return torch.view_as_complex(piece.view(torch.float32).view(t.shape + (2,)))
        return piece.view(dt).view(t.shape)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


class _FileLoad:
    """One open file being loaded: its header, allocation and requests."""

    def __init__(self, path: PathLike, target: _Target) -> None:
        self.path = os.fspath(path)
        self.file = File(self.path, "r", device=target.phxfs_device)
        try:
            self.header = read_header(self.file)
        except BaseException:
            self.file.close()
            raise
        self.buf: Any = None

    def requests(self, target: _Target, chunk: int) -> List[Tuple[Any, ...]]:
        size = self.header.data_size
        self.buf = target.alloc(size)
        return [
            (self.file, "read", self.buf, self.header.data_start + off, min(chunk, size - off), off)
            for off in range(0, size, chunk)
        ]

    def tensor(self, target: _Target, name: str) -> Any:
        """Tensor ``name`` of the loaded file."""
        return target.view(self.buf, 0, self.header.tensors[name])

    def close(self) -> None:
        self.file.close()


class _ShardLoad(_FileLoad):
    """One file of a tensor-parallel load: only this rank's bytes of each
    tensor, read into one compact allocation in which each shard is C-contiguous."""

    def __init__(self, path: PathLike, target: _Target, plan: TPPlan, rank: int, size: int) -> None:
        super().__init__(path, target)
        #: each tensor's shard, with begin/end its bytes in the allocation
        self.shards: Dict[str, TensorInfo] = {}
        #: (file offset, length, allocation offset), adjacent ranges merged
        self.ranges: List[Tuple[int, int, int]] = []
        pos = 0
        try:
            for t in self.header.tensors.values():  # file order: ranges come out sorted
                lay = shard_layout(
                    t.name, DTYPE_BITS[t.dtype], t.shape, plan.split_dim(t.name), rank, size
                )
                pos += -pos % max(DTYPE_BITS[t.dtype] // 8, 1)  # a view without a copy
                self.shards[t.name] = TensorInfo(t.name, t.dtype, lay.shape, pos, pos + lay.nbytes)
                for off, n in lay.runs:
                    self._add(self.header.data_start + t.begin + off, n, pos)
                    pos += n
        except BaseException:
            self.file.close()
            raise
        self.size = pos

    def _add(self, file_off: int, n: int, buf_off: int) -> None:
        if self.ranges:
            f, m, b = self.ranges[-1]
            if f + m == file_off and b + m == buf_off:
                self.ranges[-1] = (f, m + n, b)
                return
        self.ranges.append((file_off, n, buf_off))

    def requests(self, target: _Target, chunk: int) -> List[Tuple[Any, ...]]:
        self.buf = target.alloc(self.size)
        return [
            (self.file, "read", self.buf, f + k, min(chunk, n - k), b + k)
            for f, n, b in self.ranges
            for k in range(0, n, chunk)
        ]

    def tensor(self, target: _Target, name: str) -> Any:
        return target.view(self.buf, 0, self.shards[name])


def _run_loads(loads: Sequence[_FileLoad], target: _Target, chunk: int) -> None:
    reqs: List[Tuple[Any, ...]] = []
    owner: List[_FileLoad] = []
    for ld in loads:
        r = ld.requests(target, chunk)
        reqs += r
        owner += [ld] * len(r)
    if not reqs:
        return
    with Batch(min(len(reqs), 4096)) as b:
        done = b.run(reqs)
    for c in done:
        ld = owner[c.tag]
        want = reqs[c.tag][4]
        n = c.check()  # raises the request's OSError
        if n != want:
            raise SafetensorError(f"{ld.path}: file truncated while loading ({n} of {want} bytes)")


def load_file(
    filename: PathLike,
    device: Any = "cpu",
    framework: Optional[Framework] = None,
    chunk_bytes: int = CHUNK_BYTES,
    *,
    tp_plan: Optional[PlanLike] = None,
    tp_rank: Optional[int] = None,
    tp_size: Optional[int] = None,
    process_group: Any = None,
) -> Dict[str, Any]:
    """Load every tensor of a safetensors file, or of a sharded checkpoint
    (or, tensor-parallel, this rank's shard of every tensor).

    ``filename``: a ``.safetensors`` file, a ``*.index.json`` index of
    shards, or a directory holding ``model.safetensors.index.json`` or
    ``model.safetensors``. ``device``: ``"cpu"`` or ``"cuda:N"``.
    ``framework``: ``"np"`` (numpy arrays; the default on the CPU) or
    ``"pt"`` (torch tensors; the default, and the only choice, on cuda).

    Returns what ``safetensors.numpy.load_file`` /
    ``safetensors.torch.load_file`` return: names to tensors of the same
    dtypes, shapes and bytes (tensors are views into one allocation per
    file). Raises :class:`SafetensorError` for a malformed file, ``OSError``
    for I/O failures.

    Tensor parallelism: with ``tp_plan`` (a :class:`TPPlan`, or a mapping of
    glob patterns to split dims), ``tp_rank`` and ``tp_size`` (or
    ``process_group``, a ``torch.distributed`` group whose rank and size are
    taken: ``torch`` is imported only then), each tensor the plan splits
    comes back as this rank's part of it, ``ceil(n / tp_size)`` indices of
    the split dimension (the last ranks fewer, possibly none); the others
    whole. Only those bytes are read: one range for a split of dim 0,
    one per row for dim 1 (all requests of all files in the one batch), into
    one compact allocation per file in which every shard is C-contiguous.
    A split dim out of range, or a split of a packed sub-byte tensor, raises
    ``ValueError`` naming the tensor before any data is read.

    >>> t = load_file("model.safetensors", device="cuda:0")
    >>> t["lm_head.weight"].device
    device(type='cuda', index=0)
    >>> rank, world = dist.get_rank(), dist.get_world_size()
    >>> t = load_file("model.safetensors.index.json", device=f"cuda:{rank}",
    ...               tp_plan=LLAMA_TP_PLAN, process_group=dist.group.WORLD)
    >>> t["model.layers.0.mlp.down_proj.weight"].shape   # [hidden, ffn / world]
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be at least 1")
    tp = resolve_tp(tp_plan, tp_rank, tp_size, process_group)
    target = _Target(framework, device)
    if tp is None:
        make: Callable[[str], _FileLoad] = lambda p: _FileLoad(p, target)
    else:
        plan, rank, size = tp
        make = lambda p: _ShardLoad(p, target, plan, rank, size)
    path = os.fspath(filename)
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        path = idx if os.path.exists(idx) else os.path.join(path, "model.safetensors")
    if path.endswith(".index.json"):
        return _load_sharded(path, target, chunk_bytes, make)
    ld = make(path)
    try:
        _run_loads([ld], target, chunk_bytes)
        return {name: ld.tensor(target, name) for name in ld.header.tensors}
    finally:
        ld.close()


#: Same as :func:`load_file`.
load = load_file


def read_index(index_path: PathLike) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """Validate a ``model.safetensors.index.json``: (weight_map, metadata)."""
    path = os.fspath(index_path)
    try:
        with open(path, "rb") as fh:
            obj = json.loads(
                fh.read().decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_no_constants,
            )
    except SafetensorError as e:
        raise SafetensorError(f"{path}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise SafetensorError(f"{path}: not a valid JSON index: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        raise SafetensorError(f"{path}: an index needs a 'weight_map' object")
    wm = obj["weight_map"]
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard:
            raise SafetensorError(f"{path}: tensor {name!r} maps to {shard!r}, not a file name")
        if os.path.isabs(shard) or ".." in shard.split("/"):
            raise SafetensorError(
                f"{path}: shard {shard!r} is outside the index's directory"
            )
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SafetensorError(f"{path}: 'metadata' must be an object")
    return dict(wm), meta


def _load_sharded(
    index_path: str, target: _Target, chunk: int, make: Callable[[str], _FileLoad]
) -> Dict[str, Any]:
    wm, _ = read_index(index_path)
    base = os.path.dirname(index_path)
    shards: Dict[str, List[str]] = {}
    for name, shard in wm.items():
        shards.setdefault(shard, []).append(name)
    loads: List[_FileLoad] = []
    try:
        for shard in shards:
            loads.append(make(os.path.join(base, shard)))
        for ld, (shard, names) in zip(loads, shards.items()):
            missing = [n for n in names if n not in ld.header.tensors]
            if missing:
                raise SafetensorError(
                    f"{index_path}: {len(missing)} tensors of the weight map are not in "
                    f"{shard} (first: {missing[0]!r})"
                )
        _run_loads(loads, target, chunk)  # all shards' reads in one batch
        out: Dict[str, Any] = {}
        for ld, names in zip(loads, shards.values()):
            for n in names:
                out[n] = ld.tensor(target, n)
        return out
    finally:
        for ld in loads:
            ld.close()


class _Slice:
    """A tensor's lazily read slice (``safe_open.get_slice``): index it to read."""

    def __init__(self, owner: "safe_open", info: TensorInfo) -> None:
        self._owner = owner
        self._info = info

    def get_shape(self) -> List[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, key: Any) -> Any:
        t = self._info
        if not isinstance(key, tuple):
            key = (key,)
        if not t.shape:
            if key not in ((), (Ellipsis,)):
                raise IndexError("a 0-d tensor takes only [...] or [()]")
            return self._owner._read_rows(t, 0, 1)
        if DTYPE_BITS[t.dtype] % 8:
            raise SafetensorError(f"slices of packed {t.dtype} tensors are not supported")
        n0 = t.shape[0]
        first = key[0] if key else slice(None)
        rest = key[1:]
        if first is Ellipsis:
            return self._owner._read_rows(t, 0, n0)[key]
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            i = int(first)
            if i < 0:
                i += n0
            if not 0 <= i < n0:
                raise IndexError(f"index {int(first)} is out of range for dimension 0 of {n0}")
            return self._owner._read_rows(t, i, i + 1)[(0,) + rest]
        if isinstance(first, slice):
            rng = range(*first.indices(n0))
            if rng.step <= 0:
                raise ValueError("slices with a negative step are not supported")
            if len(rng) == 0:
                return self._owner._read_rows(t, 0, 0)[(slice(0, 0),) + rest]
            lo, hi = rng[0], rng[-1] + 1
            rows = self._owner._read_rows(t, lo, hi)
            return rows[(slice(0, hi - lo, rng.step),) + rest]
        raise TypeError(f"cannot index a tensor slice with {type(first).__name__}")


class safe_open:
    """A safetensors file opened lazily, as ``safetensors.safe_open``.

    The header is read and validated at open; ``get_tensor`` and
    ``get_slice(...)[...]`` read only the bytes they need, through phxfs,
    into a new allocation on ``device``.

    >>> with safe_open("model.safetensors", framework="np") as f:
    ...     for k in f.keys():
    ...         x = f.get_tensor(k)
    """

    def __init__(self, filename: PathLike, framework: Framework = "np", device: Any = "cpu") -> None:
        self._target = _Target(framework, device)
        self._load = _FileLoad(filename, self._target)

    @property
    def header(self) -> Header:
        return self._load.header

    def keys(self) -> List[str]:
        """Tensor names, sorted (as safetensors gives them)."""
        return sorted(self._load.header.tensors)

    def offset_keys(self) -> List[str]:
        """Tensor names in file order."""
        return list(self._load.header.tensors)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The header's ``__metadata__`` (None when absent)."""
        m = self._load.header.metadata
        return None if m is None else dict(m)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._load.header.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self._load.path}") from None

    def _read_rows(self, t: TensorInfo, lo: int, hi: int) -> Any:
        """Rows [lo, hi) of dimension 0 (or all of a 0-d tensor) as a tensor."""
        if t.shape:
            row = t.nbytes // t.shape[0] if t.shape[0] else 0
            shape = (hi - lo,) + t.shape[1:]
        else:
            row, shape = t.nbytes, ()
        part = TensorInfo(t.name, t.dtype, shape, t.begin + lo * row, t.begin + hi * row)
        buf = self._target.alloc(part.nbytes)
        if part.nbytes:
            n = self._load.file.read_into(
                buf, file_offset=self._load.header.data_start + part.begin
            )
            if n != part.nbytes:
                raise SafetensorError(f"{self._load.path}: file truncated while reading {t.name!r}")
        return self._target.view(buf, part.begin, part)

    def get_tensor(self, name: str) -> Any:
        """Read one tensor."""
        t = self._info(name)
        return self._read_rows(t, 0, t.shape[0]) if t.shape else self._read_rows(t, 0, 1)

    def get_slice(self, name: str) -> _Slice:
        """A lazy slice: ``f.get_slice("w")[10:20]`` reads rows 10..19 only."""
        return _Slice(self, self._info(name))

    def get_tensors(self) -> Dict[str, Any]:
        """All tensors, read as :func:`load_file` does (one batch)."""
        ld = self._load
        _run_loads([ld], self._target, CHUNK_BYTES)
        buf, ld.buf = ld.buf, None
        return {name: self._target.view(buf, 0, t) for name, t in ld.header.tensors.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def close(self) -> None:
        self._load.close()

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------

_NP_TO_CODE: Dict[str, str] = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "int64": "I64",
    "uint64": "U64",
    "float64": "F64",
    "complex64": "C64",
    **{v: k for k, v in _ML_DTYPES.items()},
}


def _tensor_entry(name: str, x: Any) -> Tuple[str, Tuple[int, ...], Any, int]:
    """(dtype code, shape, a contiguous buffer phxfs can write from, nbytes)."""
    if isinstance(x, np.ndarray):
        code = _NP_TO_CODE.get(x.dtype.name)
        if code is None:
            raise ValueError(f"tensor {name!r}: numpy dtype {x.dtype} has no safetensors dtype")
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("<"))
        if not x.flags.c_contiguous:
            x = x.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        # A flat uint8 view exports plain bytes whatever the dtype (ml_dtypes'
        # have no buffer-protocol format).
        return code, tuple(x.shape), x.reshape(-1).view(np.uint8), x.nbytes
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        rev = {getattr(torch, v): k for k, v in _TORCH.items() if hasattr(torch, v)}
        code = rev.get(x.dtype)
        if code is None:
            raise ValueError(f"tensor {name!r}: torch dtype {x.dtype} has no safetensors dtype")
        x = x.detach().contiguous()
        if x.is_complex():
            x = torch.view_as_real(x)
        flat = (
            x.reshape(-1).view(torch.uint8)
            if x.numel()
            else torch.empty(0, dtype=torch.uint8, device=x.device)
        )
        shape = tuple(x.shape[:-1]) if code == "C64" else tuple(x.shape)
        return code, shape, flat, x.numel() * x.element_size()
    raise TypeError(f"tensor {name!r}: save_file takes numpy arrays or torch tensors, not {type(x)}")


def _json_header(
    entries: Sequence[Tuple[str, str, Tuple[int, ...], int, int]],
    metadata: Optional[Mapping[str, str]],
) -> bytes:
    parts: List[str] = []
    enc: Callable[[Any], str] = lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":"))
    if metadata is not None:
        parts.append(f"{enc('__metadata__')}:{enc(dict(metadata))}")
    for name, code, shape, b, e in entries:
        parts.append(
            f'{enc(name)}:{{"dtype":{enc(code)},"shape":{enc(list(shape))},'
            f'"data_offsets":[{b},{e}]}}'
        )
    raw = ("{" + ",".join(parts) + "}").encode("utf-8")
    return raw + b" " * ((-len(raw)) % 8)


def save_file(
    tensors: Mapping[str, Any],
    filename: PathLike,
    metadata: Optional[Mapping[str, str]] = None,
    device: Optional[int] = None,
) -> None:
    """Write tensors as a safetensors file, through phxfs (one batch of writes).

    Takes numpy arrays, or torch tensors (on the CPU or on a GPU: GPU tensors
    are written from device memory, with no host copy through Python). The
    layout is safetensors' own (tensors sorted by element size, largest
    first, then by name; header padded to 8 bytes), so the file is byte for
    byte what ``safetensors.numpy.save_file`` writes. ``device`` is the phxfs
    device (a CUDA id); by default that of the GPU tensors, else 0.

    >>> save_file({"w": np.eye(4, dtype=np.float32)}, "w.safetensors", metadata={"fmt": "np"})
    """
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise ValueError("metadata must map strings to strings")
    items = []
    for name, x in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, not {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved")
        code, shape, buf, nbytes = _tensor_entry(name, x)
        items.append((name, code, shape, buf, nbytes))
    if device is None:
        gpus = {
            x.device.index or 0 for x in tensors.values() if getattr(x, "is_cuda", False)
        }
        if len(gpus) > 1:
            raise ValueError(f"tensors on several GPUs {sorted(gpus)}: pass device=")
        device = gpus.pop() if gpus else 0
    items.sort(key=lambda it: (-_DTYPE_RANK[it[1]], it[0]))
    entries = []
    pos = 0
    for name, code, shape, _, nbytes in items:
        entries.append((name, code, shape, pos, pos + nbytes))
        pos += nbytes
    header = _json_header(entries, metadata)
    start = 8 + len(header)
    with File(filename, "w", device=device) as f:
        f.write_from(len(header).to_bytes(8, "little") + header)
        reqs = [
            (f, "write", buf, start + b, e - b, 0)
            for (_, _, _, buf, _), (_, _, _, b, e) in zip(items, entries)
            if e > b
        ]
        if reqs:
            with Batch(min(len(reqs), 4096)) as batch:
                for c in batch.run(reqs):
                    c.check()
