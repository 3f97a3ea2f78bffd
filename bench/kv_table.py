"""Turns bench/kvcache.sh's lines into one Markdown table.

Input: "limit GBPS" (the pinned host-to-device copy limit, from
gpu_baseline), then "PATH {json}" lines of phxfs-bench -I kvcache --json.
Each row gives GB/s, blocks/s and p50/p99 time per request; restores give
their share of the copy limit, and every row its phxfs row's GB/s over its
own (the same requests: same shape, unit, blocks per request, pattern and
seed), so a cuFile row shows how many times faster phxfs was.
"""
import sys
from typing import Any, Dict, List, Optional, Tuple

from batch_table import gb_per_s, records

Key = Tuple[str, str, int, str]


def key(r: Dict[str, Any]) -> Key:
    kv = r["kvcache"]
    return (kv["op"], kv["unit"], kv["blocks_per_request"], kv["pattern"])


def main() -> None:
    limit: Optional[float] = None
    rows: List[Tuple[str, Dict[str, Any]]] = []
    for label, rest in ((ln.split(" ", 1) + [""])[:2] for ln in sys.stdin if ln.strip()):
        if label == "limit":
            limit = float(rest)
        else:
            rows.extend(records([f"{label} {rest}"]))
    phxfs: Dict[Key, float] = {
        key(r): gb_per_s(r) for label, r in rows if label == "phxfs" and not r.get("error")
    }
    if limit:
        print(f"Pinned host-to-device copy limit: {limit:.1f} GB/s\n")
    print("| op | unit | blocks/request | pattern | path | GB/s | blocks/s | p50 ms | p99 ms "
          "| of copy limit | phxfs / this |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in rows:
        kv = r.get("kvcache", {})
        size = kv.get("layer_bytes" if kv.get("unit") == "layer" else "block_bytes")
        unit = f"{kv.get('unit', '?')}" + (f" ({size // 1024} KiB)" if size else "")
        head = (f"| {kv.get('op', '?')} | {unit} | {kv.get('blocks_per_request', '?')} "
                f"| {kv.get('pattern', '?')} | {label}")
        if r.get("error"):
            print(f"{head} | failed: {r['error']} | | | | | |")
            continue
        gbs = gb_per_s(r)
        lat = r["latency_us"]
        share = f"{gbs / limit:.2f}" if limit and kv["op"] == "restore" else ""
        base = phxfs.get(key(r))
        ratio = f"{base / gbs:.1f}x" if base and gbs > 0 and label != "phxfs" else ""
        print(f"{head} | {gbs:.2f} | {kv['blocks_per_s']:.0f} | {lat['p50'] / 1e3:.2f} "
              f"| {lat['p99'] / 1e3:.2f} | {share} | {ratio} |")


if __name__ == "__main__":
    main()
