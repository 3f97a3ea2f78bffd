#!/usr/bin/env bash
# The VM suite: phxfs.ko and libphxfs's direct path on Debian's own kernels,
# in QEMU (TCG), with an emulated NVMe SSD and an ivshmem BAR as device
# memory. The host then checks the bytes (BAR backing file against the disk
# image) and QEMU's DMA trace. Ends with the line "N passed, N failed".
#
#   tests/vm/run.sh [--kernel 6.1|6.12|p2pdma|all] [--build DIR] [--extra DIR]
#                   [--demo] [--fuzz SECONDS] [--boot B] [--keep]
#
# --extra DIR  copies DIR into the guest as /extra and runs each executable
#              file at its top after the tests (/dev/phxfs0 and the disks ready,
#              ext4 at /mnt/fs), output shown; their exit status counts.
# --demo       runs the direct-path demo only (make demo).
# --fuzz S     runs the module fuzzer only, for S seconds (make fuzz).
# --boot B     of the test boots (tests, fuzz, fabric), runs B alone.
# Every test run also fuzzes PHXFS_FUZZ_OPS operations (10000) with seed
# PHXFS_FUZZ_SEED (default: the time); the seed is printed for replay.
# Kernels are cached in $PHXFS_VM_CACHE (~/.cache/phxfs/vm): Debian's 6.1 and
# 6.12, and p2pdma, built from Debian's 6.12 source with CONFIG_PCI_P2PDMA,
# KASAN, lockdep and kmemleak (kernel.sh), whose guest puts the NVMe disks
# and the BARs under one PCIe switch, as GPU servers do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kernels=all build=build extra="" mode=tests keep=0 fuzz_seconds=0 only=""
while [ $# -gt 0 ]; do
	case "$1" in
	--kernel) kernels=$2; shift ;;
	--build) build=$2; shift ;;
	--extra) extra=$(cd "$2" && pwd); shift ;;
	--demo) mode=demo ;;
	--fuzz) mode=fuzz fuzz_seconds=$2; shift ;;
	--keep) keep=1 ;;
	--boot)
		case "$2" in tests | fuzz | fabric) only=$2 ;; *) echo "--boot: tests, fuzz or fabric" >&2; exit 2 ;; esac
		shift
		;;
	*) echo "usage: $0 [--kernel 6.1|6.12|p2pdma|all] [--build DIR] [--extra DIR] [--demo] [--fuzz S] [--boot B] [--keep]" >&2
	   exit 2 ;;
	esac
	shift
done
[ "$kernels" = all ] && kernels="6.1 6.12 p2pdma"
fuzz_seed=${PHXFS_FUZZ_SEED:-$(date +%s)}
echo "== fuzzer seed $fuzz_seed (PHXFS_FUZZ_SEED=$fuzz_seed replays it)"
build=$(cd "$repo" && mkdir -p "$build" && cd "$build" && pwd)
cache=${PHXFS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phxfs/vm}
guest_bin=$build/tests/vm/guest-bin
"$repo/scripts/install-deps.sh" vm
[ -x "$guest_bin/phxfs_guest_tests" ] || {
	echo "no guest test programs in $guest_bin: build first (make build)" >&2
	exit 1
}

