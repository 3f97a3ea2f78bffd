"""Tensor-parallel phxfs.safetensors.load_file against numpy slicing of the
safetensors package's load (ranks simulated in one process)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

pytest.importorskip("safetensors")
import safetensors.numpy as stnp  # noqa: E402

import phxfs  # noqa: E402
import phxfs.safetensors as pst  # noqa: E402
from phxfs.safetensors import LLAMA_TP_PLAN, SafetensorError, TPPlan, load_file  # noqa: E402

from st_util import build, reference  # noqa: E402

SIZES = (1, 2, 3, 4)
H, KV, FFN, VOCAB = 8, 4, 12, 11  # VOCAB and KV split unevenly over 3 and 4


def expect_shard(a: np.ndarray, dim: Optional[int], rank: int, size: int) -> np.ndarray:
    """The rank's part by the documented rule, written out independently:
    ceil(n / size) indices each, in rank order, the last ranks fewer."""
    if dim is None:
        return a
    n = a.shape[dim]
    step = (n + size - 1) // size
    lo = min(rank * step, n)
    hi = min(lo + step, n)
    idx: List[Any] = [slice(None)] * a.ndim
    idx[dim] = slice(lo, hi)
    return a[tuple(idx)]


def llama_tensors(seed: int = 0, layers: int = 2) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, dt: Any = np.float32) -> np.ndarray:
        return rng.standard_normal(shape).astype(dt)

    t = {
        "model.embed_tokens.weight": r(VOCAB, H),
        "model.norm.weight": r(H),
        "lm_head.weight": r(VOCAB, H),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(H, H, dt=np.float16)
        t[p + "self_attn.k_proj.weight"] = r(KV, H, dt=np.float16)
        t[p + "self_attn.v_proj.weight"] = r(KV, H, dt=np.float16)
        t[p + "self_attn.q_proj.bias"] = r(H)
        t[p + "self_attn.o_proj.weight"] = r(H, H, dt=np.float16)
        t[p + "self_attn.o_proj.bias"] = r(H)
        t[p + "mlp.gate_proj.weight"] = r(FFN, H)
        t[p + "mlp.up_proj.weight"] = r(FFN, H)
        t[p + "mlp.down_proj.weight"] = r(H, FFN)
        t[p + "input_layernorm.weight"] = r(H)
        t[p + "post_attention_layernorm.weight"] = r(H)
    return t


LLAMA_DIMS = {
    "q_proj.weight": 0, "k_proj.weight": 0, "v_proj.weight": 0, "q_proj.bias": 0,
    "gate_proj.weight": 0, "up_proj.weight": 0, "o_proj.weight": 1, "down_proj.weight": 1,
    "embed_tokens.weight": 0, "lm_head.weight": 0,
}


def llama_dim(name: str) -> Optional[int]:
    for suffix, d in LLAMA_DIMS.items():
        if name.endswith(suffix):
            return d
    return None


def _root(a: np.ndarray) -> Any:
    while a.base is not None:
        a = a.base
    return a


def check_all_ranks(
    path: Any, ref: Dict[str, np.ndarray], plan: Any, dims: Dict[str, Optional[int]], **kw: Any
) -> None:
    for size in SIZES:
        parts: Dict[str, List[np.ndarray]] = {k: [] for k in ref}
        for rank in range(size):
            got = load_file(path, tp_plan=plan, tp_rank=rank, tp_size=size, **kw)
            assert got.keys() == ref.keys()
            for k, full in ref.items():
                want = expect_shard(full, dims[k], rank, size)
                assert got[k].dtype == want.dtype, k
                assert got[k].shape == want.shape, (k, size, rank)
                assert got[k].tobytes() == want.tobytes(), (k, size, rank)
                parts[k].append(got[k])
        for k, full in ref.items():  # the ranks' parts make up the tensor, none overlapping
            d = dims[k]
            if d is None:
                continue
            cat = np.concatenate(parts[k], axis=d)
            assert cat.tobytes() == full.tobytes(), (k, size)


def test_llama_plan_every_rank(tmp: Path) -> None:
    p = tmp / "llama.safetensors"
    stnp.save_file(llama_tensors(), str(p))
    ref = stnp.load_file(str(p))
    check_all_ranks(p, ref, LLAMA_TP_PLAN, {k: llama_dim(k) for k in ref})


def test_one_allocation_per_file_and_aligned_views(tmp: Path) -> None:
    p = tmp / "llama.safetensors"
    stnp.save_file(llama_tensors(), str(p))
    got = load_file(p, tp_plan=LLAMA_TP_PLAN, tp_rank=1, tp_size=3)
    assert len({id(_root(a)) for a in got.values() if a.nbytes}) == 1
    for k, a in got.items():
        assert a.flags.c_contiguous and a.flags.aligned, k
        assert a.ctypes.data % a.dtype.itemsize == 0, k


def test_general_dims_and_small_chunks(tmp: Path) -> None:
    rng = np.random.default_rng(1)
    t = {
        "cube.d0": rng.standard_normal((5, 3, 7)).astype(np.float32),
        "cube.d1": rng.standard_normal((5, 7, 3)).astype(np.float64),
        "cube.d2": rng.integers(0, 99, (2, 3, 10)).astype(np.int16),
        "cube.last": rng.integers(0, 99, (4, 6)).astype(np.int32),
        "row": rng.integers(0, 255, (1, 9)).astype(np.uint8),  # outer size 1: one range
        "tiny": np.arange(2, dtype=np.int64),  # fewer rows than ranks
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
        "keep": np.arange(6, dtype=np.float32),
    }
    p = tmp / "dims.safetensors"
    stnp.save_file(t, str(p))
    plan = TPPlan([("keep", None), ("cube.d0", 0), ("cube.d1", 1), ("cube.d2", 2),
                   ("cube.last", -1), ("row", 1), ("tiny", 0), ("empty", 0), ("*", None)])
    dims = {
        "cube.d0": 0, "cube.d1": 1, "cube.d2": 2, "cube.last": 1, "row": 1, "tiny": 0, "empty": 0,
    }
    ref = stnp.load_file(str(p))
    check_all_ranks(p, ref, plan, {k: dims.get(k) for k in ref})
    check_all_ranks(p, ref, plan, {k: dims.get(k) for k in ref}, chunk_bytes=5)


def test_bf16_keeps_its_bytes(tmp: Path) -> None:
    rng = np.random.default_rng(2)
    w = rng.integers(0, 1 << 16, (6, 10), dtype=np.uint16)  # BF16 bit patterns
    o = rng.integers(0, 1 << 16, (10, 6), dtype=np.uint16)
    n = rng.integers(0, 1 << 16, (10,), dtype=np.uint16)
    blob = build([
        ("layers.0.mlp.up_proj.weight", "BF16", [6, 10], w.tobytes()),
        ("layers.0.mlp.down_proj.weight", "BF16", [10, 6], o.tobytes()),
        ("layers.0.input_layernorm.weight", "BF16", [10], n.tobytes()),
    ])
    p = tmp / "bf16.safetensors"
    p.write_bytes(blob)
    ref_raw = reference(blob)
    full = {"layers.0.mlp.up_proj.weight": w, "layers.0.mlp.down_proj.weight": o,
            "layers.0.input_layernorm.weight": n}
    for k, a in full.items():
        assert ref_raw[k][2] == a.tobytes()
    for size in SIZES:
        for rank in range(size):
            got = load_file(p, tp_plan=LLAMA_TP_PLAN, tp_rank=rank, tp_size=size)
            for k, a in full.items():
                assert got[k].dtype.itemsize == 2, k  # V2 without ml_dtypes, bfloat16 with
                want = expect_shard(a, llama_dim(k), rank, size)
                assert got[k].shape == want.shape, k
                assert got[k].tobytes() == want.tobytes(), (k, size, rank)


def test_sharded_index(tmp: Path) -> None:
    t = llama_tensors(3)
    names = sorted(t)
    d = tmp / "ckpt"
    d.mkdir()
    wm = {}
    for i, chunk in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        stnp.save_file({k: t[k] for k in chunk}, str(d / shard))
        wm.update({k: shard for k in chunk})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    dims = {k: llama_dim(k) for k in t}
    check_all_ranks(d, t, LLAMA_TP_PLAN, dims)
    check_all_ranks(d / "model.safetensors.index.json", t, dict(LLAMA_TP_PLAN.rules), dims)


def test_size_one_is_the_whole_checkpoint(tmp: Path) -> None:
    p = tmp / "llama.safetensors"
    stnp.save_file(llama_tensors(4), str(p))
    whole = load_file(p)
    kws: List[Dict[str, Any]] = [
        {"tp_plan": LLAMA_TP_PLAN}, {"tp_size": 1}, {"tp_rank": 0, "tp_size": 1, "tp_plan": {}},
    ]
    for kw in kws:
        got = load_file(p, **kw)
        assert got.keys() == whole.keys()
        for k in whole:
            assert got[k].shape == whole[k].shape and got[k].tobytes() == whole[k].tobytes()


# ---------------------------------------------------------------------------
# Reads only what it needs
# ---------------------------------------------------------------------------


class CountingBatch(phxfs.Batch):
    """A Batch that records every batch it makes and every request it runs."""

    made: List["CountingBatch"] = []

    def __init__(self, depth: int = 1024) -> None:
        super().__init__(depth)
        self.requests: List[Tuple[Any, ...]] = []
        CountingBatch.made.append(self)

    def run(self, requests: Any, timeout: Optional[float] = None) -> List[phxfs.Completion]:
        self.requests += list(requests)
        return super().run(requests, timeout)


def header_bytes(p: Path) -> int:
    with open(p, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def expected_ranges(
    p: Path, dims: Dict[str, Optional[int]], rank: int, size: int
) -> List[Tuple[int, int]]:
    """The file byte ranges of the rank's shards, merged, computed from the header."""
    start = header_bytes(p)
    hdr = json.loads(p.read_bytes()[8:start])
    hdr.pop("__metadata__", None)
    item = {"F16": 2, "F32": 4, "F64": 8, "I64": 8}
    spans: List[Tuple[int, int]] = []
    for k, e in hdr.items():
        b0, b1 = e["data_offsets"]
        shape = e["shape"]
        d = dims.get(k)
        if d is None:
            spans.append((start + b0, start + b1))
            continue
        elem = item[e["dtype"]]
        n = shape[d]
        step = (n + size - 1) // size
        lo, hi = min(rank * step, n), min(rank * step + step, n)
        inner = elem * int(np.prod(shape[d + 1:]))
        for o in range(int(np.prod(shape[:d]))):
            row = start + b0 + o * n * inner
            spans.append((row + lo * inner, row + hi * inner))
    merged: List[Tuple[int, int]] = []
    for b, e in sorted(s for s in spans if s[1] > s[0]):
        if merged and merged[-1][1] == b:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((b, e))
    return merged


