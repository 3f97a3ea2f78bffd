#!/usr/bin/env bash
# Issue #12's small-request matrix on a GPU machine: random reads of 4, 8, 16
# and 64 KiB from a page-cached file into cudaMalloc memory through the
# compat path, as a loop of synchronous calls, as batches of 16..1024 and as
# futures 16 and 64 deep, one thread; beside cuFile's batch API (16, 64, 128:
# its default limit) where libcufile loads, and the pinned host-to-device
# copy limit of the same run (gpu_baseline). Prints one Markdown table.
#
#   bench/batch.sh BUILD_DIR [FILE]   (BUILD_DIR/tools/phxfs-bench, BUILD_DIR/bench/gpu_baseline)
#
# For cuFile on a VM, run it through bench/report.sh (SECTIONS=batch), which
# gives cuFile the cufile.json and udev record it needs there. BATCH_SIZES,
# BATCH_DEPTHS, BATCH_QDS and BATCH_CUFILE_DEPTHS choose a part of the matrix.
set -euo pipefail
bin=$1 file=${2:-/var/tmp/phx-batch.dat}
secs=${PHXFS_BENCH_SECONDS:-2}
"$bin/bench/gpu_baseline" "$file.limit" 2 | tee /dev/stderr | sed -n 's/^pinned H2D copy.*: *\([0-9.]*\) GB\/s/limit \1/p'
run() { "$bin/tools/phxfs-bench" -f "$file" -s 4G -I randread -t 1 -T "$secs" --json "$@"; }
# A part of the matrix (default all of it).
sizes=${BATCH_SIZES:-4K 8K 16K 64K} depths=${BATCH_DEPTHS:-16 64 256 1024}
qds=${BATCH_QDS:-16 64} cufile_depths=${BATCH_CUFILE_DEPTHS:-16 64 128}
for size in $sizes; do
	run -i "$size" -x compat | sed "s/^/sync /"
	for b in $depths; do run -i "$size" -x compat --batch "$b" | sed "s/^/batch$b /"; done
	for q in $qds; do run -i "$size" -x compat --qd "$q" | sed "s/^/qd$q /"; done
	for b in $cufile_depths; do run -i "$size" -x cufile --batch "$b" | sed "s/^/cufile-batch$b /"; done
done | python3 "$(dirname "$0")/batch_table.py"
