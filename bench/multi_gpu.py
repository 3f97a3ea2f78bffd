#!/usr/bin/env python3
"""Issue #14's benchmark: several GPUs of one host, each fed from the page
cache at once, and a checkpoint loaded tensor-parallel over them.

For each GPU count N (``--gpus``, default 1 and every GPU there is), with
the Llama-3-8B-shaped checkpoint of ``bench/safetensors_load.py``:

1. **Raw reads**: the checkpoint's shard files read into N GPUs at once,
   shard i into GPU i mod N (``phxfs.File(path, device=g).read_into`` a
   ``torch.uint8`` buffer of that GPU, one thread a GPU, the GIL released
   during I/O), beside the pinned host-to-device copy limits of the same run:
   each GPU's alone, and their sum. Target (issue 14): the aggregate at
   least 0.85 of that sum.
2. **Tensor-parallel load**: N processes (``torch.multiprocessing``, NCCL),
   each ``phxfs.safetensors.load_file(index, device=f"cuda:{rank}",
   tp_plan=LLAMA_TP_PLAN, process_group=WORLD)`` (every rank reads only its
   shard of each split tensor, and the whole of the others); beside
   fastsafetensors' own distributed loading (``SafeTensorsFileLoader(pg,
   nogds=True)``, rank r reading files r, r + N, ..., then ``get_sharded``
   along the same plan's dims, broadcasting the unsplit tensors). Time: the
   slowest rank's, from a barrier to its tensors in memory. Target: phxfs at
   least 1.5x fastsafetensors.

    python3 bench/multi_gpu.py --dir /var/tmp/phx-llama3-8b [--gpus 1,2]
        [--reps 2] [--json F]

A smoke run without GPUs (host devices, gloo, CPU tensors, no
fastsafetensors): ``--device cpu --scale 0.002 --gpus 1,2``.

Written for the two-GPU machine, which was not lent while it was written:
it has run only in its smoke form (the CPU machine, torch 2.15 from PyPI,
1 and 2 ranks over gloo), never on GPUs nor with fastsafetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safetensors_load as sl  # noqa: E402  (the checkpoint and the copy limit)

GB = 1e9


def together(n: int, work: Callable[[int], None]) -> float:
    """Runs work(0) .. work(n - 1) on n threads started together; returns
    the seconds until the last is done, or raises the first one's error."""
    start = threading.Barrier(n + 1)
    errors: List[Optional[BaseException]] = [None] * n

    def run(g: int) -> None:
        try:
            start.wait()
            work(g)
        except BaseException as e:  # raised after the join
            errors[g] = e

    threads = [threading.Thread(target=run, args=(g,)) for g in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    for e in errors:
        if e is not None:
            raise e
    return secs


def read_into_gpus(files: List[Path], n: int, cuda: bool) -> float:
    """Reads files[i] into device i mod n, all at once; GB/s of all."""
    import phxfs
    import torch

    shares: List[List[Path]] = [files[g::n] for g in range(n)]
    bufs: List[Any] = []
    for g, share in enumerate(shares):
        size = max((f.stat().st_size for f in share), default=0)
        dev = f"cuda:{g}" if cuda else "cpu"
        bufs.append(torch.empty(size, dtype=torch.uint8, device=dev))

    def work(g: int) -> None:
        for f in shares[g]:
            with phxfs.File(f, device=g) as fh:
                fh.read_into(bufs[g], size=f.stat().st_size)

    secs = together(n, work)
    return sum(f.stat().st_size for f in files) / secs / GB


def copy_limits_together(n: int, nbytes: int) -> float:
    """Pinned host-to-device copies into n GPUs at once, GB/s of all."""
    import torch

    size = min(nbytes, 1 << 30)
    pairs = [(torch.empty(size, dtype=torch.uint8, pin_memory=True),
              torch.empty(size, dtype=torch.uint8, device=f"cuda:{g}")) for g in range(n)]

    def work(g: int) -> None:
        src, dst = pairs[g]
        with torch.cuda.device(g):
            for _ in range(4):
                dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize(g)

    secs = together(n, work)
    return 4 * size * n / secs / GB


# --------------------------------------------------------------------------
# Tensor-parallel loads, one process a rank
# --------------------------------------------------------------------------


def load_phxfs_tp(index: Path, files: List[Path], device: str) -> Dict[str, Any]:
    import torch.distributed as dist
    from phxfs.safetensors import LLAMA_TP_PLAN, load_file

    return load_file(str(index), device=device, framework="pt", tp_plan=LLAMA_TP_PLAN,
                     process_group=dist.group.WORLD)


def load_fastsafetensors_tp(index: Path, files: List[Path], device: str) -> Dict[str, Any]:
    import torch.distributed as dist
    from fastsafetensors import SafeTensorsFileLoader
    from phxfs.safetensors import LLAMA_TP_PLAN

    world = dist.get_world_size()
    # Buffered reads, as phxfs's from the page cache (its default here is
    # O_DIRECT, which a cached checkpoint would read at the disk's speed).
    os.environ["FASTSAFETENSORS_ODIRECT"] = "0"
    loader = SafeTensorsFileLoader(dist.group.WORLD, device=device, nogds=True)
    try:
        loader.add_filenames({r: [str(f) for f in files[r::world]] for r in range(world)})
        fb = loader.copy_files_to_device()
        out = {}
        for key in loader.get_keys():  # the same order on every rank: collectives
            dim = LLAMA_TP_PLAN.split_dim(key)
            out[key] = fb.get_sharded(key, -1 if dim is None else dim).clone()
        fb.close()
        return out
    finally:
        loader.close()


TP_LOADERS: Dict[str, Callable[[Path, List[Path], str], Dict[str, Any]]] = {
    "phxfs": load_phxfs_tp,
    "fastsafetensors": load_fastsafetensors_tp,
}


def tp_rank(rank: int, world: int, port: int, index: str, loader: str, reps: int,
            cuda: bool, out: str) -> None:
    """One rank: reps timed loads; rank 0 writes {seconds, bytes} to out."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = f"cuda:{rank}" if cuda else "cpu"
    files = sl.shard_files(Path(index))
    best, nbytes, error = float("inf"), 0, ""
    try:
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            tensors = TP_LOADERS[loader](Path(index), files, device)
            if cuda:
                torch.cuda.synchronize()
            secs = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
            mine = torch.tensor([sum(t.numel() * t.element_size() for t in tensors.values())],
                                dtype=torch.float64, device=device)
            del tensors
            dist.all_reduce(secs, op=dist.ReduceOp.MAX)
            dist.all_reduce(mine)
            best, nbytes = min(best, float(secs.item())), int(mine.item())
            if cuda:
                torch.cuda.empty_cache()
    except Exception as e:  # the other ranks may hang in a collective: the parent's timeout ends them
        error = f"{type(e).__name__}: {e}"
    if rank == 0 or error:
        with open(f"{out}.{rank}", "w") as fh:
            json.dump({"seconds": best, "bytes": nbytes, "error": error}, fh)
    if not error:
        dist.destroy_process_group()


_runs = 0


def run_tp(index: Path, n: int, loader: str, reps: int, cuda: bool,
           timeout: float) -> Dict[str, Any]:
    """A tensor-parallel load on n ranks; {gbps, seconds, bytes} or {error}."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result")
        global _runs
        _runs += 1
        port = 29500 + (os.getpid() * 7 + _runs) % 2000  # a fresh port for each case
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=tp_rank, args=(r, n, port, str(index), loader, reps, cuda, out))
                 for r in range(n)]
        for p in procs:
            p.start()
        until = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, until - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
        results = []
        for r in range(n):
            if os.path.exists(f"{out}.{r}"):
                with open(f"{out}.{r}") as fh:
                    results.append(json.load(fh))
        errors = [x["error"] for x in results if x["error"]]
        if errors or hung or not results:
            return {"error": errors[0] if errors else
                    f"{len(hung)} ranks still running after {timeout:.0f} s" if hung else
                    "no rank reported"}
        r0 = results[0]
        return {"seconds": r0["seconds"], "bytes": r0["bytes"],
                "gbps": r0["bytes"] / r0["seconds"] / GB}


