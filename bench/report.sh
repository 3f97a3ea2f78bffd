#!/usr/bin/env bash
# bench/report.sh - the whole issue-5 report with one command, on a GPU machine.
#
#   bench/report.sh [BUILD_DIR]      (default: build)
#
# BUILD_DIR holds tools/phxfs-bench, bench/gpu_baseline and bench/costs (a
# CMake build of this repository with the CUDA toolkit found). Environment:
#   DATA_DIR     scratch directory for the data files (default /var/tmp/phx;
#                about 14 GiB, removed at the end unless KEEP=1)
#   OUT          when set, the log, the JSON lines and the summary go there too
#   BEFORE_BENCH an older phxfs-bench binary: its 4 KiB random-read row is
#                added as "before"
#   PHXFS_COMMIT the commit to print where the tree has no .git
#   SECTIONS     which parts to run (default all but kvcache): costs baseline
#                reads writes rand4k batch cold kvcache stream (batch:
#                bench/batch.sh, kvcache: bench/kvcache.sh, stream:
#                bench/stream.sh, issue 12)
#
# cuFile: libcufile.so.0 is found through the loader, the CUDA toolkit or the
# nvidia-cufile Python wheel. cuFile runs in its compat mode here; this script
# gives it a cufile.json of its own (a copy of /etc/cufile.json with
# allow_compat_mode true, through CUFILE_ENV_PATH_JSON). On VMs and containers
# cuFile refuses to register file handles (error 5027) unless udev data
# exists for the disk: when /run/udev/data/b<major>:<minor> is missing for
# the data directory's device, this script writes one for the run (ID_FS_TYPE,
# ID_FS_USAGE, ID_FS_UUID) and removes it at exit. Nothing else on the
# machine is changed.
set -uo pipefail

B=${1:-build}
BENCH=$B/tools/phxfs-bench
BASE=$B/bench/gpu_baseline
COSTS=$B/bench/costs
D=${DATA_DIR:-/var/tmp/phx}
mkdir -p "$D"
# File sizes (override only to test this script on a small machine).
S1=${S1:-1G} S8=${S8:-8G} SW=${SW:-4G} SC=${SC:-2G}
bytes() { numfmt --from=iec "$1"; }
SECTIONS=${SECTIONS:-costs baseline reads writes rand4k batch cold}
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }
W=$(mktemp -d)
RES=$W/results.jsonl
LOG=$W/report.log
: >"$RES"
exec > >(tee "$LOG") 2>&1

for b in "$BENCH" "$BASE" "$COSTS"; do
    [ -x "$b" ] || { echo "report.sh: $b is missing (build with the CUDA toolkit first)"; exit 1; }
done

