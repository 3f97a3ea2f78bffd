"""Turns bench/batch.sh's lines ("MODE {json}") into one Markdown table."""
import json
import sys


def main() -> None:
    print("| size | mode | GB/s | kIOPS | p50 us | p99 us |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for line in sys.stdin:
        mode, text = line.split(" ", 1)
        r = json.loads(text)
        size = f"{r.get('io_size', 0) // 1024} KiB"
        if r.get("error"):
            print(f"| {size} | {mode} | failed: {r['error']} | | | |")
            continue
        gbs = r["throughput_gib_s"] * (1 << 30) / 1e9
        kiops = r["ops"] / r["total_time_s"] / 1e3
        lat = r["latency_us"]
        print(f"| {size} | {mode} | {gbs:.2f} | {kiops:.0f} | {lat['p50']:.1f} | {lat['p99']:.1f} |")


if __name__ == "__main__":
    main()
