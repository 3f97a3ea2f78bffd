#!/usr/bin/env bash
# Issue #12's stream-ordered reads on a GPU machine: N random reads of one
# size from a page-cached file into cudaMalloc memory, all enqueued on one
# CUDA stream, then one synchronize; through libphxfs (phxfs-bench --stream:
# phxfs_file_read_stream), cuFile's stream API where libcufile loads
# (phxfs-bench -x cufile --stream: cuFileReadAsync on a stream registered
# with flags 0), and kvikio where python3 imports kvikio and cupy
# (bench/kvikio_stream.py: CuFile.raw_read_async on one stream, and pread
# futures all in flight). Prints one Markdown table: size, path, GiB/s,
# requests/s, and a remark (an error, or the mode kvikio ran in).
#
#   bench/stream.sh BUILD_DIR [FILE]   (BUILD_DIR/tools/phxfs-bench)
#
# STREAM_SIZES (default "4K 1M") are the request sizes; STREAM_COUNTS
# ("SIZE:N ...", default "4K:20000 1M:2000") the requests per run (2000 for
# a size it does not name). FILE (default /var/tmp/phx-stream.dat,
# STREAM_FILE_SIZE bytes, default 4G) is created with the pattern when
# missing, kept for the next run (KEEP=0 removes a file this script
# created), and read once before the runs so that the page cache holds it.
# Each run is stopped after STREAM_RUN_LIMIT seconds (default 120; an error
# row then). For cuFile on a VM or container see tools/README.md ("cuFile
# on VMs and containers": cufile.json with allow_compat_mode, the udev
# record); cuFile's stream API may be missing or refused in its compat mode,
# which shows as an error row.
set -euo pipefail
bin=$1 file=${2:-/var/tmp/phx-stream.dat}
here=$(dirname "$0")
sizes=${STREAM_SIZES:-4K 1M}
counts=${STREAM_COUNTS:-4K:20000 1M:2000}
run_limit=${STREAM_RUN_LIMIT:-120}
bench=$bin/tools/phxfs-bench

# count_of SIZE: the requests of a run of SIZE (STREAM_COUNTS, else 2000).
count_of() {
	local c
	for c in $counts; do
		if [ "${c%%:*}" = "$1" ]; then
			echo "${c#*:}"
			return
		fi
	done
	echo 2000
}
# bytes_of SIZE: 4K -> 4096 (K M G: powers of 1024, as phxfs-bench reads them).
bytes_of() {
	local n=${1%[KkMmGg]}
	case $1 in
	*[Kk]) echo $((n << 10)) ;;
	*[Mm]) echo $((n << 20)) ;;
	*[Gg]) echo $((n << 30)) ;;
	*) echo "$1" ;;
	esac
}
# row LABEL SIZE CMD...: CMD's "{json}" line printed as "LABEL {json}"; a run
# that printed no JSON (it failed before it ran) gives a record of its error.
row() {
	local label=$1 size=$2 out err
	shift 2
	err=$(mktemp)
	out=$(timeout "$run_limit" "$@" 2>"$err") || true
	if [ -n "$out" ]; then
		echo "$label $out"
	else
		python3 -c 'import json, sys; print(sys.argv[1], json.dumps({"io_size": int(sys.argv[2]), "error": sys.argv[3] or "no output"}))' \
			"$label" "$(bytes_of "$size")" "$(tail -1 "$err")"
	fi
	rm -f "$err"
}

if [ ! -e "$file" ]; then
	# A one-request run creates the file with the pattern; --keep keeps it.
	"$bench" -f "$file" -s "${STREAM_FILE_SIZE:-4G}" -i 4K -b 4K -x naive -m pageable --keep >/dev/null
	[ "${KEEP:-1}" = 1 ] || trap 'rm -f "$file"' EXIT
fi
cat "$file" >/dev/null # into the page cache
kvikio=0
if python3 -c "import kvikio, cupy" 2>/dev/null; then
	kvikio=1
else
	echo "stream.sh: no kvikio rows (python3 cannot import kvikio and cupy)" >&2
fi

# The table, from the "LABEL {json}" lines (bench/batch_table.py's records()).
table=$(
	cat <<'PY'
import sys

sys.path.insert(0, sys.argv[1])
from batch_table import records

print("| size | path | GiB/s | requests/s | remark |")
print("| --- | --- | ---: | ---: | --- |")
for path, r in records(sys.stdin):
    size = int(r.get("io_size", 0))
    size_s = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
    error = r.get("error")
    if error:
        print(f"| {size_s} | {path} | failed | | {error} |")
        continue
    secs = float(r.get("total_time_s") or 0)
    rps = r["ops"] / secs if secs > 0 else 0.0
    gib = float(r["throughput_gib_s"])
    remark = r.get("remark", "")
    print(f"| {size_s} | {path} | {gib:.2f} | {rps:.0f} | {remark} |")
PY
)

for size in $sizes; do
	n=$(count_of "$size")
	run=(-f "$file" -I randread -t 1 -m device -i "$size" --stream "$n" --json)
	row phxfs "$size" "$bench" "${run[@]}"
	row cufile "$size" "$bench" "${run[@]}" -x cufile
	if [ "$kvikio" = 1 ]; then
		# Two lines ("kvikio-stream {json}", "kvikio-pread {json}"); a failure
		# before them gives one error row.
		row kvikio "$size" python3 "$here/kvikio_stream.py" -f "$file" -s "$size" -n "$n" --json |
			sed 's/^kvikio \(kvikio-[a-z]* \)/\1/'
	fi
done | python3 -c "$table" "$here"