# Shared libraries of a program, into the initramfs.
copy_libs() {
	local root=$1 prog=$2 lib
	for lib in $(ldd "$prog" 2>/dev/null | grep -o '/[^ ]*'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -Ln "$lib" "$root$lib"
	done
}

make_initramfs() {
	local kver=$1 work=$2 mode=$3 root=$2/initramfs m f
	rm -rf "$root"
	mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,mnt,tests,extra,lib/modules}
	cp /bin/busybox "$root/bin/"
	for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
	cp "$here/init.sh" "$root/init"
	echo "$mode" >"$root/mode"
	if [ "$fuzz_seconds" != 0 ]; then
		echo "$fuzz_seed 1000000000 $fuzz_seconds" >"$root/fuzz"
	else
		echo "$fuzz_seed ${PHXFS_FUZZ_OPS:-10000} 0" >"$root/fuzz"
	fi
	# NVMe and ext4 (and the fabric boot's modules), in dependency order,
	# decompressed for busybox insmod.
	: >"$root/modules.list"
	local want="nvme ext4 crc32c_generic"
	if [ "$mode" = fabric ]; then
		want="$want $(fabric_modules "$(fabrics "$kver")")"
		fabrics "$kver" >"$root/fabrics"
		cp "$here/fabric.sh" "$root/"
		if grep -qw rdma "$root/fabrics"; then
			cp "$(command -v rdma)" "$root/bin/"
			copy_libs "$root" "$root/bin/rdma"
		fi
	fi
	for m in $(for n in $want; do
		modprobe -d "$cache/$kver/root" -S "$kver" --show-depends "$n"
	done | awk '$1 == "insmod" {print $2}'); do
		f=$(basename "$m" | sed 's/\.\(xz\|zst\)$//')
		grep -qx "/lib/modules/$f" "$root/modules.list" && continue
		case "$m" in
		*.xz) xz -dc "$m" >"$root/lib/modules/$f" ;;
		*.zst) zstd -dcq "$m" >"$root/lib/modules/$f" ;;
		*) cp "$m" "$root/lib/modules/$f" ;;
		esac
		echo "/lib/modules/$f" >>"$root/modules.list"
	done
	cp "$work/../kmod/phxfs.ko" "$work/../nvstub/nvstub.ko" "$root/"
	[ ! -f "$work/../nvstub_prop/nvstub_prop.ko" ] || cp "$work/../nvstub_prop/nvstub_prop.ko" "$root/"
	cp "$build/tools/phxfs-check" "$root/bin/"
	copy_libs "$root" "$root/bin/phxfs-check"
	for f in "$guest_bin"/*; do
		cp "$f" "$root/tests/"
		copy_libs "$root" "$f"
	done
	if [ -e "$build/tests/vm/fakecuda/libcuda.so.1" ]; then
		mkdir -p "$root/fakecuda"
		cp -L "$build/tests/vm/fakecuda/libcuda.so.1" "$root/fakecuda/"
	fi
	if [ -n "$extra" ]; then
		cp -r "$extra"/. "$root/extra/"
		find "$root/extra" -type f | while read -r f; do copy_libs "$root" "$f"; done
	fi
	(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$work/initrd.gz"
}

# The kernel modules of the NVMe-oF transports $1 (target, host, and for
# RDMA soft-RoCE and the interface it runs on).
fabric_modules() {
	local t
	for t in $1; do
		case $t in
		tcp) echo configfs nvmet nvmet-tcp nvme-tcp ;;
		# rxe's ICRC takes the "crc32" hash from the crypto API, which
		# would load crc32_generic on demand (no modprobe in the guest).
		rdma) echo configfs nvmet nvmet-rdma nvme-rdma rdma_rxe dummy crc32_generic ;;
		esac
	done
}

# The transports kver has every module of (as modules or built in).
fabrics() {
	local kver=$1 t m ok out=""
	for t in tcp rdma; do
		ok=1
		for m in $(fabric_modules "$t"); do
			modprobe -d "$cache/$kver/root" -S "$kver" --show-depends "$m" >/dev/null 2>&1 ||
				ok=0
		done
		[ "$ok" = 1 ] && out="$out $t"
	done
	echo $out
}

# Where the guest's disks and BARs sit: on q35's root bus, or (the P2PDMA
# kernel) under one PCIe switch, where the kernel's distance check lets them
# reach each other, plus a small disk left on the root bus (far.img), which
# the check refuses as it refuses any peer across q35's host bridge.
devices() {
	local kver=$1 work=$2 bus=() i
	if [ "$kver" = "$("$here/kernel.sh" resolve p2pdma)" ]; then
		echo -device pcie-root-port,id=rp1,chassis=1,slot=1 -device x3130-upstream,id=up,bus=rp1
		for i in 1 2 3 4; do
			echo -device "xio3130-downstream,id=dn$i,bus=up,chassis=$((i + 1)),slot=0"
			bus[i]=",bus=dn$i"
		done
		echo -drive "file=$work/far.img,if=none,format=raw,id=d2" \
			-device "nvme,serial=phxfar,drive=d2"
	fi
	echo -drive "file=$work/disk.img,if=none,format=raw,id=d0" \
		-device "nvme,serial=phxdisk,drive=d0${bus[1]:-}" \
		-drive "file=$work/fs.img,if=none,format=raw,id=d1" \
		-device "nvme,serial=phxfs,drive=d1${bus[2]:-}" \
		-object "memory-backend-file,id=bar,size=512M,mem-path=$work/ivshmem.bin,share=on" \
		-device "ivshmem-plain,memdev=bar${bus[3]:-}" \
		-object "memory-backend-file,id=gpu,size=256M,mem-path=$work/gpu.bin,share=on" \
		-device "ivshmem-plain,memdev=gpu${bus[4]:-}"
}

# One boot of the guest in mode (tests, fuzz, demo), its files in work.
boot() {
	local kver=$1 work=$2 mode=$3 t0
	rm -rf "$work" && mkdir -p "$work"
	make_initramfs "$kver" "$work" "$mode"
	truncate -s 1G "$work/disk.img"
	truncate -s 512M "$work/ivshmem.bin"
	truncate -s 256M "$work/gpu.bin"
	truncate -s 256M "$work/fs.img"
	truncate -s 64M "$work/far.img"
	mkfs.ext4 -q -F "$work/fs.img"
	# Debian 6.1's nvmet-tcp BUGs in hardened usercopy when a received skb
	# fragment spans two transparent huge pages of the sender (host memory
	# written with O_DIRECT over nvme-tcp on loopback; a kernel bug, no
	# device memory involved): its fabric boot runs without THP.
	local cmdline="console=ttyS0 panic=-1 quiet"
	case "$mode:$kver" in fabric:6.1.*) cmdline="$cmdline transparent_hugepage=never" ;; esac
	t0=$(date +%s)
	timeout $((1200 + fuzz_seconds)) qemu-system-x86_64 -machine q35,accel=tcg -m 2G -smp 2 \
		-display none -monitor none -no-reboot -net none \
		-kernel "$cache/$kver/vmlinux" -initrd "$work/initrd.gz" \
		-append "$cmdline" \
		-serial "file:$work/console.log" -serial "file:$work/results.log" \
		$(devices "$kver" "$work") \
		-trace "enable=pci_nvme_map_addr,file=$work/dma.log" || echo "qemu exited with $?"
	echo "VM wall time ($mode): $(($(date +%s) - t0)) s"
	python3 "$here/check.py" --kernel "$kver" --work "$work" --mode "$mode" |
		tee "$work/check.log"
	[ "$keep" = 1 ] || rm -f "$work"/{disk.img,fs.img,far.img,ivshmem.bin,gpu.bin,initrd.gz}
}

run_kernel() {
	local line=$1 kver work m p f t pass=0 fail=0 boots=$mode hdr
	kver=$("$here/kernel.sh" resolve "$line")
	work=$build/vm/$kver
	echo "== VM suite on $kver"
	"$here/kernel.sh" fetch "$kver" "$cache/$kver"
	hdr=$("$here/kernel.sh" headers "$kver" "$cache/$kver")
	rm -rf "$work" && mkdir -p "$work/kmod" "$work/nvstub" "$work/nvstub_prop"
	cp "$repo"/kmod/{Kbuild,*.c,*.h} "$work/kmod/"
	cp "$here"/nvstub/{Kbuild,*.c} "$work/nvstub/"
	cp "$here"/nvstub_prop/{Kbuild,*.c} "$work/nvstub_prop/"
	# The stand-in first: phxfs.ko takes the CRCs of the nvidia_p2p symbols
	# from its Module.symvers, as it takes them from the NVIDIA driver's.
	make -s -C "$hdr" M="$work/nvstub" \
		PHXFS_KMOD="$repo/kmod" W=1 modules 2>&1 | grep -v 'Skipping BTF' || true
	# A module under a proprietary license cannot build against a lockdep
	# kernel (its locks call GPL-only symbols), nor can NVIDIA's.
	local mods="kmod/phxfs.ko nvstub/nvstub.ko"
	if ! grep -q '^CONFIG_DEBUG_LOCK_ALLOC=y' "$hdr/.config"; then
		mods="$mods nvstub_prop/nvstub_prop.ko"
		make -s -C "$hdr" M="$work/nvstub_prop" \
			PHXFS_KMOD="$repo/kmod" W=1 modules 2>&1 | grep -v 'Skipping BTF' || true
	fi
	make -s -C "$hdr" M="$work/kmod" \
		PHXFS_INCLUDE="$repo/include" KBUILD_EXTRA_SYMBOLS="$work/nvstub/Module.symvers" \
		W=1 modules 2>&1 | grep -v 'Skipping BTF' || true
	for m in $mods; do
		[ -f "$work/$m" ] || { echo "$m did not build for $kver"; return 1; }
	done
	# The fuzzer boots on its own: it scribbles over device memory and disk
	# that the tests' host checks read after the VM stops.
	[ "$mode" = tests ] && [ "${PHXFS_FUZZ_OPS:-10000}" != 0 ] && boots="tests fuzz"
	# NVMe over Fabrics in a boot of its own too: its QEMU trace must show
	# no NVMe DMA into the BAR (the fabric moves those bytes).
	if [ "$mode" = tests ]; then
		local have
		have=$(fabrics "$kver")
		for t in tcp rdma; do
			case " $have " in
			*" $t "*) ;;
			*) echo "SKIP fabric over $t: $kver lacks a module of it ($(fabric_modules "$t"))" ;;
			esac
		done
		[ -n "$have" ] && boots="$boots fabric"
		[ -z "$only" ] || boots=$only
	fi
	for m in $boots; do
		boot "$kver" "$work/$m" "$m"
		# A guest kernel that died before /init ran (its first line, BOOT,
		# never came), so before any module or program of ours: under TCG a
		# boot rarely oopses in the kernel's own start-up code (an int3 in
		# sched_clock_cpu from cpu_latency_qos_init, seen once on 6.12).
		# Booted once more; a second such death counts as the failure it is.
		if ! grep -q '^BOOT ' "$work/$m/results.log" 2>/dev/null; then
			echo "the $kver guest died before /init ran: booting it once more"
			boot "$kver" "$work/$m" "$m"
		fi
		p=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$work/$m/check.log")
		f=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$work/$m/check.log")
		pass=$((pass + ${p:-0})) fail=$((fail + ${f:-1}))
	done
	echo "$pass passed, $fail failed"
}

total_pass=0 total_fail=0 status=0
for k in $kernels; do
	# (Not tee /dev/stderr: where stderr is a file, that reopens and truncates it.)
	mkdir -p "$build/vm"
	run_kernel "$k" 2>&1 | tee "$build/vm/run-$k.log" || true
	out=$(tail -1 "$build/vm/run-$k.log")
	p=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
	f=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
	if [ -z "$p" ]; then p=0 f=$((f + 1)); fi
	total_pass=$((total_pass + p)) total_fail=$((total_fail + ${f:-1}))
done
echo "== all kernels ($kernels)"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