UDEV_MADE=
cleanup() {
    [ -n "$UDEV_MADE" ] && rm -f "$UDEV_MADE"
    [ "${KEEP:-0}" = 1 ] || rm -f "$D"/f1g.dat "$D"/f8g.dat "$D"/w4g.dat "$D"/phx-costs.dat
    if [ -n "${OUT:-}" ]; then
        cp "$LOG" "$RES" "$OUT"/ 2>/dev/null
        cp "$W"/cufile*.log "$OUT"/ 2>/dev/null
        [ -f "$W/summary.md" ] && cp "$W/summary.md" "$OUT"/
    fi
}
trap cleanup EXIT

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
echo "cpus: $(nproc)"
echo "kernel: $(uname -r)"
echo "os: $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}")"
echo "memory: $(free -g | awk '/Mem:/{print $2" GiB"}')"
echo "data dir: $D on $(df -P "$D" | awk 'NR==2{print $1}') ($(findmnt -no FSTYPE -T "$D" 2>/dev/null || stat -f -c %T "$D"))"
COMMIT=${PHXFS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit: $COMMIT"
echo "date: $(date -u +%F' '%T) UTC"

echo "== cuFile setup"
if [ -z "${PHXFS_CUFILE_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcufile.so.0'; then
    lib=$(ls /usr/local/cuda*/lib64/libcufile.so.0 /usr/local/cuda*/targets/*/lib/libcufile.so.0 \
        2>/dev/null | head -1)
    [ -n "$lib" ] || lib=$(find /usr /opt -name 'libcufile.so.0' 2>/dev/null | head -1)
    [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "libcufile: ${PHXFS_CUFILE_LIB:-$(ldconfig -p 2>/dev/null | awk '/libcufile.so.0/{print $NF; exit}')} ${LD_LIBRARY_PATH:+(LD_LIBRARY_PATH=$LD_LIBRARY_PATH)}"
CJ=$W/cufile.json
if [ -f /etc/cufile.json ]; then
    sed -E 's/("allow_compat_mode"[[:space:]]*:[[:space:]]*)false/\1true/;
            s#("dir"[[:space:]]*:[[:space:]]*)"[^"]*"#\1"'"$W"'"#' /etc/cufile.json >"$CJ"
    echo "cufile.json: /etc/cufile.json with allow_compat_mode true ($(grep -c '"allow_compat_mode"[[:space:]]*:[[:space:]]*true' "$CJ") line)"
else
    printf '{ "logging": { "dir": "%s", "level": "ERROR" },\n  "properties": { "allow_compat_mode": true } }\n' "$W" >"$CJ"
    echo "cufile.json: none in /etc; a minimal one with allow_compat_mode true"
fi
export CUFILE_ENV_PATH_JSON=$CJ
maj=$(stat -c %Hd "$D" 2>/dev/null) min=$(stat -c %Ld "$D" 2>/dev/null)
if [ -n "$maj" ] && [ "$maj" != 0 ]; then
    rec=/run/udev/data/b$maj:$min
    if [ -e "$rec" ]; then
        echo "udev record $rec exists"
    else
        mkdir -p /run/udev/data
        fst=$(findmnt -no FSTYPE -T "$D" 2>/dev/null || echo ext4)
        uuid=$(findmnt -no UUID -T "$D" 2>/dev/null)
        printf 'E:ID_FS_TYPE=%s\nE:ID_FS_USAGE=filesystem\nE:ID_FS_UUID=%s\nE:DEVTYPE=disk\n' \
            "$fst" "${uuid:-00000000-0000-0000-0000-00000000phx5}" >"$rec" && UDEV_MADE=$rec
        echo "udev record $rec written for this run (removed at exit): $(tr '\n' ' ' <"$rec")"
    fi
else
    echo "data dir is on device $maj:$min (no block device): cuFile may refuse it"
fi

# run LABEL ARGS...: one phxfs-bench run, its JSON kept with a label.
run() {
    local label=$1
    shift
    local j
    j=$("$@" --json 2>"$W/err") || { echo "$label: FAILED: $(tail -2 "$W/err" | tr '\n' ' ')"; }
    [ -n "$j" ] || return 0
    echo "$j" | while read -r line; do
        printf '{"label":"%s",%s\n' "$label" "${line#\{}" >>"$RES"
        echo "$label: $(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f GB/s, p50 %.1f us, p99 %.1f us, ops %d%s" % (r["bytes"]/r["total_time_s"]/1e9, r["latency_us"]["p50"], r["latency_us"]["p99"], r["ops"], (", error: "+r["error"]) if "error" in r else ""))' 2>/dev/null || echo "$line")"
    done
}

want batch && echo "== batch (bench/batch.sh)" && bash "$(dirname "$0")/batch.sh" "$B" "$D/phx-batch.dat" | tee "$W/batch.md"
want kvcache && echo "== kvcache (bench/kvcache.sh)" && bash "$(dirname "$0")/kvcache.sh" "$B" "$D/phx-kv.dat" | tee "$W/kvcache.md"
want stream && echo "== stream (bench/stream.sh)" && bash "$(dirname "$0")/stream.sh" "$B" "$D/phx-stream.dat" | tee "$W/stream.md"
want costs && echo "== costs (bench/costs)" && "$COSTS" "$D/phx-costs.dat" "${COST_REPS:-2000}" | tee "$W/costs.txt"

echo "== data files"
want baseline || want reads || want rand4k &&
    run create-1g "$BENCH" -f "$D/f1g.dat" -s "$S1" -i 16M -t 8 --keep
want baseline || want reads || want cold &&
    run create-8g "$BENCH" -f "$D/f8g.dat" -s "$S8" -i 16M -t 8 --keep
want writes && run create-w4g "$BENCH" -f "$D/w4g.dat" -s "$SW" -i 16M -t 8 --keep

if want baseline; then
echo "== copy limits and one-call phxfs_read/phxfs_write (bench/gpu_baseline)"
"$BASE" "$D/f1g.dat" $(($(bytes "$S1") >> 30)) | tee "$W/baseline1.txt"
"$BASE" "$D/f8g.dat" $(($(bytes "$S8") >> 30)) | tee "$W/baseline8.txt"

fi

if want reads; then
echo "== large reads of cached files into cudaMalloc memory"
run read1g-phxfs-1call "$BENCH" -f "$D/f1g.dat" -i "$S1" -t 1 -b $((9 * $(bytes "$S1")))
run read1g-cufile-1x16M "$BENCH" -f "$D/f1g.dat" -i 16M -t 1 -x cufile
run read1g-cufile-8x16M "$BENCH" -f "$D/f1g.dat" -i 16M -t 8 -x cufile
run read1g-naive-1x16M "$BENCH" -f "$D/f1g.dat" -i 16M -t 1 -x naive
run read1g-naive-8x16M "$BENCH" -f "$D/f1g.dat" -i 16M -t 8 -x naive
run read8g-phxfs-1call "$BENCH" -f "$D/f8g.dat" -i "$S8" -t 1 -b $((5 * $(bytes "$S8")))
run read8g-cufile-1x16M "$BENCH" -f "$D/f8g.dat" -i 16M -t 1 -x cufile
run read8g-cufile-8x16M "$BENCH" -f "$D/f8g.dat" -i 16M -t 8 -x cufile
run read8g-naive-1x16M "$BENCH" -f "$D/f8g.dat" -i 16M -t 1 -x naive
run read8g-naive-8x16M "$BENCH" -f "$D/f8g.dat" -i 16M -t 8 -x naive

fi

if want writes; then
echo "== writes of GPU memory to a cached 4 GiB file (sync before each run)"
wr() { sync; run "$@"; }
wr write-pagecache-pinned-16x4M "$BENCH" -f "$D/w4g.dat" -I write -i 4M -t 16 -m pinned -x naive -b $((3 * $(bytes "$SW")))
wr write-pagecache-pinned-1x16M "$BENCH" -f "$D/w4g.dat" -I write -i 16M -t 1 -m pinned -x naive -b $((3 * $(bytes "$SW")))
wr write-phxfs-1call "$BENCH" -f "$D/w4g.dat" -I write -i "$SW" -t 1 -b $((3 * $(bytes "$SW")))
wr write-cufile-1x16M "$BENCH" -f "$D/w4g.dat" -I write -i 16M -t 1 -x cufile
wr write-cufile-8x16M "$BENCH" -f "$D/w4g.dat" -I write -i 16M -t 8 -x cufile
wr write-naive-1x16M "$BENCH" -f "$D/w4g.dat" -I write -i 16M -t 1 -x naive
wr write-naive-8x16M "$BENCH" -f "$D/w4g.dat" -I write -i 16M -t 8 -x naive
sync

fi

if want rand4k; then
echo "== 4 KiB random reads, one thread, cached 1 GiB file"
run rand4k-phxfs "$BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2
for m in ${SMALL_COPY_MODES:-}; do
    PHXFS_SMALL_COPY=$m run rand4k-phxfs-copymode$m "$BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2
done
[ -n "${BEFORE_BENCH:-}" ] && [ -x "$BEFORE_BENCH" ] &&
    run rand4k-phxfs-before "$BEFORE_BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2
run rand4k-cufile "$BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2 -x cufile
run rand4k-naive-pinned "$BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2 -x naive --bounce pinned
run rand4k-naive-pageable "$BENCH" -f "$D/f1g.dat" -I randread -i 4K -t 1 -T 2 -x naive

fi

if want cold; then
echo "== cold reads, O_DIRECT, first 2 GiB of the 8 GiB file, 8 threads x 16 MiB"
run cold-raw-odirect-8x16M "$BENCH" -f "$D/f8g.dat" -s "$SC" -i 16M -t 8 -x naive -m pinned --cold
run cold-phxfs-8x16M "$BENCH" -f "$D/f8g.dat" -s "$SC" -i 16M -t 8 --cold
run cold-phxfs-8x16M-chunk16M env PHXFS_CHUNK_KB=16384 "$BENCH" -f "$D/f8g.dat" -s "$SC" -i 16M -t 8 --cold
run cold-cufile-8x16M "$BENCH" -f "$D/f8g.dat" -s "$SC" -i 16M -t 8 -x cufile --cold
run cold-raw-odirect-8x16M-again "$BENCH" -f "$D/f8g.dat" -s "$SC" -i 16M -t 8 -x naive -m pinned --cold

fi

echo "== summary"
python3 - "$RES" "$W" "$COMMIT" >"$W/summary.md" <<'EOF'
import json, re, sys
res, w, commit = sys.argv[1], sys.argv[2], sys.argv[3]
R = {}
for line in open(res):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    R[r["label"]] = r
def gbs(l):  # bytes / wall time, GB/s (10^9)
    r = R.get(l)
    return r["bytes"] / r["total_time_s"] / 1e9 if r and "error" not in r else None
def call_gbs(l):  # one call: request size / median call time
    r = R.get(l)
    return r["io_size"] / (r["latency_us"]["p50"] * 1e3) if r and "error" not in r else None
def lat(l, p):
    r = R.get(l)
    return r["latency_us"][p] if r and "error" not in r else None
def base(f):
    try:
        t = open(f"{w}/{f}").read()
    except OSError:
        return dict(h2d=None, read=None, d2h=None, write=None)
    g = lambda k: float(re.search(k + r"[^:]*:\s+([\d.]+)", t).group(1))
    return dict(h2d=g("pinned H2D"), read=g("phxfs_read"), d2h=g("pinned D2H"), write=g("phxfs_write"))
b1, b8 = base("baseline1.txt"), base("baseline8.txt")
f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"
def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")
out = []
P = out.append
P(f"commit {commit}\n")
P("| figure | phxfs | cuFile compat | naive | limit / target | met? |")
P("| --- | ---: | ---: | ---: | --- | --- |")
mul = lambda k, v: None if v is None else k * v
for sz, b in (("1", b1), ("8", b8)):
    h2d = b["h2d"]
    one = call_gbs(f"read{sz}g-phxfs-1call")
    if one is None and h2d is None:
        continue
    P(f"| {sz} GiB cached read, GB/s (phxfs: one call, median; gpu_baseline best {f(b['read'])}) | {f(one)} | 1x16M {f(gbs(f'read{sz}g-cufile-1x16M'))}, 8x16M {f(gbs(f'read{sz}g-cufile-8x16M'))} | 1x16M {f(gbs(f'read{sz}g-naive-1x16M'))}, 8x16M {f(gbs(f'read{sz}g-naive-8x16M'))} | H2D {f(h2d)}; 0.92 = {f(mul(0.92, h2d))} | {verdict(None if one is None or h2d is None else one >= 0.92*h2d)} ({f(one and h2d and one/h2d, 2)} of H2D) |")
# The page-cache write rate: the better of 16 writers and one (buffered
# writes to one file serialize on its inode lock, so one can be faster).
pcs = [x for x in (gbs("write-pagecache-pinned-16x4M"), gbs("write-pagecache-pinned-1x16M")) if x]
pc = max(pcs) if pcs else None
d2hs = [x for x in (b1["d2h"], b8["d2h"]) if x]
d2h = min(d2hs) if d2hs else None
lims = [x for x in (d2h, pc) if x is not None]
wl = min(lims) if lims else None
one = call_gbs("write-phxfs-1call")
if one is not None or pc is not None:
    P(f"| write of GPU memory to a cached 4 GiB file, GB/s (phxfs: one 4 GiB call, median) | {f(one)} | 1x16M {f(gbs('write-cufile-1x16M'))}, 8x16M {f(gbs('write-cufile-8x16M'))} | 1x16M {f(gbs('write-naive-1x16M'))}, 8x16M {f(gbs('write-naive-8x16M'))} | min(D2H {f(d2h)}, page cache {f(pc)}, best of 16x4M and 1x16M); 0.9 = {f(mul(0.9, wl))} | {verdict(None if one is None or wl is None else one >= 0.9*wl)} ({f(one and wl and one/wl, 2)}) |")
p50 = lat("rand4k-phxfs", "p50")
P(f"| 4 KiB random read, 1 thread, p50 / p99 us | {f(p50)} / {f(lat('rand4k-phxfs','p99'))} | {f(lat('rand4k-cufile','p50'))} / {f(lat('rand4k-cufile','p99'))} | pinned {f(lat('rand4k-naive-pinned','p50'))} / {f(lat('rand4k-naive-pinned','p99'))}, pageable {f(lat('rand4k-naive-pageable','p50'))} / {f(lat('rand4k-naive-pageable','p99'))} | p50 <= 6 | {verdict(None if p50 is None else p50 <= 6)} |")
if "rand4k-phxfs-before" in R:
    P(f"| 4 KiB random read before this change (same run), p50 / p99 us | {f(lat('rand4k-phxfs-before','p50'))} / {f(lat('rand4k-phxfs-before','p99'))} | | | | |")
for l in sorted(R):
    if l.startswith("rand4k-phxfs-copymode"):
        P(f"| 4 KiB random read, {l[13:]}, p50 / p99 us | {f(lat(l,'p50'))} / {f(lat(l,'p99'))} | | | | |")
raw = [x for x in (gbs("cold-raw-odirect-8x16M"), gbs("cold-raw-odirect-8x16M-again")) if x]
rawb = max(raw) if raw else None
cold = gbs("cold-phxfs-8x16M")
P(f"| cold O_DIRECT read, 2 GiB, 8 threads x 16 MiB, GB/s | {f(cold, 2)} | {f(gbs('cold-cufile-8x16M'), 2)} | raw O_DIRECT into pinned: {', '.join(f(x, 2) for x in raw)} | 0.95 of raw (best) = {f(rawb and 0.95*rawb, 2)} | {verdict(None if cold is None or rawb is None else cold >= 0.95*rawb)} ({f(cold and rawb and cold/rawb, 2)}) |")
c16 = gbs("cold-phxfs-8x16M-chunk16M")
if c16 is not None:
    P(f"| cold O_DIRECT read, same, PHXFS_CHUNK_KB=16384 (one 16 MiB read per request, as raw) | {f(c16, 2)} | | | 0.95 of raw (best) = {f(rawb and 0.95*rawb, 2)} | {verdict(None if rawb is None else c16 >= 0.95*rawb)} ({f(rawb and c16/rawb, 2)}) |")
P("")
P("Costs (bench/costs, median (p99) us):\n")
try:
    P(open(f"{w}/costs.txt").read())
except OSError:
    P("(not run)")
print("\n".join(out))
EOF
cat "$W/summary.md"
