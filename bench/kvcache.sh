#!/usr/bin/env bash
# Issue #12's KV-cache matrix on a GPU machine: phxfs-bench -I kvcache with
# Llama-3-8B's shape (32 layers, 8 KV heads of 128, bf16, 16-token blocks:
# 64 KiB per layer, 2 MiB per block), restoring 512 and 2048 blocks per
# request from a page-cached store of one file into cudaMalloc memory, as
# 64 KiB per-layer transfers and as whole 2 MiB blocks, with random and
# Zipf-popular prefixes; through phxfs batches and through cuFile's batch API
# (every transfer in flight, in batch handles of 128; and one handle of 128
# at a time); then the same for storing. Beside it the pinned host-to-device
# copy limit of the same run (gpu_baseline). Prints one Markdown table.
#
#   bench/kvcache.sh BUILD_DIR [STORE]   (BUILD_DIR/tools/phxfs-bench, BUILD_DIR/bench/gpu_baseline)
#
# KV_BLOCKS, KV_UNITS, KV_PATTERNS and KV_STORE=0 choose a part of the matrix.
# STORE (default /var/tmp/phx-kv.dat, 16 GiB: KV_STORE_BLOCKS blocks of 2 MiB)
# is created if missing and removed at the end unless KEEP=1. Every request
# of a case is the same for every path (same seed). For cuFile on a VM, run
# it through bench/report.sh (SECTIONS=kvcache), which gives cuFile the
# cufile.json and udev record it needs there.
set -euo pipefail
bin=$1 store=${2:-/var/tmp/phx-kv.dat}
secs=${PHXFS_BENCH_SECONDS:-3}
store_blocks=${KV_STORE_BLOCKS:-8192}
here=$(dirname "$0")
# Each run is stopped after this many seconds (a stuck path shows as an
# error row, not a lost table). cuFile with every transfer in flight (many
# batch handles at once) runs only with KV_CUFILE_ALL=1: its default is one
# handle of at most 128 entries at a time, as applications use it.
run_limit=${KV_RUN_LIMIT:-60}
cufile_all=${KV_CUFILE_ALL:-0}
# A part of the matrix (default all of it): blocks per request, units,
# patterns of the restores, and whether the stores run (KV_STORE=0: not).
blocks_list=${KV_BLOCKS:-512 2048}
units=${KV_UNITS:-layer block}
patterns=${KV_PATTERNS:-random zipf}
stores=${KV_STORE:-1}
[ "${KEEP:-0}" = 1 ] || trap 'rm -f "$store" "$store.limit"' EXIT
model=(-I kvcache --kv-layers 32 --kv-heads 8 --kv-head-dim 128 --kv-dtype-bytes 2
	--kv-block-tokens 16 --kv-store-blocks "$store_blocks" --kv-seed 1)

# kv LABEL ARGS...: one run, printed as "LABEL {json}" (a failure that left
# no JSON becomes a record with its error).
kv() {
	local label=$1 out err
	shift
	err=$(mktemp)
	out=$(timeout "$run_limit" "$bin/tools/phxfs-bench" -f "$store" "${model[@]}" -t 1 --json "$@" 2>"$err") || true
	if [ -n "$out" ]; then
		echo "$label $out"
	else
		python3 - "$label" "$(tail -1 "$err")" "$@" <<'PY'
import json, sys
label, error, args = sys.argv[1], sys.argv[2], sys.argv[3:]
opt = lambda name, default: args[args.index(name) + 1] if name in args else default
kv = {"op": opt("--kv-op", "restore"), "unit": opt("--kv-unit", "layer"),
      "blocks_per_request": int(opt("--kv-blocks", 512)), "pattern": opt("--kv-pattern", "random")}
print(label, json.dumps({"error": error or "no output", "kvcache": kv}))
PY
	fi
	rm -f "$err"
}

{
	{ "$bin/bench/gpu_baseline" "$store.limit" 2 || echo "gpu_baseline failed: no copy limit" >&2; } |
		tee /dev/stderr | sed -n 's/^pinned H2D copy.*: *\([0-9.]*\) GB\/s/limit \1/p'
	# Create the store, and check both paths restore the right bytes (to stderr).
	for path in phxfs cufile; do
		depth=()
		[ "$path" = cufile ] && depth=(--batch 128)
		timeout "$run_limit" "$bin/tools/phxfs-bench" -f "$store" "${model[@]}" --keep --verify \
			--kv-blocks 512 --kv-requests 2 -x "$path" "${depth[@]}" | sed "s/^/verify $path: /" >&2 ||
			echo "verify $path: FAILED" >&2
	done
	for n in $blocks_list; do
		for unit in $units; do
			for pattern in $patterns; do
				c=(--kv-op restore --kv-blocks "$n" --kv-unit "$unit" --kv-pattern "$pattern" -T "$secs")
				kv phxfs "${c[@]}"
				[ "$cufile_all" = 1 ] && kv cufile-batch "${c[@]}" -x cufile
				kv cufile-batch128 "${c[@]}" -x cufile --batch 128
			done
		done
	done
	# Storing last: it leaves the store without the pattern.
	[ "$stores" = 1 ] || blocks_list=
	for n in $blocks_list; do
		for unit in $units; do
			c=(--kv-op store --kv-blocks "$n" --kv-unit "$unit" --kv-pattern random -T "$secs")
			kv phxfs "${c[@]}"
			kv cufile-batch128 "${c[@]}" -x cufile --batch 128
		done
	done
} | python3 "$here/kv_table.py"
