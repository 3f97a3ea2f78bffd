#!/usr/bin/env bash
# `make demo`: the main job of Phoenix on whatever machine this is. A
# generated file moves into device memory and back through libphxfs (the GPU
# when there is one, host memory standing in otherwise), every byte verified,
# with throughput and the path that moved the bytes.
set -euo pipefail
build=${1:-build}
size=${2:-512M}
bench="$build/tools/phxfs-bench"
check="$build/tools/phxfs-check"
file="$build/phxfs-demo.dat"
trap 'rm -f "$file"' EXIT

echo "== what this machine offers (phxfs-check)"
"$check" "$build"
echo
echo "== read a $size file into device memory: 4 threads x 16 MiB requests, verified"
"$bench" -f "$file" -s "$size" -i 16M -t 4 -I read --verify
echo
echo "== the whole file in ONE phxfs_read call (the library parallelises it), verified"
"$bench" -f "$file" -s "$size" -i "$size" -t 1 -I read --verify
echo
echo "== write device memory back to the file: 4 threads x 16 MiB, verified"
"$bench" -f "$file" -s "$size" -i 16M -t 4 -I write --verify
if [ -x tests/vm/demo.sh ]; then
	echo
	echo "== the direct path: NVMe DMA straight into device memory, in a QEMU VM"
	tests/vm/demo.sh --build "$build"
fi
