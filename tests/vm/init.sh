#!/bin/sh
# /init of the VM suite's initramfs (busybox). Console: ttyS0 (kernel log);
# results: ttyS1, which the host reads. Every line the host acts on starts
# with a keyword: RESULT, HOSTCHECK, BAR, COUNTERS, DMESG, EXTRA.
export PATH=/bin:/sbin GTEST_COLOR=no
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
exec >/dev/ttyS1 2>&1
echo "BOOT $(uname -r)"

result() { echo "RESULT $1 $2"; }

for m in $(cat /modules.list); do
	insmod "$m" 2>/dev/null # some are built in, crc32c-intel needs SSE4.2
done

# Two ivshmem BARs: 512 MiB of pcibar device memory, 256 MiB of "GPU memory"
# for the NVIDIA stand-in.
bdf= gpubdf=
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ] || continue
	set -- $(sed -n 3p "$d/resource")
	if [ $(($2 - $1 + 1)) = $((512 << 20)) ]; then
		bdf=${d##*/} barstart=$1
		echo "BAR $bdf $1 $2"
	else
		gpubdf=${d##*/}
		echo "GPUBAR $gpubdf $1 $2"
	fi
done

# Loads that fail (fault injection at each step of adding a device, a BAR
# that is not prefetchable) must give back everything: no BAR region left in
# /proc/iomem (whose name would point into the unloaded module).
loads_fail_clean=pass
for step in 1 2 3 4 5; do
	if insmod /phxfs.ko "pcibar=$bdf@2" fail_add=$step 2>/dev/null; then
		echo "fail_add=$step: the load succeeded"; loads_fail_clean=fail; rmmod phxfs
	fi
	if grep -q phxfs /proc/iomem; then
		echo "fail_add=$step: $(grep phxfs /proc/iomem)"; loads_fail_clean=fail
	fi
done
result failed_loads_leave_nothing $loads_fail_clean
if ! insmod /phxfs.ko "pcibar=$bdf@0" 2>/dev/null && dmesg | grep -q "BAR0 is not prefetchable" &&
	! grep -q phxfs /proc/iomem; then
	result non_prefetchable_bar_refused pass
else
	result non_prefetchable_bar_refused fail
	rmmod phxfs 2>/dev/null
fi

# Without the stand-in, phxfs.ko serves pcibar alone and says why not GPUs.
# The BAR is mapped write-combining (GENERIC pages) or, on the P2PDMA kernel,
# uncached as the kernel's P2PDMA code maps it (where PAT shows it).
case "$(uname -r)" in
*p2pdma*) memtype=uncached-minus ;;
*) memtype=write-combining ;;
esac
pat=/sys/kernel/debug/x86/pat_memtype_list
if insmod /phxfs.ko "pcibar=$bdf@2" && [ -c /dev/phxfs0 ] && [ ! -e /dev/phxfs1 ] &&
	dmesg | grep -q "nvidia provider unavailable" &&
	grep -q "^unavailable: no NVIDIA driver" /sys/module/phxfs/parameters/nvidia_status &&
	{ [ ! -e $pat ] || grep -q "mem $barstart-.*$memtype" $pat; } &&
	rmmod phxfs; then
	result pcibar_alone_without_nvidia_driver pass
else
	result pcibar_alone_without_nvidia_driver fail
	rmmod phxfs 2>/dev/null
fi

# NVIDIA's proprietary module exports its p2p symbols to modules that use no
# GPL-only kernel symbols, which phxfs does: phxfs loads anyway and says why
# it cannot serve the GPU (a stand-in under the NVIDIA license shows it).
if [ ! -f /nvstub_prop.ko ]; then
	echo "SKIP proprietary_nvidia_driver_explained: no proprietary stand-in on a lockdep kernel"
elif insmod /nvstub_prop.ko "bdf=$gpubdf"; then
	if insmod /phxfs.ko "pcibar=$bdf@2" && [ -c /dev/phxfs0 ] && [ ! -e /dev/phxfs1 ] &&
		grep -q "could not be linked.*nvidia-open" /sys/module/phxfs/parameters/nvidia_status
	then
		result proprietary_nvidia_driver_explained pass
	else
		result proprietary_nvidia_driver_explained fail
	fi
	rmmod phxfs 2>/dev/null
	rmmod nvstub_prop
else
	result proprietary_nvidia_driver_explained fail
fi

insmod /nvstub.ko "bdf=$gpubdf" || echo "nvstub did not load"
# The stand-in binds its device as the real driver does; phxfs serves only
# devices bound to "nvidia".
if [ "$(basename "$(readlink /sys/bus/pci/devices/$gpubdf/driver)")" = nvidia ]; then
	result nvstub_bound_as_nvidia pass
else
	result nvstub_bound_as_nvidia fail
fi
# The host compares BAR bytes after the VM stops: tests keep what they leave
# (pcibar_scrub=0; the isolation test turns it on); the fuzzer clears.
mode=$(cat /mode)
scrub=0
[ "$mode" = fuzz ] && scrub=1
if insmod /phxfs.ko "pcibar=$bdf@2" "nvidia_extra=$gpubdf@2" debug=0 pcibar_scrub=$scrub; then
	result kmod_load pass
