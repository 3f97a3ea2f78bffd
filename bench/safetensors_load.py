#!/usr/bin/env python3
"""Issue #13's model-loading benchmark: a Llama-3-8B-shaped checkpoint
(bf16, 4 shards and an index, the real tensor names and shapes, about 16 GB)
loaded to ``cuda:0`` by every loader that runs on this machine, same run,
same files, cached and (where the page cache can be dropped) cold.

Loaders (each skipped with its error where it cannot run here):

- ``phxfs``: ``phxfs.safetensors.load_file(index, device="cuda:0")``
- ``safetensors``: ``safetensors.torch.load_file(shard, device="cuda:0")``
- ``fastsafetensors``: ``SafeTensorsFileLoader(nogds=True)``; buffered
  reads when cached (``FASTSAFETENSORS_ODIRECT=0``), its O_DIRECT default
  when cold; and ``fastsafetensors-gds`` (``nogds=False``) if it runs
- ``kvikio``: each shard's bytes read into one GPU buffer
  (``CuFile.pread``, all shards in flight), no tensors made
- ``torch.cuda.gds``: each shard into one GPU storage (``GdsFile``)

and two references measured in the same run: the pinned host-to-device copy
limit (``copy-limit``) and a raw O_DIRECT read of the same files into host
memory with 16 threads (``raw-odirect``).

For each: seconds, GB/s of tensor bytes, time to the first tensor (the lazy
``safe_open(...).get_tensor`` of the first tensor where the loader has one;
otherwise the whole load, since the loader hands out nothing before), and the
process's peak resident memory above what it held before the load (VmHWM,
reset through /proc/self/clear_refs). phxfs's result is compared with
safetensors' tensor by tensor (names, dtypes, shapes, bytes).

    python3 bench/safetensors_load.py --dir /var/tmp/llama3 [--scale 1.0]
        [--loaders phxfs,safetensors,...] [--reps 2] [--no-cold] [--json F]

``--scale`` shrinks every dimension's element count (for a smoke run on a
machine without a GPU: ``--device cpu --scale 0.002``, numpy-free torch CPU
loads of phxfs and safetensors only).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import mmap
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

GB = 1e9

# --------------------------------------------------------------------------
# The checkpoint: Llama-3-8B's tensors (config: vocab 128256, hidden 4096,
# intermediate 14336, 32 layers, 32 heads, 8 KV heads, head dim 128).
# --------------------------------------------------------------------------


def llama3_8b_shapes(scale: float) -> List[Tuple[str, Tuple[int, ...]]]:
    """Names and shapes in the order of the real checkpoint; ``scale`` < 1
    shrinks the large dimensions (never below 8) for smoke runs."""

    def s(n: int) -> int:
        return max(8, int(n * scale) // 8 * 8) if scale != 1.0 else n

    vocab, hidden, inter, layers = s(128256), s(4096), s(14336), 32
    kv = s(1024)
    out: List[Tuple[str, Tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
        ]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def make_checkpoint(d: Path, scale: float, shards: int, gen_device: str) -> Path:
    """Writes ``model-0000i-of-0000n.safetensors`` and the index (random
    bf16, made on gen_device) unless they exist; returns the index path."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    index = d / "model.safetensors.index.json"
    if index.exists():
        return index
    tensors = llama3_8b_shapes(scale)
    total = sum(numel(s) * 2 for _, s in tensors)
    per_shard = total / shards
    groups: List[List[Tuple[str, Tuple[int, ...]]]] = [[]]
    acc = 0
    for name, shape in tensors:  # consecutive tensors, about total/shards each
        if acc >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, shape))
        acc += numel(shape) * 2
    weight_map: Dict[str, str] = {}
    g = torch.Generator(device=gen_device).manual_seed(13)
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {
            name: torch.randn(shape, generator=g, device=gen_device, dtype=torch.bfloat16).cpu()
            for name, shape in group
        }
        save_file(part, str(d / fname), metadata={"format": "pt"})
        del part
        weight_map.update({name: fname for name, _ in group})
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def shard_files(index: Path) -> List[Path]:
    wm = json.loads(index.read_text())["weight_map"]
    return [index.parent / f for f in sorted(set(wm.values()))]