def test_reads_exactly_the_ranks_share(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp / "llama.safetensors"
    stnp.save_file(llama_tensors(5), str(p))
    dims = {k: llama_dim(k) for k in stnp.load_file(str(p))}
    monkeypatch.setattr(pst, "Batch", CountingBatch)
    hb = header_bytes(p)
    for size in SIZES:
        for rank in range(size):
            CountingBatch.made = []
            phxfs.reset_stats(0)
            got = load_file(p, tp_plan=LLAMA_TP_PLAN, tp_rank=rank, tp_size=size)
            share = sum(a.nbytes for a in got.values())
            read = sum(x.read_bytes for x in phxfs.stats(0).paths.values()) - hb
            assert read == share, (size, rank)
            # every read in one batch; the requests are exactly the rank's ranges
            assert len(CountingBatch.made) == 1
            reqs = CountingBatch.made[0].requests
            assert sum(r[4] for r in reqs) == share
            ranges = [(r[3], r[3] + r[4]) for r in reqs]
            assert ranges == expected_ranges(p, dims, rank, size), (size, rank)
            # a dim-1 split (o_proj, down_proj: H rows each per layer) is one request per row
            if size > 1:
                assert len(reqs) >= 2 * 2 * H


def test_stats_count_only_the_share(tmp: Path) -> None:
    w = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    p = tmp / "two.safetensors"
    stnp.save_file({"a.down_proj.weight": w, "a.up_proj.weight": w.T.copy()}, str(p))
    hb = header_bytes(p)
    phxfs.reset_stats(0)
    got = load_file(p, tp_plan=LLAMA_TP_PLAN, tp_rank=2, tp_size=4)
    read = sum(x.read_bytes for x in phxfs.stats(0).paths.values()) - hb
    assert got["a.down_proj.weight"].shape == (64, 12) and got["a.up_proj.weight"].shape == (12, 64)
    assert read == 2 * 64 * 12 * 4 == w.nbytes // 2


# ---------------------------------------------------------------------------
# Plans and arguments
# ---------------------------------------------------------------------------


def test_plan_rules() -> None:
    plan = TPPlan([("*.norm.weight", None), ("*.weight", 0), ("*.w2.*", 1)])
    assert plan.split_dim("x.norm.weight") is None  # first match wins
    assert plan.split_dim("x.w2.weight") == 0
    assert plan.split_dim("x.w2.bias") == 1
    assert plan.split_dim("x.bias") is None  # unmatched: replicated
    assert plan.unmatched(["x.norm.weight", "a.weight"]) == ["*.w2.*"]
    assert TPPlan({"a": 0, "b": 1}) == TPPlan([("a", 0), ("b", 1)])
    assert "a" in repr(TPPlan({"a": 0}))
    for name, d in [
        ("model.layers.3.self_attn.k_proj.weight", 0),
        ("model.layers.3.self_attn.o_proj.weight", 1),
        ("model.layers.3.self_attn.o_proj.bias", None),
        ("model.layers.3.mlp.down_proj.weight", 1),
        ("model.layers.3.mlp.gate_proj.weight", 0),
        ("model.embed_tokens.weight", 0),
        ("lm_head.weight", 0),
        ("model.norm.weight", None),
        ("model.layers.3.input_layernorm.weight", None),
    ]:
        assert LLAMA_TP_PLAN.split_dim(name) == d, name
    with pytest.raises(TypeError, match="int or None"):
        TPPlan({"a": 1.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="int or None"):
        TPPlan({"a": True})
    with pytest.raises(TypeError, match="pattern"):
        TPPlan({"": 0})
    with pytest.raises(TypeError, match="pair"):
        TPPlan(["a"])  # type: ignore[list-item]


def test_bad_plans_and_ranks(tmp: Path) -> None:
    p = tmp / "m.safetensors"
    stnp.save_file({"m.norm": np.ones(4, np.float32), "m.w": np.ones((4, 6), np.float32)}, str(p))
    for plan, dim in (({"m.norm": 1}, 1), ({"m.w": 2}, 2), ({"m.w": -3}, -3)):
        phxfs.reset_stats(0)
        name = next(iter(plan))
        with pytest.raises(ValueError, match=rf"tensor '{name}': split dim {dim} is out of range"):
            load_file(p, tp_plan=plan, tp_rank=0, tp_size=2)
        # refused before any tensor data is read
        assert sum(x.read_bytes for x in phxfs.stats(0).paths.values()) == header_bytes(p)
    with pytest.raises(ValueError, match=r"tp_rank must be in \[0, tp_size\) = \[0, 2\), not 2"):
        load_file(p, tp_plan={}, tp_rank=2, tp_size=2)
    with pytest.raises(ValueError, match="tp_rank must be"):
        load_file(p, tp_plan={}, tp_rank=-1, tp_size=2)
    with pytest.raises(ValueError, match="tp_size must be at least 1"):
        load_file(p, tp_plan={}, tp_rank=0, tp_size=0)
    with pytest.raises(ValueError, match="needs tp_plan"):
        load_file(p, tp_rank=0, tp_size=2)
    with pytest.raises(TypeError, match="tp_size must be an int"):
        load_file(p, tp_plan={}, tp_size=2.0)  # type: ignore[arg-type]
    f4 = build([("packed", "F4", [4, 2], bytes(4))])
    (tmp / "f4.safetensors").write_bytes(f4)
    with pytest.raises(ValueError, match="'packed': packed sub-byte"):
        load_file(tmp / "f4.safetensors", tp_plan={"packed": 0}, tp_rank=0, tp_size=2)
    # replicated, a packed tensor loads as before
    t = load_file(tmp / "f4.safetensors", tp_plan={}, tp_rank=1, tp_size=2)
    assert t["packed"].tobytes() == bytes(4)


def _fake_torch(monkeypatch: pytest.MonkeyPatch, rank: int, size: int, ready: bool = True) -> Any:
    """A stand-in torch.distributed (rank and size of one group), for the lazy import."""
    group = object()
    dist = types.ModuleType("torch.distributed")
    dist.is_available = lambda: True  # type: ignore[attr-defined]
    dist.is_initialized = lambda: ready  # type: ignore[attr-defined]
    dist.get_rank = lambda group=None: rank  # type: ignore[attr-defined]
    dist.get_world_size = lambda group=None: size  # type: ignore[attr-defined]
    torch = types.ModuleType("torch")
    torch.distributed = dist  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    return group


def test_process_group(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.arange(24, dtype=np.float32).reshape(4, 6)
    p = tmp / "pg.safetensors"
    stnp.save_file({"x.o_proj.weight": w}, str(p))
    if "torch" in sys.modules:
        pytest.skip("a real torch is loaded")
    group = _fake_torch(monkeypatch, rank=1, size=3)
    got = load_file(p, tp_plan=LLAMA_TP_PLAN, process_group=group)
    assert got["x.o_proj.weight"].tobytes() == w[:, 2:4].tobytes()
    got = load_file(p, tp_plan=LLAMA_TP_PLAN, process_group=group, tp_rank=1, tp_size=3)
    assert got["x.o_proj.weight"].shape == (4, 2)
    with pytest.raises(ValueError, match="tp_rank=0 disagrees with process_group's 1"):
        load_file(p, tp_plan=LLAMA_TP_PLAN, process_group=group, tp_rank=0)
    _fake_torch(monkeypatch, rank=-1, size=3)
    with pytest.raises(ValueError, match="not a member"):
        load_file(p, tp_plan=LLAMA_TP_PLAN, process_group=group)
    _fake_torch(monkeypatch, rank=0, size=3, ready=False)
    with pytest.raises(RuntimeError, match="not initialized"):
        load_file(p, tp_plan=LLAMA_TP_PLAN, process_group=group)