def num(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/phx-llama3-8b"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpus", default="", help="GPU counts to run, e.g. 1,2 (default: 1 and all)")
    ap.add_argument("--loaders", default="phxfs,fastsafetensors")
    ap.add_argument("--reps", type=int, default=2, help="runs of each case (best counts)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a TP case may take")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import torch

    cuda = a.device == "cuda"
    avail = torch.cuda.device_count() if cuda else 2
    counts = [int(x) for x in a.gpus.split(",")] if a.gpus else sorted({1, avail})
    if not cuda:
        os.environ["PHXFS_HOST_DEVICES"] = str(max(counts))  # devices 0..N-1, before phxfs loads
    if any(c < 1 or c > avail for c in counts):
        print(f"--gpus {a.gpus}: this machine has {avail}", file=sys.stderr)
        return 2
    index = sl.make_checkpoint(a.dir, a.scale, a.shards, "cuda:0" if cuda else "cpu")
    files = sl.shard_files(index)
    nbytes = sl.data_bytes(files)
    report: Dict[str, Any] = {"machine": sl.machine(), "bytes": nbytes, "runs": {}}
    print(report["machine"], f"\ncheckpoint: {len(files)} shards, {nbytes / GB:.2f} GB", flush=True)
    for f in files:  # into the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    if cuda:
        alone = []
        for g in range(max(counts)):
            with torch.cuda.device(g):
                alone.append(sl.copy_limit(nbytes, device=f"cuda:{g}"))
        report["copy_limit_gbps"] = alone
        print("copy limit alone, per GPU: " + ", ".join(f"{x:.1f}" for x in alone) + " GB/s")

    rows = ["| GPUs | raw reads GB/s | sum of copy limits | copies at once | reads / sum | "
            + " | ".join(f"TP {x} GB/s" for x in a.loaders.split(",")) + " |",
            "| ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(a.loaders.split(","))]
    for n in counts:
        run: Dict[str, Any] = {}
        run["raw_gbps"] = max(read_into_gpus(files, n, cuda) for _ in range(a.reps))
        if cuda:
            run["copy_sum_gbps"] = sum(report["copy_limit_gbps"][:n])
            run["copies_together_gbps"] = copy_limits_together(n, nbytes)
        for loader in a.loaders.split(","):
            if loader == "fastsafetensors" and not cuda:
                run[f"tp_{loader}"] = {"error": "needs GPUs"}
                continue
            run[f"tp_{loader}"] = run_tp(index, n, loader, a.reps, cuda, a.timeout)
            print(f"{n} GPUs, TP {loader}: {run[f'tp_{loader}']}", flush=True)
        report["runs"][str(n)] = run

        tp = [run[f"tp_{x}"].get("gbps") for x in a.loaders.split(",")]
        ratio = run["raw_gbps"] / run["copy_sum_gbps"] if cuda else None
        rows.append(f"| {n} | {num(run['raw_gbps'])} | {num(run.get('copy_sum_gbps'))} | "
                    f"{num(run.get('copies_together_gbps'))} | {num(ratio)} | "
                    + " | ".join(num(x) for x in tp) + " |")
    print("\n".join(rows))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
