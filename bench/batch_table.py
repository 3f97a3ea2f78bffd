"""Turns bench/batch.sh's lines ("MODE {json}") into one Markdown table.

records() and gb_per_s() are shared with kv_table.py (bench/kvcache.sh).
"""
import json
import sys
from typing import Any, Dict, Iterable, Iterator, Tuple


def records(lines: Iterable[str]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(label, phxfs-bench JSON record) for each "LABEL {json}" line."""
    for line in lines:
        if not line.strip():
            continue
        label, text = line.split(" ", 1)
        yield label, json.loads(text)


def gb_per_s(r: Dict[str, Any]) -> float:
    """Throughput in GB/s (10^9 bytes), as phxfs-bench measured it."""
    return float(r["throughput_gib_s"]) * (1 << 30) / 1e9


def main() -> None:
    print("| size | mode | GB/s | kIOPS | p50 us | p99 us |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for mode, r in records(sys.stdin):
        size = f"{r.get('io_size', 0) // 1024} KiB"
        if r.get("error"):
            print(f"| {size} | {mode} | failed: {r['error']} | | | |")
            continue
        kiops = r["ops"] / r["total_time_s"] / 1e3
        lat = r["latency_us"]
        print(f"| {size} | {mode} | {gb_per_s(r):.2f} | {kiops:.0f} | {lat['p50']:.1f} | {lat['p99']:.1f} |")


if __name__ == "__main__":
    main()