else
	result kmod_load fail
fi
# The raw test disk is 1 GiB, the ext4 disk 256 MiB, the far disk 64 MiB
# (names may swap).
for i in 1 2 3 4 5 6 7 8 9 10; do
	[ "$(ls -d /sys/block/nvme* 2>/dev/null | wc -l)" = "$(ls /sys/class/nvme 2>/dev/null | wc -l)" ] &&
		[ -c /dev/phxfs0 ] && break
	sleep 0.5
done
for b in /sys/block/nvme*; do
	case $(cat "$b/size") in
	2097152) export PHXFS_GUEST_DISK=/dev/${b##*/} ;;
	524288) fsdisk=/dev/${b##*/} ;;
	131072) export PHXFS_GUEST_FAR_DISK=/dev/${b##*/} ;; # P2PDMA kernel: across the root
	esac
done
echo "DISKS raw $PHXFS_GUEST_DISK ext4 $fsdisk far ${PHXFS_GUEST_FAR_DISK:-none}"
# The fabric boot exports the disks instead (fabric.sh): never mounted here.
mkdir -p /mnt/fs
[ "$mode" = fabric ] || { mount -t ext4 "$fsdisk" /mnt/fs && export PHXFS_GUEST_FS=/mnt/fs; }
for t in /tests/*; do
	[ -x "$t" ] || continue
	case "$mode:${t##*/}" in demo:phxfs_guest_demo | tests:*_tests) ;; *) continue ;; esac
	echo "RUN ${t##*/}"
	if [ "${t##*/}" = phxfs_cuda_tests ] && [ -e /fakecuda/libcuda.so.1 ]; then
		# The GPU that cannot exist in a VM: a CUDA driver over the stand-in.
		LD_LIBRARY_PATH=/fakecuda PHXFS_FAKE_CUDA_BDF=$gpubdf "$t" </dev/null
	else
		"$t" </dev/null
	fi
	echo "EXIT ${t##*/} $?"
done
# NVMe over Fabrics on the guest's loopback (a boot of its own, see run.sh).
[ "$mode" = fabric ] && sh /fabric.sh "$PHXFS_GUEST_DISK" "$fsdisk"
# The seeded fuzzer of the module's user ABI (a boot of its own, see run.sh).
if [ "$mode" = fuzz ]; then
	set -- $(cat /fuzz)
	echo "RUN phxfs_kmod_fuzz"
	/tests/phxfs_kmod_fuzz --seed "$1" --ops "$2" --seconds "$3" </dev/null
	echo "EXIT phxfs_kmod_fuzz $?"
fi
for t in /extra/*; do
	[ -f "$t" ] && [ -x "$t" ] || continue
	echo "EXTRA ${t##*/}"
	"$t" </dev/null
	echo "EXIT extra/${t##*/} $?"
done

umount /mnt/fs 2>/dev/null
for c in /sys/class/phxfs/phxfs*; do
	for i in $(seq 50); do # pins drain in the background
		[ "$(cat $c/draining)" = 0 ] && [ "$(cat $c/pinned_bytes)" = 0 ] && break
		sleep 0.2
	done
	echo "COUNTERS ${c##*/} maps $(cat $c/maps) unmaps $(cat $c/unmaps)" \
		"errors $(cat $c/errors) draining $(cat $c/draining)" \
		"pinned_bytes $(cat $c/pinned_bytes)" \
		"mapped_bytes $(cat $c/mapped_bytes) mapped_total $(cat $c/mapped_total)" \
		"pages_busy $(cat $c/pages_busy)"
	if [ "$(cat $c/mapped_bytes)" = 0 ] && [ "$(cat $c/pages_busy)" = 0 ] &&
		[ "$(cat $c/draining)" = 0 ] && [ "$(cat $c/pinned_bytes)" = 0 ]; then
		result "counters_back_to_zero_${c##*/}" pass
	else
		result "counters_back_to_zero_${c##*/}" fail
	fi
done
if rmmod phxfs && rmmod nvstub; then result kmod_unload pass; else result kmod_unload fail; fi
# Every reference phxfs took on the pcibar device (failed loads included)
# was dropped: removing the device frees its kobject (seen through dynamic
# debug, which the P2PDMA kernel's small config lacks).
if [ -e /sys/kernel/debug/dynamic_debug/control ]; then
	echo "file lib/kobject.c +p" >/sys/kernel/debug/dynamic_debug/control
	echo 1 >"/sys/bus/pci/devices/$bdf/remove"
	sleep 1
	if dmesg | grep -q "'$bdf' (.*): kobject_cleanup"; then
		result pci_device_references_dropped pass
	else
		result pci_device_references_dropped fail
	fi
else
	echo "SKIP pci_device_references_dropped: no dynamic debug in this kernel"
fi
echo "file lib/kobject.c -p" >/sys/kernel/debug/dynamic_debug/control 2>/dev/null
# A kernel with kmemleak (the P2PDMA one): scan now, report into the log.
if [ -e /sys/kernel/debug/kmemleak ]; then
	echo scan >/sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak >/dev/kmsg
fi
echo "DMESG-BEGIN"
dmesg
echo "DMESG-END"
sync
poweroff -f
