#!/usr/bin/env python3
"""Host side of the VM suite: reads what the guest reported, checks the bytes
the guest claims the device moved, and prints one line per check and the
final line "N passed, N failed"."""
import argparse
import re
import sys
from pathlib import Path

KERNEL_LOG_BAD = re.compile(r"BUG[: ]|WARNING:|Oops|Call Trace|general protection|"
                            r"[Mm]emory leak|unreferenced object|Kernel panic|refcount_t|"
                            r"blocked for more than|possible .*locking|KASAN|UBSAN|"
                            r"soft lockup|hard LOCKUP|Bad page")
# Lines that match the above but report no fault (kmemleak's start).
KERNEL_LOG_FINE = re.compile(r"kmemleak: Kernel memory leak detector initialized")


class Verdict:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def __call__(self, name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")
        if ok:
            self.passed += 1
        else:
            self.failed += 1


def gtest(lines, v, prog):
    running = None
    for line in lines:
        if m := re.match(r"\[ RUN      \] (\S+)", line):
            running = m.group(1)
        elif m := re.match(r"\[       OK \] (\S+) \(", line):
            v(f"{prog}/{m.group(1)}", True)
            running = None
        elif m := re.match(r"\[  SKIPPED \] (\S+) \(", line):
            print(f"SKIP {prog}/{m.group(1)}")
            running = None
        elif m := re.match(r"\[  FAILED  \] (\S+) \(", line):
            v(f"{prog}/{m.group(1)}", False)
            running = None
    if running:
        v(f"{prog}/{running}", False, "did not finish (crash or hang)")


def compare(work, bar_file, bar, disk, length):
    """Returns (equal, first differing offset); -2 when both are all zeros
    (the tests always move pattern data, so zeros mean nothing moved)."""
    with open(work / bar_file, "rb") as b, open(work / "disk.img", "rb") as d:
        nonzero = False
        b.seek(bar)
        d.seek(disk)
        done = 0
        while done < length:
            n = min(1 << 22, length - done)
            x, y = b.read(n), d.read(n)
            if x != y:
                i = next(i for i in range(min(len(x), len(y))) if x[i] != y[i]) \
                    if len(x) == len(y) else min(len(x), len(y))
                return False, done + i
            nonzero = nonzero or x.count(0) != len(x)
            done += n
    return (True, -1) if nonzero else (False, -2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--mode", default="tests")
    a = ap.parse_args()
    work = a.work
    v = Verdict()
    results = (work / "results.log").read_text(errors="replace").splitlines() \
        if (work / "results.log").exists() else []

    # Output of each guest program, split by RUN/EXIT markers.
    progs, exits, current = {}, {}, None
    end = results.index("DMESG-BEGIN") if "DMESG-BEGIN" in results else len(results)
    for line in results[:end]:
        if m := re.match(r"RUN (\S+)", line):
            current = m.group(1)
            progs[current] = []
        elif m := re.match(r"EXTRA (\S+)", line):
            current = None
            print(f"-- extra program {m.group(1)}")
        elif m := re.match(r"EXIT (\S+) (\d+)", line):
            exits[m.group(1)] = int(m.group(2))
            current = None
        elif current:
            progs[current].append(line)
            if line.startswith("FABRIC "):
                print(f"   {line}")
        elif line.startswith(("COUNTERS", "DISKS", "FABRIC")) or not line.startswith(
                ("RESULT", "HOSTCHECK", "BAR", "GPUBAR", "BOOT")) and line.strip():
            print(f"   {line}")
    for prog, lines in progs.items():
        if any(line.startswith("[ RUN") for line in lines):
            gtest(lines, v, prog)
        else:
            print("\n".join("   " + line for line in lines))
    for prog, code in exits.items():
        v(f"{prog} exit status", code == 0, "" if code == 0 else str(code))

    for line in results:
        if m := re.match(r"RESULT (\S+) (pass|fail)", line):
            v(m.group(1), m.group(2) == "pass")

    # Bytes: the BAR's backing file against the disk image.
    checks = [(m.group(1), *map(int, m.groups()[1:])) for line in results
              if (m := re.match(r"HOSTCHECK (bar|gpubar) (\d+) disk (\d+) len (\d+)", line))]
    bad = []
    for which, bar, disk, length in checks:
        ok, at = compare(work, "ivshmem.bin" if which == "bar" else "gpu.bin", bar, disk,
                         length)
        if not ok:
            bad.append(f"{which} {bar} disk {disk} len {length}: differ at +{at}")
    if a.mode == "tests" or checks:
        v(f"host_bytes ({len(checks)} ranges, {sum(c[3] for c in checks)} bytes)",
          bool(checks) and not bad, "; ".join(bad[:5]))

    # DMA: QEMU's NVMe model logs the guest-physical address of every
    # transfer; those inside the BAR were done by the controller, not a CPU.
    dma_log = work / "dma.log"
    dma = [(int(m.group(1), 16), int(m.group(2)))
           for line in (dma_log.read_text(errors="replace").splitlines()
                        if dma_log.exists() else [])
           if (m := re.search(r"pci_nvme_map_addr addr (0x[0-9a-f]+) len (\d+)", line))]
    if a.mode == "fabric":
        # Every transport fabric.sh was given ran its tests (a boot where
        # none ran proves nothing).
        listed = next((line.split()[1:] for line in results if line.startswith("FABRICS")), [])
        v("fabric_transports_ran", bool(listed) and all(
            f"phxfs_guest_tests@{t}" in progs and exits.get(f"phxfs_guest_tests@{t}") == 0
            for t in listed), " ".join(listed) or "no transport listed")
        # The bytes reached the BAR (host_bytes) with no NVMe DMA inside it
        # in this boot: nvmet stages through its own buffers, so the local
        # controller DMAs into RAM, and the only DMA master of the guest
        # never touched the BAR: by elimination the transport's CPU copy
        # moved them (a fact of loopback NVMe-oF, shown, not assumed).
        bar = next((line.split() for line in results if line.startswith("BAR ")), None)
        lo, hi = (int(bar[2], 16), int(bar[3], 16)) if bar else (0, -1)
        inside = [n for addr, n in dma if addr <= hi and addr + n > lo]
        moved = sum(c[3] for c in checks)
        v("fabric_no_nvme_dma_into_bar",
          bool(bar) and bool(checks) and not inside and sum(n for _, n in dma) >= moved,
          f"{len(inside)} NVMe DMA transfers inside the BAR; {len(dma)} transfers "
          f"({sum(n for _, n in dma)} bytes) outside it for {moved} bytes host-checked")
    for key, name in (("BAR", "nvme_dma_into_bar"), ("GPUBAR", "nvme_dma_into_gpu_bar")):
        if a.mode in ("fuzz", "fabric"):
            break
        bar = next((line.split() for line in results if line.startswith(key + " ")), None)
        if not bar:
            v(name, False, f"no {key} line")
            continue
        if key == "GPUBAR" and not any(c[0] == "gpubar" for c in checks):
            continue  # a run without the nvidia tests (the demo)
        lo, hi = int(bar[2], 16), int(bar[3], 16)
        inside = [n for addr, n in dma if lo <= addr <= hi]
        v(name, bool(inside), f"{len(inside)} NVMe DMA transfers, {sum(inside)} bytes inside "
          f"{bar[2]}-{bar[3]}")

    # The kernel log: no oops, warning or leak report, and a clean finish.
    if "DMESG-END" in results:
        dmesg = results[results.index("DMESG-BEGIN") + 1:results.index("DMESG-END")]
        bad_lines = [line for line in dmesg
                     if KERNEL_LOG_BAD.search(line) and not KERNEL_LOG_FINE.search(line)]
        v("kernel_log_clean", not bad_lines, " | ".join(bad_lines[:3]))
    else:
        console = (work / "console.log").read_text(errors="replace") \
            if (work / "console.log").exists() else ""
        v("vm_finished", False, "no end marker; console tail:\n" + console[-3000:])
    print(f"{v.passed} passed, {v.failed} failed")
    return 0 if v.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