def data_bytes(files: List[Path]) -> int:
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            hlen = int.from_bytes(fh.read(8), "little")
        n += f.stat().st_size - 8 - hlen
    return n


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def reset_peak_rss() -> int:
    """Resets VmHWM (where the kernel allows) and returns VmRSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------
# Loaders: each returns (result, seconds to the first tensor or None).
# The result is kept alive until timing ends (a dict of tensors or buffers).
# --------------------------------------------------------------------------


def load_phxfs(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    from phxfs.safetensors import load_file

    return load_file(str(index), device=device)


def sweep_phxfs(index: Path, files: List[Path], device: str, nbytes: int, reps: int,
                pieces: List[int], chunks: List[int]) -> List[Dict[str, Any]]:
    """Cached phxfs loads over request sizes (load_file's chunk_bytes) and
    engine chunk sizes (phxfs.set_config); the defaults are restored after."""
    import phxfs
    from phxfs.safetensors import load_file

    before = phxfs.get_config()
    out = []
    try:
        for chunk in chunks:
            phxfs.set_config(chunk_bytes=chunk, staging_bytes=max(before.staging_bytes,
                                                                  2 * chunk * before.threads))
            for piece in pieces:
                best = float("inf")
                for _ in range(reps):
                    t0 = time.perf_counter()
                    res = load_file(str(index), device=device, chunk_bytes=piece)
                    sync_device(device)
                    best = min(best, time.perf_counter() - t0)
                    del res
                    release(device)
                out.append({"request_bytes": piece, "engine_chunk_bytes": chunk,
                            "seconds": best, "gbps": nbytes / best / GB})
                print(f"sweep phxfs request {piece >> 20} MiB, chunk {chunk >> 20} MiB: "
                      f"{nbytes / best / GB:.2f} GB/s", flush=True)
    finally:
        phxfs.set_config(chunk_bytes=before.chunk_bytes, staging_bytes=before.staging_bytes)
    return out


def first_phxfs(index: Path, files: List[Path], device: str) -> None:
    from phxfs.safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device=device) as f:
        f.get_tensor(next(iter(f.keys())))


def load_safetensors(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    from safetensors.torch import load_file

    out: Dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f), device=device))
    return out


def first_safetensors(index: Path, files: List[Path], device: str) -> None:
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device=device) as f:
        f.get_tensor(next(iter(f.keys())))


def _fastsafetensors(files: List[Path], device: str, cold: bool, nogds: bool) -> Any:
    os.environ["FASTSAFETENSORS_ODIRECT"] = "1" if cold or not nogds else "0"
    from fastsafetensors import SafeTensorsFileLoader

    loader = SafeTensorsFileLoader(None, device=device, nogds=nogds)
    try:
        loader.add_filenames({0: [str(f) for f in files]})
        fb = loader.copy_files_to_device()
        out = {k: fb.get_tensor(k) for k in fb.key_to_rank_lidx.keys()}
        sync_device(device)
        return (out, fb)
    finally:
        loader.close()


def load_fastsafetensors(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    return _fastsafetensors(files, device, cold, nogds=True)


def load_fastsafetensors_gds(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    return _fastsafetensors(files, device, cold, nogds=False)


def load_kvikio(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    import kvikio

    bufs, futs, handles = [], [], []
    for f in files:
        b = torch.empty(f.stat().st_size, dtype=torch.uint8, device=device)
        h = kvikio.CuFile(str(f), "r")
        futs.append(h.pread(b))
        bufs.append(b)
        handles.append(h)
    for fu in futs:
        fu.get()
    for h in handles:
        h.close()
    return bufs


def load_torch_gds(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    from torch.cuda import gds

    out = []
    for f in files:
        st = torch.UntypedStorage(f.stat().st_size, device=device)
        gf = gds.GdsFile(str(f), os.O_RDONLY)
        gf.load_storage(st, 0)
        out.append(st)
    return out


def load_raw_odirect(index: Path, files: List[Path], device: str, cold: bool) -> Any:
    """The files' bytes into host memory with O_DIRECT, 16 threads, 16 MiB
    reads: what the disk gives (there is no GPU in it)."""
    block = 16 << 20
    jobs: List[Tuple[int, int]] = []
    fds = []
    for f in files:
        fd = os.open(str(f), os.O_RDONLY | os.O_DIRECT)
        fds.append(fd)
        size = f.stat().st_size
        jobs += [(fd, off) for off in range(0, size, block)]
    lock = threading.Lock()
    total = [0]

    def worker() -> None:
        buf = mmap.mmap(-1, block)
        n = 0
        while True:
            with lock:
                if not jobs:
                    break
                fd, off = jobs.pop()
            n += os.preadv(fd, [buf], off)
        with lock:
            total[0] += n
        buf.close()

    ts = [threading.Thread(target=worker) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for fd in fds:
        os.close(fd)
    return total[0]


LOADERS: Dict[str, Callable[..., Any]] = {
    "phxfs": load_phxfs,
    "safetensors": load_safetensors,
    "fastsafetensors": load_fastsafetensors,
    "fastsafetensors-gds": load_fastsafetensors_gds,
    "kvikio": load_kvikio,
    "torch-gds": load_torch_gds,
    "raw-odirect": load_raw_odirect,
}
FIRST: Dict[str, Callable[..., None]] = {"phxfs": first_phxfs, "safetensors": first_safetensors}


def copy_limit(nbytes: int, reps: int = 5, device: str = "cuda") -> float:
    """Pinned host-to-device copy rate into device (the current one: run it
    within ``torch.cuda.device``), GB/s (best of reps, 1 GiB copies)."""
    n = min(nbytes, 1 << 30)
    src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(n, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(4):
            dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, 4 * n / (time.perf_counter() - t0) / GB)
    del src, dst
    release("cuda")
    return best


def time_one(name: str, index: Path, files: List[Path], device: str, cold: bool) -> Dict[str, Any]:
    fn = LOADERS[name]
    if cold and not drop_caches():
        return {"error": "cannot drop the page cache here"}
    base = reset_peak_rss()
    t0 = time.perf_counter()
    try:
        res = fn(index, files, device, cold)
        sync_device(device)
    except Exception as e:  # a loader that cannot run here: its error, not a crash
        release(device)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
    secs = time.perf_counter() - t0
    peak = max(0, peak_rss() - base)
    del res
    release(device)
    return {"seconds": secs, "peak_rss_bytes": peak}


def time_first(name: str, index: Path, files: List[Path], device: str, cold: bool) -> Optional[float]:
    if name not in FIRST or (cold and not drop_caches()):
        return None
    t0 = time.perf_counter()
    FIRST[name](index, files, device)
    sync_device(device)
    secs = time.perf_counter() - t0
    release(device)
    return secs


def verify_phxfs(index: Path, files: List[Path], device: str) -> str:
    """phxfs's tensors against safetensors', byte for byte."""
    ours = load_phxfs(index, files, device, False)
    ref = load_safetensors(index, files, device, False)
    if ours.keys() != ref.keys():
        return f"FAIL: keys differ ({len(ours)} against {len(ref)})"
    for k, r in ref.items():
        o = ours[k]
        if o.dtype != r.dtype or o.shape != r.shape or o.device != r.device:
            return f"FAIL: {k}: {o.dtype}{tuple(o.shape)}@{o.device} against {r.dtype}{tuple(r.shape)}@{r.device}"
        if not torch.equal(o.view(torch.uint8), r.view(torch.uint8)):
            return f"FAIL: {k}: bytes differ"
    n = len(ref)
    del ours, ref
    release(device)
    return f"ok: {n} tensors identical to safetensors.torch.load_file's"


def machine() -> str:
    gpu = ""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name}, {p.total_memory >> 20} MiB"
    try:
        drv = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        drv = "?"
    return (f"{gpu} (driver {drv}); {os.cpu_count()} CPUs; kernel {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/phx-llama3-8b"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--loaders", default=",".join(LOADERS))
    ap.add_argument("--cold-loaders", default="raw-odirect,phxfs,safetensors,fastsafetensors,kvikio")
    ap.add_argument("--reps", type=int, default=2, help="cached runs per loader (best counts)")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sweep", default="", help="phxfs request sizes in MiB to sweep (cached), "
                    "e.g. 64,256,1024; with --sweep-chunks engine chunk sizes in MiB")
    ap.add_argument("--sweep-chunks", default="")
    a = ap.parse_args()

    cuda = a.device.startswith("cuda")
    t0 = time.perf_counter()
    index = make_checkpoint(a.dir, a.scale, a.shards, a.device if cuda else "cpu")
    files = shard_files(index)
    nbytes = data_bytes(files)
    print(f"checkpoint: {len(files)} shards, {nbytes / GB:.2f} GB of tensors "
          f"(ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    report: Dict[str, Any] = {"machine": machine(), "bytes": nbytes, "files": [str(f) for f in files]}
    print(report["machine"], flush=True)
    if cuda:
        report["copy_limit_gbps"] = copy_limit(nbytes)
        print(f"copy limit (pinned H2D): {report['copy_limit_gbps']:.1f} GB/s", flush=True)
    try:
        import phxfs

        report["phxfs_config"] = dataclasses.asdict(phxfs.get_config())
    except Exception as e:  # noqa: BLE001
        report["phxfs_config"] = str(e)
    report["verify"] = verify_phxfs(index, files, a.device)
    print("verify:", report["verify"], flush=True)

    names = [n for n in a.loaders.split(",") if n]
    runs: Dict[str, Dict[str, Any]] = {}
    # Cached: read every file once so that all loaders find them in the page cache.
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    for name in names:
        best: Dict[str, Any] = {}
        for _ in range(a.reps):
            r = time_one(name, index, files, a.device, cold=False)
            if "error" in r:
                best = r
                break
            if not best or r["seconds"] < best["seconds"]:
                best = r
        if "seconds" in best:
            best["gbps"] = nbytes / best["seconds"] / GB
            best["first_s"] = time_first(name, index, files, a.device, cold=False)
        runs[f"cached/{name}"] = best
        print(f"cached {name}: {fmt(best)}", flush=True)
    if a.sweep and cuda:
        chunks = [int(c) << 20 for c in a.sweep_chunks.split(",") if c] or [0]
        if chunks == [0]:
            import phxfs

            chunks = [phxfs.get_config().chunk_bytes]
        report["sweep"] = sweep_phxfs(index, files, a.device, nbytes, a.reps,
                                      [int(p) << 20 for p in a.sweep.split(",")], chunks)
    if not a.no_cold:
        for name in [n for n in a.cold_loaders.split(",") if n in names]:
            r = time_one(name, index, files, a.device, cold=True)
            if "seconds" in r:
                r["gbps"] = nbytes / r["seconds"] / GB
                r["first_s"] = time_first(name, index, files, a.device, cold=True)
            runs[f"cold/{name}"] = r
            print(f"cold {name}: {fmt(r)}", flush=True)
    report["runs"] = runs
    print(table(report), flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0 if report["verify"].startswith("ok") else 1


def fmt(r: Dict[str, Any]) -> str:
    if "error" in r:
        return "did not run: " + r["error"]
    first = "" if r.get("first_s") is None else f", first tensor {r['first_s'] * 1e3:.0f} ms"
    return (f"{r['seconds']:.2f} s, {r['gbps']:.2f} GB/s{first}, "
            f"peak RSS +{r['peak_rss_bytes'] / 2**20:.0f} MiB")


def table(report: Dict[str, Any]) -> str:
    """The report as Markdown, with each ratio the issue sets a target for."""
    lim = report.get("copy_limit_gbps")
    runs = report["runs"]
    lines = ["| cache | loader | s | GB/s | first tensor (s) | peak RSS (MiB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key, r in runs.items():
        cache, name = key.split("/", 1)
        if "error" in r:
            lines.append(f"| {cache} | {name} | - | - | - | did not run: {r['error']} |")
            continue
        first = r["seconds"] if r.get("first_s") is None else r["first_s"]
        lines.append(f"| {cache} | {name} | {r['seconds']:.2f} | {r['gbps']:.2f} | {first:.3f} "
                     f"| {r['peak_rss_bytes'] / 2**20:.0f} |")
    ph = runs.get("cached/phxfs", {})
    if "gbps" in ph:
        others = [r["gbps"] for k, r in runs.items()
                  if k.startswith("cached/") and k != "cached/phxfs" and "gbps" in r
                  and k != "cached/raw-odirect"]
        if lim:
            lines.append(f"\ncached phxfs / copy limit: {ph['gbps'] / lim:.2f} (target >= 0.85)")
        if others:
            lines.append(f"cached phxfs / fastest other loader: {ph['gbps'] / max(others):.2f} (target >= 1.5)")
    cp, raw = runs.get("cold/phxfs", {}), runs.get("cold/raw-odirect", {})
    if "gbps" in cp and "gbps" in raw:
        lines.append(f"cold phxfs / raw O_DIRECT: {cp['gbps'] / raw['gbps']:.2f} (target >= 0.95)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
